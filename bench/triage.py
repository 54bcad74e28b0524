"""Worklist triage latency: a stat SDH study arriving behind a flood of batch series.

Real parts on 127.0.0.1: ``dicom-node serve`` with Redis (our own, on a free port) and
``--workers`` ``dicom-node worker`` processes (one slot each), Orthanc as the PACS, and an MLLP
listener (``tests/notify_peers.py``: parses and validates each ORU^R01 with hl7apy, answers AA).
Lane rules: calling AE ``ED_CT`` -> stat, ``ARCHIVE`` -> batch.

Two scenarios, each with a fresh node: ``--batch`` series (30) are sent as ``ARCHIVE`` and, once
the workers are busy with them, one SDH series as ``ED_CT``; then the same SDH series into an
empty queue. Measured per scenario, all on this machine's clock:

- last image acknowledged (the SCU's last C-STORE response) -> ORU received by the listener
- stat job queued -> its worker started it (the wait behind running jobs), against the longest
  batch job that was running when it arrived
- SR stored at the PACS (the node's delivery to Orthanc acknowledged) -> ORU received

Usage: ``python bench/triage.py [--batch 30] [--workers 2] [--slices 40] [--size 512] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from e2e import BIN, default_weights, free_port, start, stop, wait  # noqa: E402


def scenario(args: argparse.Namespace, tmp: Path, weights: Path, flood: int) -> dict[str, float]:
    from dicom_node.config import Destination
    from dicom_node.ledger import Ledger
    from dicom_node.scu import send_files
    from segmenter.synthetic import PhantomRanges, make_phantom, write_phantom_series
    from tests.notify_peers import MllpListener

    procs: list[subprocess.Popen] = []
    node_port, redis_port, o_dicom, o_http = free_port(), free_port(), free_port(), free_port()
    ranges = replace(PhantomRanges.training(), n_slices=(args.slices, args.slices), size=(args.size, args.size))
    with MllpListener() as ris:
        try:
            (tmp / "orthanc.json").write_text(json.dumps({
                "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": o_dicom, "HttpPort": o_http,
                "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                "StorageDirectory": str(tmp / "orthanc"), "IndexDirectory": str(tmp / "orthanc"), "Plugins": []}))
            (tmp / "node.yaml").write_text(yaml.safe_dump({
                "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": node_port, "data_dir": str(tmp / "node")},
                "series": {"quiet_seconds": 2},
                "destinations": [{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": o_dicom,
                                  "send": ["sr", "seg"]}],
                "queue": {"broker_url": f"redis://127.0.0.1:{redis_port}/0"},
                "model": {"weights": str(weights), "device": "cpu", "threads": max(1, 2 // args.workers)},
                "http": {"enabled": False}, "logging": {"level": "WARNING"},
                "triage": {"default_lane": "routine", "rules": [{"lane": "stat", "calling_aets": ["ED_CT"]},
                                                                {"lane": "batch", "calling_aets": ["ARCHIVE"]}]},
                "notify": {"hl7": [{"name": "ris", "host": "127.0.0.1", "port": ris.port}]}}))
            procs.append(start([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(tmp / "orthanc.json")],
                               tmp / "orthanc.log"))
            procs.append(start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], tmp / "redis.log"))
            for n in range(args.workers):
                procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "worker",
                                    "--pool", "solo", "--concurrency", "1", "--name", f"w{n}@bench"],
                                   tmp / f"worker{n}.log"))
            procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "serve"],
                               tmp / "node.log"))
            def orthanc_up() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{o_http}/system", timeout=1).ok
                except requests.RequestException:
                    return False

            wait(orthanc_up, 30, "Orthanc")
            wait(lambda: (tmp / "node" / "ledger.sqlite3").exists(), 60, "the node")
            time.sleep(8)  # the workers load the model
            ledger = Ledger(tmp / "node" / "ledger.sqlite3")
            node = Destination(name="node", ae_title="DURAL_AI", host="127.0.0.1", port=node_port)
            for i in range(flood):
                series = write_phantom_series(make_phantom(900 + i, kind="negative", ranges=ranges), tmp / f"b{i}")
                send_files(series["dicom"], node, "ARCHIVE", None, 60)
            if flood:
                wait(lambda: sum(j.state.value == "running" for j in ledger.jobs()) >= args.workers, 600,
                     "the batch flood to run")
            stat = write_phantom_series(make_phantom(4242, kind="sdh", ranges=ranges), tmp / "stat")
            send_files(stat["dicom"], node, "ED_CT", None, 60)
            acked = time.time()
            wait(lambda: ris.received, 900, "the ORU", step=0.05)
            oru_at = ris.received[0].at
            import pydicom

            uid = str(pydicom.dcmread(stat["dicom"][0], stop_before_pixels=True).SeriesInstanceUID)
            job = [j for j in ledger.jobs() if j.series_uid == uid][-1]
            stored = wait(lambda: [d.updated_at for d in ledger.deliveries(job.id)
                                   if d.destination == "orthanc" and d.state.value == "sent"], 120, "the SR at the PACS")
            queued = next(at for state, at, _ in ledger.events(job.id) if state == "queued")
            running = [j.result for j in ledger.jobs() if j.lane == "batch" and j.result and "started_at" in j.result
                       and j.result["started_at"] <= queued <= j.result.get("finished_at", 0)]
            return {"batch queued": flood, "lane": job.lane, "triage": job.triage,
                    "ack -> ORU s": round(oru_at - acked, 2),
                    "queued -> started s": round(job.result["started_at"] - queued, 2),
                    "longest running batch job s": round(max((r["finished_at"] - r["started_at"] for r in running),
                                                             default=0.0), 2),
                    "SR stored -> ORU s": round(oru_at - stored[0], 2)}
        finally:
            stop(procs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--weights", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    weights = (args.weights or default_weights()).resolve()
    rows = []
    for flood in (args.batch, 0):
        tmp = Path(tempfile.mkdtemp(prefix="bench-triage-"))
        try:
            rows.append(scenario(args, tmp, weights, flood))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(rows[-1], file=sys.stderr)
    print(f"\nTriage latency, {args.slices}-slice {args.size}x{args.size} synthetic head CT, Redis + "
          f"{args.workers} single-slot workers, {os.cpu_count()} CPU cores\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu_cores": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
