"""Batch reprocessing throughput: ``dicom-node reprocess`` over N 40-slice head CT studies that
Orthanc holds, studies per minute end to end.

Real parts, each its own process on 127.0.0.1: Orthanc as the query/retrieve PACS (it knows the
node as a C-MOVE destination; nothing is forwarded by itself), Redis (our own, on a free port),
``dicom-node serve``, ``--workers`` warm ``dicom-node worker`` processes, and the
``dicom-node reprocess`` command itself. The clock starts when the command starts and stops when
the last result object of the last study is stored back in Orthanc, so it covers the query
(C-FIND), the retrieval (C-MOVE into the node), series assembly, the batch-lane queue, analysis
(model and SEG/SR/SC/KOS) and sending the results to Orthanc.

Where the time goes is read from the ledger and the workers' outcomes (all on this machine's
clock): the queries (start to the first instance received), each study's retrieval (first to last instance received), the wait from complete
to a worker starting it, the analysis split into read / inference / objects, and sending. The
share of the wall time during which a worker was analysing says whether the run was bound by
the model (close to 100%) or by everything around it.

Usage: ``python bench/batch.py [--studies 10] [--slices 40] [--size 512] [--workers 2]
[--studies-per-minute 60] [--json bench/results/batch.json]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from e2e import BIN, default_weights, free_port, start, stop, wait  # noqa: E402

WINDOW = ("2026-01-01", "2026-01-31")
#: One study per worker, reprocessed before the clock starts, so that every worker has loaded
#: its model and run once.
WARM_UP_WINDOW = ("2025-12-01", "2025-12-31")


def make_studies(args: argparse.Namespace, tmp: Path, url: str, count: int, month: str, seed: int) -> list[str]:
    """Write ``count`` phantom head CTs dated in ``month`` (YYYYMM) and upload them to Orthanc."""
    import pydicom

    from segmenter.synthetic import PhantomRanges, make_phantom, write_phantom_series

    ranges = replace(PhantomRanges.training(), n_slices=(args.slices, args.slices), size=(args.size, args.size))
    series = []
    for n in range(count):
        kind = ("sdh", "edh", "negative")[n % 3]
        written = write_phantom_series(make_phantom(seed + n, kind=kind, ranges=ranges), tmp / f"study{n}",
                                       extra={"StudyDate": f"{month}{n % 28 + 1:02d}", "BodyPartExamined": "HEAD"})
        for path in written["dicom"]:
            requests.post(f"{url}/instances", data=Path(path).read_bytes(), timeout=30).raise_for_status()
        series.append(str(pydicom.dcmread(written["dicom"][0], stop_before_pixels=True).SeriesInstanceUID))
        shutil.rmtree(tmp / f"study{n}")
    return series


def breakdown(ledger, series: list[str], started: float) -> dict:
    """Per-study stage times (medians) and the run's wall-clock figures, from the ledger."""
    jobs = {j.series_uid: j for j in ledger.jobs() if j.series_uid in series and j.state.value == "delivered"}
    received: dict[int, list[float]] = {}
    for row in ledger.iter_instances():
        if row["job_id"] in {j.id for j in jobs.values()}:
            received.setdefault(row["job_id"], []).append(row["received_at"])
    per: list[dict[str, float]] = []
    busy = []
    for job in jobs.values():
        events: dict[str, float] = {}
        for state, at, _ in ledger.events(job.id):
            events.setdefault(state, at)
        out, t = job.result, job.result["timings"]
        busy.append((out["started_at"], out["finished_at"]))
        per.append({
            "retrieve (first -> last instance)": max(received[job.id]) - min(received[job.id]),
            "completion wait": events["complete"] - max(received[job.id]),
            "queue (complete -> worker started)": out["started_at"] - events["complete"],
            "read": t.get("read", 0) + t.get("model_load", 0),
            "inference": t.get("inference", 0),
            "  of which network": (out.get("inference_timings") or {}).get("network_s", 0),
            "  of which post-processing": (out.get("inference_timings") or {}).get("postprocess_s", 0),
            "objects": t.get("build", 0) + t.get("write", 0) + t.get("preview", 0),
            "collect": events["done"] - out["finished_at"],
            "sending": events["delivered"] - events["done"],
            "study latency (first instance -> delivered)": events["delivered"] - min(received[job.id]),
        })
    end = max(at for job in jobs.values() for state, at, _ in ledger.events(job.id) if state == "delivered")
    first_instance = min(min(v) for v in received.values())
    # Seconds during which at least one worker was analysing.
    covered, last = 0.0, float("-inf")
    for a, b in sorted(busy):
        if b > last:
            covered += b - max(a, last)
            last = b
    wall = end - started
    return {
        "studies": len(jobs), "wall_s": round(wall, 2),
        "studies_per_minute": round(len(jobs) / wall * 60, 2),
        # The C-FIND queries (every study and its series) come before the first retrieval.
        "start -> first instance received_s": round(first_instance - started, 2),
        "last analysis finished -> last result stored_s": round(end - max(b for _, b in busy), 2),
        "analysis_busy_fraction": round(covered / wall, 3),
        "analysis_s_sum": round(sum(b - a for a, b in busy), 2),
        "median_per_study_s": {k: round(statistics.median(p[k] for p in per), 3) for k in per[0]},
    }


