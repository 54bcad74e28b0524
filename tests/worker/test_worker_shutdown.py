"""SIGTERM to a real ``dicom-node worker`` (prefork, as systemd runs it) in the middle of a job.

Celery's warm shutdown: the running job is finished and its result written whole, the worker
exits cleanly, and the jobs it had not started stay on the broker for the next worker. The test
process plays the node (``CelerySubmitter.run_once``), as in ``test_celery.py``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import yaml

from dicom_node.config import parse_config
from dicom_node.contract import STARTS_FILE, read_outcome
from dicom_node.heartbeats import heartbeat_key
from dicom_node.ledger import JobState, Ledger
from dicom_node.names import LEDGER_FILE, OUTCOME_FILE
from dicom_node.submit import CelerySubmitter
from tests.worker.test_celery import config, tiny_weights  # noqa: F401 - fixture
from tests.worker.test_heartbeats import _add_job

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _worker(raw: dict, tmp_path, name: str) -> tuple[subprocess.Popen, object]:
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(raw))
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "--config", str(tmp_path / "worker.yaml"), "worker",
         "--concurrency", "1", "--name", f"{name}@test"], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    return proc, log


def test_sigterm_mid_job_finishes_it_and_leaves_the_rest_queued(tmp_path, tiny_weights, redis_url):  # noqa: F811
    raw = config(tmp_path, tiny_weights, redis_url)
    cfg = parse_config(raw)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    client = redis.Redis.from_url(redis_url)
    # Long enough (a few seconds each here) that SIGTERM lands in the middle of one.
    jobs = [_add_job(cfg, ledger, seed=70 + i, slices=160) for i in range(3)]
    sub = CelerySubmitter(cfg, ledger)
    first, first_log = _worker(raw, tmp_path, "first")
    second = second_log = None

    def log() -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))

    def outcome(job_id: int) -> bool:
        return (cfg.data_dir / "results" / str(job_id) / OUTCOME_FILE).exists()

    try:
        deadline = time.time() + 180
        running = None
        while running is None:  # the first worker has started a job and not finished it
            assert time.time() < deadline and first.poll() is None, log()
            sub.run_once(ledger, time.time())
            running = next((j for j in jobs if client.exists(heartbeat_key(j)) and not outcome(j)), None)
            time.sleep(0.05)
        runner_pid = client.get(heartbeat_key(running)).decode().split()[1]  # the pool process
        os.killpg(first.pid, signal.SIGTERM)
        assert not outcome(running), "the job finished before SIGTERM; the test proves nothing"
        assert first.wait(120) == 0, log()
        # Warm shutdown: the job that was running is finished by that worker, result whole.
        finished = read_outcome(cfg.data_dir / "results" / str(running))
        assert finished is not None and finished.state == "done", log()
        assert finished.worker.split(":")[1] == runner_pid
        for path in (cfg.data_dir / "results" / str(running)).rglob("*"):
            assert not path.name.endswith((".tmp", ".part")), f"half-written file left: {path}"
        # The rest were not started by the stopping worker, and were not lost: a new worker runs them.
        assert sum(outcome(j) for j in jobs) == 1, log()
        second, second_log = _worker(raw, tmp_path, "second")
        while not all(ledger.job(j).state == JobState.DONE for j in jobs):
            assert time.time() < deadline + 240 and second.poll() is None, log()
            sub.run_once(ledger, time.time())
            time.sleep(0.1)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        for handle in (first_log, second_log):
            if handle is not None:
                handle.close()
        sub.close()
        client.close()
    # Each job analysed exactly once: nothing handed to two workers, nothing run twice.
    for job_id in jobs:
        starts = (cfg.data_dir / "results" / str(job_id) / STARTS_FILE).read_text().splitlines()
        assert len(starts) == 1, (job_id, starts)
        assert ledger.job(job_id).submissions == 1, (job_id, [d for _, _, d in ledger.events(job_id)])
    assert ledger.job(running).result["worker"].split(":")[1] == runner_pid
    later = {ledger.job(j).result["worker"].split(":")[1] for j in jobs if j != running}
    assert runner_pid not in later and str(os.getpid()) not in later
