"""Held-out evaluation: Dice/IoU, case-level sensitivity/specificity, volumes, confounders.

Every number is computed from the same post-processed label volume that ``Segmenter.predict``
returns (the shipped decision rule), on the source grid:

* ``dice_3d``/``iou_3d``: per case, over the whole volume, averaged over cases that contain
  the class in the truth (positive cases).
* ``dice_slice``/``iou_slice``: per slice, averaged over the slices whose truth contains the
  class (the paper-style number; it ignores false positives on other slices).
* ``sensitivity``/``specificity``: case level, truth positive = any truth voxel of the class,
  prediction positive = ``Finding.present``.
* ``confusion_ml``: truth class (rows) x predicted class (columns) in mL, over all cases.
* Negative and IPH-confounder cases are reported separately (false-positive volume, calls,
  and how many had a component removed by the EDH-against-the-skull rule).
* ``excluded_ml``: per case, the volume that rule removed (``Prediction.excluded``).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .findings import CLASS_NAMES

logger = logging.getLogger(__name__)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """2|T∩P| / (|T|+|P|); NaN when both masks are empty."""
    t, p = truth.astype(bool), pred.astype(bool)
    denom = int(t.sum()) + int(p.sum())
    return float("nan") if denom == 0 else 2.0 * int((t & p).sum()) / denom


def iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """|T∩P| / |T∪P|; NaN when both masks are empty."""
    t, p = truth.astype(bool), pred.astype(bool)
    union = int((t | p).sum())
    return float("nan") if union == 0 else int((t & p).sum()) / union


def case_record(case_id: str, kind: str, truth: np.ndarray, pred: np.ndarray, present: dict[str, bool],
                spacing_mm: Sequence[float]) -> dict[str, Any]:
    """Per-case metrics from truth and predicted label volumes (same grid)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    rec: dict[str, Any] = {"case_id": case_id, "kind": kind}
    conf = np.zeros((3, 3))
    np.add.at(conf, (truth.ravel(), pred.ravel()), 1)
    rec["confusion_ml"] = (conf * voxel_ml).tolist()
    for c, name in CLASS_NAMES.items():
        t, p = truth == c, pred == c
        slices = np.flatnonzero(t.any(axis=(1, 2)))
        rec[name] = {
            "truth_ml": float(t.sum()) * voxel_ml, "pred_ml": float(p.sum()) * voxel_ml,
            "truth_present": bool(t.any()), "pred_present": bool(present[name]),
            "dice_3d": dice(t, p), "iou_3d": iou(t, p),
            "dice_slices": [dice(t[z], p[z]) for z in slices],
            "iou_slices": [iou(t[z], p[z]) for z in slices],
        }
    return rec


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if not np.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate ``case_record`` outputs into the report (see module docstring)."""
    out: dict[str, Any] = {"cases": len(records), "kinds": {}}
    for r in records:
        out["kinds"][r["kind"]] = out["kinds"].get(r["kind"], 0) + 1
    for name in CLASS_NAMES.values():
        pos = [r[name] for r in records if r[name]["truth_present"]]
        neg = [r[name] for r in records if not r[name]["truth_present"]]
        tp = sum(x["pred_present"] for x in pos)
        tn = sum(not x["pred_present"] for x in neg)
        vol_err = [x["pred_ml"] - x["truth_ml"] for x in pos]
        out[name] = {
            "positive_cases": len(pos), "negative_cases": len(neg),
            "dice_3d": _mean(x["dice_3d"] for x in pos), "iou_3d": _mean(x["iou_3d"] for x in pos),
            "dice_3d_min": min((x["dice_3d"] for x in pos), default=float("nan")),
            "dice_slice": _mean(d for x in pos for d in x["dice_slices"]),
            "iou_slice": _mean(d for x in pos for d in x["iou_slices"]),
            "slices": sum(len(x["dice_slices"]) for x in pos),
            "sensitivity": tp / len(pos) if pos else float("nan"),
            "specificity": tn / len(neg) if neg else float("nan"),
            "volume_error_ml_mean": _mean(vol_err),
            "volume_abs_error_ml_mean": _mean(abs(v) for v in vol_err),
        }
    out["confusion_ml"] = np.sum([r["confusion_ml"] for r in records], axis=0).tolist() if records else []
    out["confusion_labels"] = ["background", "SDH", "EDH"]
    for kind in ("negative", "iph"):
        rs = [r for r in records if r["kind"] == kind]
        fp = [sum(r[n]["pred_ml"] for n in CLASS_NAMES.values()) for r in rs]
        out[f"{kind}_cases"] = {
            "count": len(rs),
            "called_sdh": sum(r["SDH"]["pred_present"] for r in rs),
            "called_edh": sum(r["EDH"]["pred_present"] for r in rs),
            "fp_volume_ml_mean": _mean(fp), "fp_volume_ml_max": max(fp, default=float("nan")),
            "excluded_by_rule": sum(r.get("excluded_ml", 0.0) > 0 for r in rs),
        }
    out["cases_with_excluded_components"] = sum(r.get("excluded_ml", 0.0) > 0 for r in records)
    out["definitions"] = {
        "dice_3d": "per case over the whole volume, mean over cases containing the class",
        "dice_slice": "per slice over slices whose truth contains the class, mean over those slices",
        "case_level": "truth positive = any truth voxel; predicted positive = Finding.present",
    }
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table of the headline numbers."""
    rows = ["class  pos/neg  dice3d  iou3d  dice_sl  iou_sl  sens   spec   vol_err_mL",
            "-----  -------  ------  -----  -------  ------  -----  -----  ----------"]
    for name in CLASS_NAMES.values():
        s = summary[name]
        rows.append(f"{name:5s}  {s['positive_cases']:3d}/{s['negative_cases']:<3d}  {s['dice_3d']:.3f}   "
                    f"{s['iou_3d']:.3f}  {s['dice_slice']:.3f}    {s['iou_slice']:.3f}   {s['sensitivity']:.3f}  "
                    f"{s['specificity']:.3f}  {s['volume_error_ml_mean']:+.2f}")
    for kind in ("negative", "iph"):
        k = summary[f"{kind}_cases"]
        rows.append(f"{kind} cases: {k['count']}, called SDH {k['called_sdh']}, called EDH {k['called_edh']}, "
                    f"FP volume mean {k['fp_volume_ml_mean']:.3f} mL, max {k['fp_volume_ml_max']:.3f} mL, "
                    f"{k['excluded_by_rule']} with a component excluded by the EDH rule")
    rows.append("confusion (mL, rows truth bg/SDH/EDH, cols predicted): "
                + json.dumps([[round(v, 2) for v in row] for row in summary["confusion_ml"]]))
    return "\n".join(rows)


