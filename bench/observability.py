"""What metrics, audit and retention cost: scrape time over a large ledger, the receiver hook per
instance, retention's purge rate.

Usage::

    .venv/bin/python bench/observability.py [--jobs 20000] [--purge-jobs 100] [--json out.json]

- **Scrape.** A ledger with ``--jobs`` analysed-and-delivered jobs (each with its seven events, a
  worker outcome and one delivery, written in bulk with SQL in the ledger's own schema) is scraped
  through ``metrics.exposition()``: the first scrape after a start reads the whole event log; a
  scrape with nothing new, and one after 100 new jobs, show the steady cost. Median of 5 for those.
- **Receiver hook.** ``events.instance_stored`` (a counter and a per-association tally) per call,
  over 200,000 calls.
- **Retention.** ``purge_once`` on ``--purge-jobs`` settled jobs of 40 spool files (64 kB each)
  plus a result folder of 12 files: files removed per second, and how long each job holds the
  ledger's write lock (the receiver waits that long to record an instance meanwhile).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.config import parse_config  # noqa: E402
from dicom_node.ledger import JobState, Ledger  # noqa: E402
from dicom_node.observability import events, metrics  # noqa: E402
from dicom_node.retention import DiskUsage, purge_once  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"


def fill(ledger: Ledger, jobs: int, first: int = 1, t0: float = 1.7e9) -> None:
    """``jobs`` delivered jobs with the events a real run writes."""
    outcome = json.dumps({"state": "done", "started_at": 0, "timings": {"read": 0.3, "model_load": 0.1,
                          "inference": 3.1, "build": 0.6, "write": 0.2, "total": 4.3},
                          "model": {"name": "CSR-UNet SDH/EDH", "version": "3.0", "weights_sha256": "ab" * 32},
                          "findings": {}, "worker": "w1:1"})
    db = ledger._db()
    db.execute("BEGIN")
    for n in range(first, first + jobs):
        t = t0 + n * 60
        cur = db.execute("INSERT INTO jobs(series_uid, study_uid, state, outcome, lane, submissions, created_at, "
                         "updated_at, last_instance_at, files_json, worker_outcome_json, triage) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         (f"1.2.9.{n}.1", f"1.2.9.{n}", "delivered", "done", "stat", 1, t, t + 20, t, "[]",
                          outcome.replace('"started_at": 0', f'"started_at": {t + 4}'), "routine"))
        job = cur.lastrowid
        for state, dt in (("received", 0), ("complete", 2), ("queued", 3), ("running", 4), ("done", 9),
                          ("delivered", 20)):
            db.execute("INSERT INTO events(job_id, state, at, detail) VALUES (?,?,?,?)", (job, state, t + dt, None))
        db.execute("INSERT INTO deliveries(job_id, destination, state, attempts, next_attempt_at, updated_at, kind) "
                   "VALUES (?,?,?,?,?,?,?)", (job, "pacs", "sent", 1, t + 20, t + 19, "dicom"))
    db.execute("COMMIT")


def bench_scrape(root: Path, jobs: int) -> dict:
    root.mkdir(parents=True)
    ledger = Ledger(root / "ledger.sqlite3")
    t = time.perf_counter()
    fill(ledger, jobs)
    filled = time.perf_counter() - t
    metrics.bind_ledger(Ledger(ledger.path))
    t = time.perf_counter()
    body, _ = metrics.exposition()
    first = time.perf_counter() - t
    idle = []
    for _ in range(5):
        t = time.perf_counter()
        metrics.exposition()
        idle.append(time.perf_counter() - t)
    after_new = []
    for i in range(5):
        fill(ledger, 100, first=jobs + 1 + i * 100)
        t = time.perf_counter()
        metrics.exposition()
        after_new.append(time.perf_counter() - t)
    count = metrics.REGISTRY.get_sample_value("dural_stage_duration_seconds_count", {"stage": "end_to_end"})
    assert count == jobs + 500, count
    metrics.bind_ledger(None)
    return {"jobs": jobs, "events": jobs * 6, "fill_s": round(filled, 2), "first_scrape_s": round(first, 3),
            "idle_scrape_ms": round(1000 * statistics.median(idle), 2),
            "scrape_after_100_new_jobs_ms": round(1000 * statistics.median(after_new), 2), "body_bytes": len(body)}


def bench_hook(calls: int = 200_000) -> dict:
    events.association_opened("bench", "SCU", "DURAL_AI", "127.0.0.1:1")
    t = time.perf_counter()
    for i in range(calls):
        events.instance_stored("bench", "1.2.3", "1.2.3.4")
    per = (time.perf_counter() - t) / calls
    events.association_closed("bench", "released")
    return {"calls": calls, "us_per_instance": round(per * 1e6, 2)}


def bench_purge(root: Path, n_jobs: int) -> dict:
    cfg = parse_config({"node": {"data_dir": str(root / "data")},
                        "retention": {"max_age_days": 1, "disk_high_water_percent": None}})
    spool = Spool(cfg.data_dir)
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    old = time.time() - 5 * 86400
    payload = b"\0" * 65536
    for j in range(n_jobs):
        study, series = f"1.2.8.{j}", f"1.2.8.{j}.1"
        for i in range(40):
            path = spool.put_file(study, series, f"{series}.{i}", payload)
            ledger.record_instance(f"{series}.{i}", study, series, CT, path, None, now=old)
        job = ledger.jobs()[-1].id
        results = cfg.data_dir / "results" / str(job)
        results.mkdir(parents=True)
        for k in range(12):
            (results / f"obj{k}.dcm").write_bytes(payload[:20000])
        ledger.transition(job, JobState.NOT_ANALYSED, reason="bench", now=old)
        ledger.settle_report(job, [], now=old)
    total = shutil.disk_usage(cfg.data_dir).total
    locked: list[float] = []
    purge_job = ledger.purge_job

    def timed(*args, **kwargs):  # the part that holds the ledger's write lock
        t0 = time.perf_counter()
        try:
            return purge_job(*args, **kwargs)
        finally:
            locked.append(time.perf_counter() - t0)

    ledger.purge_job = timed  # type: ignore[method-assign]
    t = time.perf_counter()
    run = purge_once(cfg, ledger, usage=lambda _p: DiskUsage(total, 0, total))
    seconds = time.perf_counter() - t
    assert run.jobs == n_jobs, run
    return {"jobs": run.jobs, "files": run.files, "bytes": run.bytes, "seconds": round(seconds, 3),
            "files_per_s": round(run.files / seconds), "ms_per_job": round(1000 * seconds / run.jobs, 2),
            "ledger_locked_ms_per_job_median": round(1000 * statistics.median(locked), 2),
            "ledger_locked_ms_per_job_max": round(1000 * max(locked), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--purge-jobs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {"scrape": bench_scrape(root / "scrape", args.jobs), "receiver_hook": bench_hook(),
                  "retention": bench_purge(root / "purge", args.purge_jobs)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
