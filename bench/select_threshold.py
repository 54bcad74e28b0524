"""Choose the decision threshold and the slice-call area on selection data only.

Runs a checkpoint once over ``ich-boxes/valid`` (real slices) and over development phantoms of
both generators (their own seeds, never the held-out ones), then scores every combination of
``bleed_threshold`` (P(SDH) + P(EDH), ``None`` = argmax) and, for the 2-D real slices, the
slice-call area.  Prints one table and writes the JSON next to it; the chosen values go into
the weights' manifest and ``segmenter.realeval``.

    python bench/select_threshold.py --weights runs/x/best.pt --real-root ../shared/realdata \
        --json bench/results/select_threshold.json
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from segmenter.evaluate import dice
from segmenter.findings import EDH, SDH
from segmenter.inference import Segmenter
from segmenter.postprocess import findings_from_probabilities
from segmenter.preprocess import to_original_grid
from segmenter.realeval import estimated_spacing_mm
from segmenter.pseudomask import BOX_MARGIN_PX
from segmenter.realslices import load_ich_boxes

THRESHOLDS = (None, 0.6, 0.7, 0.8)
AREAS_MM2 = (10.0, 25.0, 50.0)
_NAMES = {SDH: "SDH", EDH: "EDH"}


def _probs(seg: Segmenter, hu: np.ndarray) -> tuple[np.ndarray, float]:
    logits, crop = seg.scores(hu)
    return to_original_grid(logits, crop).numpy(), crop.left + crop.side / 2.0


def real_scores(seg: Segmenter, root: str) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {str(t): [] for t in THRESHOLDS}
    for item in load_ich_boxes(f"{root}/ich-boxes", "valid"):
        hu = item.hu()[None]
        px = estimated_spacing_mm(hu[0])
        probs, mid = _probs(seg, hu)
        for t in THRESHOLDS:
            labels = findings_from_probabilities(probs, (5.0, px, px), mid, volume_hu=hu, bleed_threshold=t)[0][0]
            rec = {"kinds": item.kinds}
            for c, name in _NAMES.items():
                hit = any((labels[max(0, b.y0 - BOX_MARGIN_PX):b.y1 + BOX_MARGIN_PX,
                                  max(0, b.x0 - BOX_MARGIN_PX):b.x1 + BOX_MARGIN_PX] == c).any()
                          for b in item.boxes if b.kind == name)
                rec[name] = (float((labels == c).sum()) * px * px, hit)
            rows[str(t)].append(rec)
    out = {}
    for t, recs in rows.items():
        for area in AREAS_MM2:
            called = lambda r, n: r[n][0] >= area  # noqa: E731
            found = {n: [called(r, n) and r[n][1] for r in recs if n in r["kinds"]] for n in ("SDH", "EDH")}
            neg = [called(r, "SDH") or called(r, "EDH") for r in recs if not {"SDH", "EDH"} & r["kinds"]]
            out[f"{t}|{area:g}"] = {"edh_found": float(np.mean(found["EDH"])), "sdh_found": float(np.mean(found["SDH"])),
                                    "false_call": float(np.mean(neg))}
    return out


def phantom_scores(seg: Segmenter, count: int) -> dict[str, Any]:
    from segmenter.phantom_ct import CtPhantomRanges, iter_ct_phantoms
    from segmenter.synthetic import KINDS, PhantomRanges, iter_phantoms

    sets = [("v3", iter_phantoms(range(count), 2000, PhantomRanges.evaluation(3), kinds=list(KINDS))),
            ("ct", iter_ct_phantoms(range(count), 9100, CtPhantomRanges.evaluation(), kinds=list(KINDS)))]
    acc: dict[str, dict[str, list[float]]] = {str(t): {"dice": [], "correct": []} for t in THRESHOLDS}
    for _, cases in sets:
        for case in cases:
            probs, mid = _probs(seg, case.hu)
            for t in THRESHOLDS:
                labels, findings, _ = findings_from_probabilities(probs, case.spacing_mm, mid, volume_hu=case.hu,
                                                                  bleed_threshold=t)
                for c, name in _NAMES.items():
                    truth = case.labels == c
                    acc[str(t)]["correct"].append(float(findings[name].present == bool(truth.sum() > 0)))
                    if truth.any():
                        acc[str(t)]["dice"].append(dice(truth, labels == c))
    return {t: {"dice_mean": float(np.mean(v["dice"])), "case_accuracy": float(np.mean(v["correct"]))}
            for t, v in acc.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--real-root", required=True)
    p.add_argument("--phantoms", type=int, default=10, help="development phantoms per generator")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    seg = Segmenter.load(a.weights, threads=a.threads, bleed_threshold=None)
    real = real_scores(seg, a.real_root)
    phantoms = phantom_scores(seg, a.phantoms) if a.phantoms else {}
    print("| bleed_threshold | area mm2 | EDH found | SDH found | false calls | phantom Dice | phantom case acc |")
    print("|---|---|---|---|---|---|---|")
    for key, r in real.items():
        t, area = key.split("|")
        ph = phantoms.get(t, {})
        print(f"| {t} | {area} | {r['edh_found']:.3f} | {r['sdh_found']:.3f} | {r['false_call']:.3f} | "
              f"{ph.get('dice_mean', float('nan')):.3f} | {ph.get('case_accuracy', float('nan')):.3f} |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"weights": a.weights, "real_valid": real, "development_phantoms": phantoms}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
