"""SIGTERM to a real ``dicom-node worker`` (prefork, as systemd runs it) in the middle of a job.

- To the main process only (the unit's ``KillMode=mixed``): Celery's warm shutdown lets the pool
  process finish the running job, its result whole, and the worker exits cleanly.
- To the whole process group (``KillMode=control-group``, or ``kill -TERM -<pgid>``): the pool
  process dies mid-job; the job is handed back to the broker and run again by the next worker.

Either way the jobs it had not started stay on the broker for the next worker, and nothing is lost
or analysed twice to completion. The test process plays the node (``CelerySubmitter.run_once``), as
in ``test_celery.py``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


class _Workers:
    def __init__(self, raw: dict, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        (tmp_path / "worker.yaml").write_text(yaml.safe_dump(raw))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "--config", str(self.tmp_path / "worker.yaml"), "worker",
                 "--concurrency", "1", "--name", f"{name}@test"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp_path.glob("*.log"))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_mid_job_loses_nothing(tmp_path, tiny_weights, redis_url, group):  # noqa: F811
    raw = config(tmp_path, tiny_weights, redis_url)
    raw["queue"]["max_submissions"] = 3
    cfg = parse_config(raw)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    client = redis.Redis.from_url(redis_url)
    # Long enough (a few seconds each here) that SIGTERM lands in the middle of one.
    jobs = [_add_job(cfg, ledger, seed=70 + i, slices=160) for i in range(3)]
    sub = CelerySubmitter(cfg, ledger)
    workers = _Workers(raw, tmp_path)
    first = workers.start("first")

    def folder(job_id: int) -> Path:
        return cfg.data_dir / "results" / str(job_id)

    try:
        deadline = time.time() + 180
        running = None
        while running is None:  # the first worker has started a job and not finished it
            assert time.time() < deadline and first.poll() is None, workers.log()
            sub.run_once(ledger, time.time())
            running = next((j for j in jobs if client.exists(heartbeat_key(j))
                            and not (folder(j) / OUTCOME_FILE).exists()), None)
            time.sleep(0.05)
        runner_pid = client.get(heartbeat_key(running)).decode().split()[1]  # the pool process
        if group:
            os.killpg(first.pid, signal.SIGTERM)
        else:
            os.kill(first.pid, signal.SIGTERM)
        assert not (folder(running) / OUTCOME_FILE).exists(), "the job finished before SIGTERM; the test proves nothing"
        assert first.wait(120) == 0, workers.log()
        finished = read_outcome(folder(running))
        if group:
            # The pool process died mid-job: no outcome, nothing half-written left as a result.
            assert finished is None, workers.log()
            assert not [p for p in folder(running).rglob("*") if p.suffix in (".dcm", ".png")]
        else:
            # Warm shutdown: that worker finished the job it was running.
            assert finished is not None and finished.state == "done", workers.log()
            assert finished.worker.split(":")[1] == runner_pid
        # The jobs not started yet were left on the broker: a new worker runs them (and the
        # handed-back one).
        assert sum((folder(j) / OUTCOME_FILE).exists() for j in jobs) == (0 if group else 1), workers.log()
        second = workers.start("second")
        while not all(ledger.job(j).state == JobState.DONE for j in jobs):
            assert time.time() < deadline + 240 and second.poll() is None, workers.log()
            sub.run_once(ledger, time.time())
            time.sleep(0.1)
    finally:
        workers.close()
        sub.close()
        client.close()
    for job_id in jobs:
        starts = [line.split()[2] for line in (folder(job_id) / STARTS_FILE).read_text().splitlines()]
        if group and job_id == running:
            assert starts[0] == runner_pid and len(starts) == 2, starts  # cut short, then run again
        else:
            assert len(starts) == 1, (job_id, starts)  # nothing run twice
    done_by = {j: ledger.job(j).result["worker"].split(":")[1] for j in jobs}
    assert (done_by[running] == runner_pid) is (not group)
    assert all(pid != runner_pid for j, pid in done_by.items() if j != running)
