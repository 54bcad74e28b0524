"""Inference benchmark: 40-slice 512x512 series, fp32 vs bf16, and bf16/fp32 agreement.

Usage::

    .venv/bin/python bench/inference.py [--weights W] [--threads 2] [--repeats 3]
                                        [--agreement-count 20] [--seed 4242] [--kind sdh|both|...]
                                        [--json out.json]

Timing is the median of ``--repeats`` calls of ``Segmenter.predict`` (network plus
post-processing, after one warm-up call). Agreement is the Dice between the bf16 and the fp32
label maps per class on a held-out synthetic set (wider ranges, its own seed), over the cases
where either map has that class; identical empty maps count as agreement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmenter.evaluate import dice  # noqa: E402
from segmenter.findings import CLASS_NAMES  # noqa: E402
from segmenter.inference import Segmenter  # noqa: E402
from segmenter.synthetic import KINDS, PhantomRanges, iter_phantoms, make_phantom  # noqa: E402


def time_predict(seg: Segmenter, hu: np.ndarray, spacing: tuple[float, float, float], repeats: int) -> dict:
    seg.predict(hu, spacing)  # warm-up: oneDNN primitive caches
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = seg.predict(hu, spacing)
        runs.append((time.perf_counter() - t0, pred.timings_s["network_s"]))
    return {"median_s": statistics.median(r[0] for r in runs),
            "network_median_s": statistics.median(r[1] for r in runs), "runs_s": [round(r[0], 3) for r in runs]}


def agreement(fp32: Segmenter, bf16: Segmenter, count: int, seed: int) -> dict:
    per_class: dict[str, list[float]] = {n: [] for n in CLASS_NAMES.values()}
    decisions_equal = 0
    for ph in iter_phantoms(range(count), seed, PhantomRanges.evaluation(), kinds=list(KINDS)):
        a, b = fp32.predict(ph.hu, ph.spacing_mm), bf16.predict(ph.hu, ph.spacing_mm)
        decisions_equal += all(a.findings[n].present == b.findings[n].present for n in per_class)
        for c, n in CLASS_NAMES.items():
            d = dice(a.labels == c, b.labels == c)
            if not np.isnan(d):
                per_class[n].append(d)
    return {"cases": count, "seed": seed, "decisions_identical": decisions_equal,
            **{f"dice_{n}_mean": float(np.mean(v)) if v else float("nan") for n, v in per_class.items()},
            **{f"dice_{n}_min": float(np.min(v)) if v else float("nan") for n, v in per_class.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--agreement-count", type=int, default=20)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--kind", default="sdh", choices=sorted(KINDS),
                   help="phantom to time (both: SDH and EDH, which exercises every post-processing rule)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ranges = replace(PhantomRanges.training(), n_slices=(40, 40), pixel_spacing_mm=(0.45, 0.45))
    ph = make_phantom(a.seed, a.kind, ranges)
    rows = []
    for bs in (int(b) for b in a.batch_sizes.split(",")):
        for use_bf16 in (False, True):
            seg = Segmenter.load(a.weights, device="cpu", threads=a.threads, bf16=use_bf16, batch_size=bs)
            rows.append({"precision": "bf16" if use_bf16 else "fp32", "batch": bs,
                         **time_predict(seg, ph.hu, ph.spacing_mm, a.repeats)})
    print(f"CSR-UNet inference, 40 x 512 x 512 {a.kind} phantom, {a.threads} threads, median of {a.repeats}")
    print("precision  batch  total_s  network_s  runs")
    for r in rows:
        print(f"{r['precision']:9s}  {r['batch']:5d}  {r['median_s']:7.2f}  {r['network_median_s']:9.2f}  {r['runs_s']}")
    result: dict = {"timing": rows, "kind": a.kind, "threads": a.threads, "torch": torch.__version__}
    if a.agreement_count:
        best_bs = min(rows, key=lambda r: r["median_s"])["batch"]
        agree = agreement(Segmenter.load(a.weights, device="cpu", bf16=False, batch_size=best_bs),
                          Segmenter.load(a.weights, device="cpu", bf16=True, batch_size=best_bs),
                          a.agreement_count, a.seed)
        result["bf16_agreement"] = agree
        print("bf16 vs fp32 label agreement (Dice per class over cases where either has the class):")
        print(json.dumps(agree, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
