"""Stat before routine before batch, measured: real Redis, real ``dicom-node worker`` processes.

Thirty batch jobs are queued and two single-slot workers start on them; once the flood is
running, a stat job is published. Every worker takes its next task from ``stat`` first
(``queue_order_strategy: priority``, prefetch 1 with late acknowledgement, so a worker holds no
task beyond the one it runs), so the stat job waits at most for the jobs already running. The
only batch jobs that may start before it are ones a worker took in the milliseconds between
finishing a task and the stat job's arrival (at most one per worker): running, not waiting.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.names import LEDGER_FILE, OUTCOME_FILE
from dicom_node.submit import CelerySubmitter
from tests.worker.test_celery import add_series, config, tiny_weights  # noqa: F401 - fixture

BATCH_JOBS = 30
WORKERS = 2


def started(folder: Path) -> bool:
    return (folder / "starts").exists()


def outcome(folder: Path) -> dict | None:
    try:
        return json.loads((folder / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.network
@pytest.mark.slow
def test_stat_overtakes_a_batch_flood(tmp_path, tiny_weights, redis_url):  # noqa: F811
    raw = config(tmp_path, tiny_weights, redis_url)
    cfg = parse_config(raw)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    sub = CelerySubmitter(cfg, ledger)
    folder = {}
    batch = [add_series(cfg, ledger, seed=100 + i) for i in range(BATCH_JOBS)]
    stat = add_series(cfg, ledger, seed=99)
    for job_id in batch:
        sub._send(job_id, sub._write_manifest(ledger.job(job_id), "batch", "analyse"), "batch", f"t-b{job_id}")
    for job_id in [*batch, stat]:
        folder[job_id] = cfg.data_dir / "results" / str(job_id)
    worker_cfg = tmp_path / "worker.yaml"
    worker_cfg.write_text(yaml.safe_dump(raw))
    procs, logs = [], []
    for n in range(WORKERS):
        logs.append(open(tmp_path / f"worker{n}.log", "wb"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "--config", str(worker_cfg), "worker", "--pool", "solo",
             "--concurrency", "1", "--name", f"lane{n}@test"], stdout=logs[-1], stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True))
    try:
        deadline = time.time() + 240

        def check() -> None:
            for proc in procs:
                assert proc.poll() is None, (tmp_path / "worker0.log").read_text()[-3000:]
            assert time.time() < deadline, "the lane test took too long"

        # The flood is running on both workers: both have finished one job and started another.
        while sum(outcome(folder[j]) is not None for j in batch) < WORKERS + 1:
            check()
            time.sleep(0.05)
        before = {j for j in batch if started(folder[j])}
        published = time.time()
        sub._send(stat, sub._write_manifest(ledger.job(stat), "stat", "analyse"), "stat", "t-stat")
        while outcome(folder[stat]) is None:
            check()
            time.sleep(0.05)
        stat_started = outcome(folder[stat])["started_at"]
        overtook = [j for j in batch if j not in before and started(folder[j])
                    and (outcome(folder[j]) or {}).get("started_at", float("inf")) < stat_started]
        waiting_after = [j for j in batch if not started(folder[j]) or
                         (outcome(folder[j]) or {}).get("started_at", float("inf")) > stat_started]
        durations = [o["finished_at"] - o["started_at"] for o in map(outcome, (folder[j] for j in before)) if o]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        for log in logs:
            log.close()
        sub.close()
    wait = stat_started - published
    longest = max(durations)
    print(f"\nlane test: stat waited {wait:.2f} s behind {WORKERS} running batch jobs "
          f"(longest batch job {longest:.2f} s); {len(waiting_after)} batch jobs still queued behind it; "
          f"{len(overtook)} waiting batch jobs started before it")
    # A worker between two tasks may already have taken one batch task when the stat job
    # arrived: that one was running, not waiting. Nothing else may go first.
    assert len(overtook) <= WORKERS, overtook
    assert len(waiting_after) >= BATCH_JOBS // 3, "the flood was over before the stat job came"
    assert wait <= longest + 1.0, f"stat waited {wait:.2f} s, more than one running job ({longest:.2f} s)"