def reprocess(tmp: Path, window: tuple[str, str]) -> subprocess.CompletedProcess:
    command = subprocess.run([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "reprocess", "--source",
                              "orthanc", "--since", window[0], "--until", window[1]],
                             capture_output=True, text=True, timeout=3600)
    if command.returncode != 0:
        raise SystemExit(f"reprocess failed ({command.returncode}):\n{command.stdout}\n{command.stderr[-3000:]}")
    return command


def run(args: argparse.Namespace, tmp: Path, weights: Path) -> dict:
    from dicom_node.ledger import Ledger

    procs: list[subprocess.Popen] = []
    node_port, redis_port, o_dicom, o_http = free_port(), free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{o_http}"
    try:
        (tmp / "orthanc.json").write_text(json.dumps({
            "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": o_dicom, "HttpPort": o_http,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "StorageDirectory": str(tmp / "orthanc"), "IndexDirectory": str(tmp / "orthanc"),
            "DicomModalities": {"node": ["DURAL_AI", "127.0.0.1", node_port]}}))
        (tmp / "node.yaml").write_text(yaml.safe_dump({
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": node_port, "data_dir": str(tmp / "node")},
            "series": {"include": {"body_part_examined": ["HEAD|BRAIN|SKULL"]}},
            "destinations": [{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": o_dicom}],
            "queue": {"broker_url": f"redis://127.0.0.1:{redis_port}/0"},
            "model": {"weights": str(weights), "device": "cpu", "threads": max(1, 2 // args.workers)},
            "reprocess": {"studies_per_minute": args.studies_per_minute,
                          "max_concurrent_retrieves": args.concurrent_retrieves, "stat_poll_s": 1},
            "http": {"enabled": False}, "logging": {"level": "WARNING"}}))
        procs.append(start([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(tmp / "orthanc.json")],
                           tmp / "orthanc.log"))

        def orthanc_up() -> bool:
            try:
                return requests.get(f"{url}/system", timeout=1).ok
            except requests.RequestException:
                return False

        wait(orthanc_up, 30, "Orthanc")
        t = time.time()
        series = make_studies(args, tmp, url, args.studies, WINDOW[0][:7].replace("-", ""), 700)
        warm_up = make_studies(args, tmp, url, args.workers, WARM_UP_WINDOW[0][:7].replace("-", ""), 600)
        print(f"{len(series)} studies in Orthanc ({time.time() - t:.0f} s to make)", file=sys.stderr)
        procs.append(start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], tmp / "redis.log"))
        for n in range(args.workers):
            procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "worker",
                                "--queues", "stat,routine,batch", "--name", f"w{n}@bench"], tmp / f"worker{n}.log"))
        procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "serve"], tmp / "node.log"))
        wait(lambda: (tmp / "node" / "ledger.sqlite3").exists(), 60, "the node")
        ledger = Ledger(tmp / "node" / "ledger.sqlite3")

        def delivered(uids: list[str]) -> Callable[[], bool]:
            def check() -> bool:
                done = {j.series_uid for j in ledger.jobs() if j.state.value == "delivered"}
                return all(s in done for s in uids)
            return check

        reprocess(tmp, WARM_UP_WINDOW)
        wait(delivered(warm_up), 600, "the warm-up studies", step=0.2)
        load_before = os.getloadavg()
        started = time.time()
        command = reprocess(tmp, WINDOW)
        command_s = time.time() - started
        print(command.stdout, file=sys.stderr)
        wait(delivered(series), 600, "every study's results stored in Orthanc", step=0.2)
        result = breakdown(ledger, series, started)
        result["reprocess_command_s"] = round(command_s, 2)
        result["load_average_before"] = [round(x, 2) for x in load_before]
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        stop(procs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=10)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2,
                   help="dicom-node worker processes, each with 2 // workers model threads (default %(default)s)")
    p.add_argument("--studies-per-minute", type=float, default=60,
                   help="reprocess.studies_per_minute (the rate limit; default %(default)s)")
    p.add_argument("--concurrent-retrieves", type=int, default=2, help="reprocess.max_concurrent_retrieves")
    p.add_argument("--weights", type=Path)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    weights = (args.weights or default_weights()).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        result = run(args, tmp, weights)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(machine=f"{os.cpu_count()} CPU cores", date=dt.date.today().isoformat(), weights=weights.name,
                  series=f"{args.slices} x {args.size} x {args.size} synthetic head CT",
                  workers=args.workers, studies_per_minute_limit=args.studies_per_minute,
                  concurrent_retrieves=args.concurrent_retrieves)
    print(json.dumps(result, indent=1))
    print(f"\n{result['studies']} studies in {result['wall_s']} s: {result['studies_per_minute']} studies/min "
          f"(target 6: {'met' if result['studies_per_minute'] >= 6 else 'NOT met'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
