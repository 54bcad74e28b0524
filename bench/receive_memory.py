"""Receive memory: the node's processes' resident memory over many bursts of concurrent associations.

Starts ``dicom-node serve`` as ``bench/receive.py`` does (``node.receive_processes`` from
``--receive-processes``, default 2 as in the shipped ``config.yaml``; Redis broker, no worker),
then sends ``--rounds`` times the 8-association case of that benchmark (8 dcmtk ``storescu``
senders x 25 slices of 512 x 512 CT) and records the VmRSS of the node's process and of each
helper receive process after every round (``MALLOC_ARENA_MAX`` from the environment is recorded).

    .venv/bin/python bench/receive_memory.py [--rounds 36] [--json bench/results/receive-memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import receive  # noqa: E402
from tests.loadrun import helper_pids  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS for {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=36)
    parser.add_argument("--receive-processes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dural-bench-receive")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "receive-memory.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    folders = sorted(receive.make_series(args.work)["split8"].iterdir())
    kind = "node-processes" if args.receive_processes > 1 else "node"
    node = receive.Receiver(kind, args.work, processes=args.receive_processes)
    rounds = []
    try:
        pids = helper_pids(node.proc.pid)
        start = {"node_mib": rss_mib(node.proc.pid), "helpers_mib": [rss_mib(p) for p in pids]}
        print(f"start: node {start['node_mib']} MiB, helpers {start['helpers_mib']} MiB", file=sys.stderr)
        for k in range(args.rounds):
            seconds = receive.run_case(node, folders, 200)
            time.sleep(0.5)
            rounds.append({"round": k + 1, "images_per_s": round(200 / seconds, 1), "node_mib": rss_mib(node.proc.pid),
                           "helpers_mib": [rss_mib(p) for p in pids]})
            print(f"round {k + 1}: node {rounds[-1]['node_mib']} MiB, helpers {rounds[-1]['helpers_mib']} MiB",
                  file=sys.stderr)
    finally:
        node.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "receive_memory", "receive_processes": args.receive_processes,
        "round": "8 concurrent dcmtk storescu associations x 25 slices of 512x512 (the same 200 instances each round)",
        "machine": platform.node(), "processor": receive._cpu_model(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"), "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
        "start": start, "rounds": rounds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