def evaluate(segmenter: Any, cases: Iterable[Any]) -> dict[str, Any]:
    """Run ``segmenter.predict`` on each case (``hu``, ``labels``, ``spacing_mm``, ``kind``)."""
    records = []
    for case in cases:
        pred = segmenter.predict(case.hu, case.spacing_mm)
        kind = getattr(case, "kind", None) or ("positive" if case.labels.any() else "negative")
        rec = case_record(case.case_id, kind, case.labels, pred.labels,
                          {k: f.present for k, f in pred.findings.items()}, case.spacing_mm)
        rec["timing_s"] = pred.timings_s.get("total_s")
        rec["excluded_ml"] = sum(e["volume_ml"] for e in pred.excluded)
        records.append(rec)
        logger.info("%s %s SDH dice %.3f EDH dice %.3f", case.case_id, kind, rec["SDH"]["dice_3d"],
                    rec["EDH"]["dice_3d"])
    return {"summary": summarize(records), "records": records}


def held_out_phantoms(count: int, seed: int, workers: int = 1, version: int | None = None,
                      kinds: Sequence[str] | None = None) -> Iterator[Any]:
    """Held-out synthetic set: its own seed, ``PhantomRanges.evaluation()`` (wider), ``kinds``
    cycled (default every kind); ``version`` of the generator (default the current one)."""
    from .synthetic import KINDS, PHANTOM_VERSION, PhantomRanges, iter_phantoms

    ranges = PhantomRanges.evaluation(PHANTOM_VERSION if version is None else version)
    return iter_phantoms(range(count), seed, ranges, kinds=list(kinds or KINDS), workers=workers)


def _volumes(a: Any, kinds: Sequence[str] | None) -> Iterable[Any]:
    if a.dataset == "synthetic":
        return held_out_phantoms(a.count, a.seed, a.workers, a.phantoms, kinds)
    if a.dataset == "ct-phantoms":
        from .phantom_ct import CtPhantomRanges, iter_ct_phantoms
        from .synthetic import KINDS

        return iter_ct_phantoms(range(a.count), a.seed, CtPhantomRanges.evaluation(), kinds=list(kinds or KINDS),
                                workers=a.workers)
    from . import realdata

    return realdata.load_ctich(a.data_root)[0] if a.dataset == "ctich" else realdata.load_dicom_nifti(a.data_root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segmenter evaluate --weights W --seed S --count N [--out report.json]``."""
    import argparse

    from .inference import Segmenter
    from .synthetic import KINDS, PHANTOM_VERSION, PHANTOM_VERSIONS

    p = argparse.ArgumentParser(prog="python -m segmenter evaluate")
    p.add_argument("--weights", help="checkpoint (default: shipped weights)")
    p.add_argument("--dataset", choices=["synthetic", "ct-phantoms", "ctich", "dicom-nifti", "none"],
                   default="synthetic", help="volumes with voxel truth (none: only --real-root)")
    p.add_argument("--data-root")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--phantoms", type=int, choices=PHANTOM_VERSIONS, default=PHANTOM_VERSION,
                   help="synthetic generator version")
    p.add_argument("--kinds", help="synthetic kinds to cycle through, e.g. iph (default: all)")
    p.add_argument("--real-root", help="folder holding ich-boxes/, sich-negatives/, ge-head-tilt/ (real CT)")
    p.add_argument("--real-split", default="test", help="ich-boxes split to report (valid for selection)")
    p.add_argument("--out", help="report JSON path")
    a = p.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",")] if a.kinds else None
    if kinds and not set(kinds) <= set(KINDS):
        p.error(f"--kinds must be among {sorted(KINDS)}; got {a.kinds!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seg = Segmenter.load(a.weights, threads=a.threads, bf16={"auto": None, "on": True, "off": False}[a.bf16])
    report: dict[str, Any] = {}
    if a.dataset != "none":
        report = evaluate(seg, _volumes(a, kinds))
        ranges = {"synthetic": f"PhantomRanges.evaluation({a.phantoms})",
                  "ct-phantoms": "CtPhantomRanges.evaluation()"}.get(a.dataset, a.data_root)
        report["setup"] = {"dataset": a.dataset, "seed": a.seed, "count": report["summary"]["cases"],
                           "weights": a.weights or "shipped", "bf16": seg.bf16, "model": seg.info.to_dict(),
                           "ranges": ranges}
        print(format_table(report["summary"]))
    if a.real_root:
        from .realeval import evaluate_real, format_real_table

        report["real"] = evaluate_real(seg, a.real_root, a.real_split)
        report["real"]["model"] = seg.info.to_dict()
        print(format_real_table(report["real"]))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=float)
    return 0
