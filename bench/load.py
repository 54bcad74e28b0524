"""Load: 20 concurrent associations of 40-slice series while a worker analyses (twice, to see
whether the node's memory stays flat), then thin-slice series of growing length analysed by a
fresh worker each (time per slice, worker peak memory).

Real parts on 127.0.0.1 (``tests/loadrun.py``): redis-server, ``dicom-node serve`` with a Redis
broker and ``node.receive_processes: 2`` as in the shipped ``config.yaml``, and one
``dicom-node worker --pool solo``; the shipped model on the CPU. Node memory is the VmRSS of its
process and its helper receive process together, sampled every 0.1 s; worker memory its VmHWM
(peak) after the job.

Usage: ``python bench/load.py [--associations 20] [--slices 40] [--size 512] [--rounds 2]
[--thin 150,300,600] [--thin-size 512] [--json bench/results/load.json]``; ``--rounds 0`` or
``--thin ""`` leaves a part out. Logs stay in the folder printed at the start.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.loadrun import LoadStack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--associations", type=int, default=20)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512, help="rows and columns of the concurrent series")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--thin", default="150,300,600", help="slice counts of the thin-slice series")
    p.add_argument("--thin-size", type=int, default=512)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"working folder (logs, ledger): {root}", flush=True)
    stack = LoadStack(root / "stack")
    rounds, longs = [], []
    try:
        for k in range(args.rounds):
            rounds.append(stack.concurrent_round(root / f"round{k}", args.associations, args.slices, args.size,
                                                 timeout=3600))
            print(rounds[-1], flush=True)
        for n in (int(v) for v in args.thin.split(",") if v):
            longs.append(stack.long_series(root / f"thin{n}", n, args.thin_size, 0.625, timeout=3600))
            print(longs[-1], flush=True)
            shutil.rmtree(root / f"thin{n}")
    finally:
        stack.close()
    print(f"concurrent: {args.associations} associations x {args.slices} slices of {args.size}x{args.size}")
    print("round  failed  receive_s  analysed_s  node_rss_before_MiB  after_MiB  peak_MiB")
    for k, r in enumerate(rounds):
        print(f"{k + 1:5d}  {r.failed_stores:6d}  {r.receive_s:9.1f}  {r.analysed_s:10.1f}  "
              f"{r.node_rss_before_kib / 1024:19.0f}  {r.node_rss_after_kib / 1024:9.0f}  {r.node_peak_kib / 1024:8.0f}")
    print(f"thin-slice series (0.625 mm, {args.thin_size}x{args.thin_size}), one fresh worker each")
    print("slices  analysis_s  s_per_slice  worker_peak_MiB")
    for r in longs:
        print(f"{r.slices:6d}  {r.analysis_s:10.1f}  {r.analysis_s / r.slices:11.3f}  {r.worker_peak_kib / 1024:15.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "load_average": os.getloadavg(),
                                         "rounds": [asdict(r) for r in rounds],
                                         "thin": [asdict(r) for r in longs]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
