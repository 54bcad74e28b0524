"""Worker liveness through Redis keys: the key itself, and two real ``dicom-node worker``
processes of which one is killed with SIGKILL mid-job.

The test process plays the node (``CelerySubmitter.run_once``), as in ``test_celery.py``; the
workers are separate processes sharing only ``data_dir`` and a redis-server of the test's own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import redis
import yaml

from dicom_node.config import parse_config
from dicom_node.heartbeats import heartbeat_key, redis_heartbeat
from dicom_node.ledger import JobState, Ledger
from dicom_node.names import HEARTBEAT_FILE, LEDGER_FILE, OUTCOME_FILE
from dicom_node.submit import CelerySubmitter
from segmenter.dicom_io import make_test_series
from tests.worker.test_celery import CT, config, tiny_weights  # noqa: F401 - fixture
from worker.tasks import broker_heartbeat

pytestmark = pytest.mark.network

#: The key's time to live in the two-worker test: short, so the test is quick, but several beats
#: long (one every second), so that a worker slowed by a busy machine does not lose its key.
TTL_S = 4.0


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_key_lives_while_the_block_runs_then_expires(client):
    with redis_heartbeat(client, 7, ttl_s=0.8) as key:
        assert key == heartbeat_key(7) == "dicom-node:heartbeat:7"
        host, pid = client.get(key).decode().split()
        assert int(pid) == os.getpid()
        assert 0 < client.pttl(key) <= 800
        time.sleep(1.2)  # longer than the time to live: only the renewals keep it
        assert client.exists(key)
    time.sleep(1.0)
    assert not client.exists(key), "a key left behind would keep a dead worker alive"


def test_unreachable_broker_does_not_hold_up_the_job(tmp_path, tiny_weights):  # noqa: F811
    cfg = parse_config(config(tmp_path, tiny_weights, "redis://127.0.0.1:1/0"))
    started = time.monotonic()
    with broker_heartbeat(cfg) as beat, beat(tmp_path, 1):
        time.sleep(0.3)  # beats fail and are logged; the block runs on
    assert time.monotonic() - started < 2.5  # redis-py's default retries would take 4 s per beat


def _add_job(cfg, ledger: Ledger, seed: int, slices: int) -> int:
    folder = cfg.data_dir / "spool" / f"s{seed}"
    for path in make_test_series(folder, n_slices=slices, rows=128, cols=128, seed=seed):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, CT, path, None)
    job_id = ledger.jobs()[-1].id
    ledger.transition(job_id, JobState.COMPLETE)
    return job_id


@pytest.mark.slow
def test_killed_worker_jobs_are_handed_back_the_live_ones_untouched(tmp_path, tiny_weights, redis_url,  # noqa: F811
                                                                    client):
    raw = config(tmp_path, tiny_weights, redis_url)
    raw["queue"].update(heartbeat_timeout_s=TTL_S, max_submissions=3)
    cfg = parse_config(raw)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    # Long enough (about 2 s each here) that a worker is killed in the middle of one.
    jobs = [_add_job(cfg, ledger, seed=50 + i, slices=120) for i in range(4)]
    sub = CelerySubmitter(cfg, ledger)
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(raw))
    procs, logs = [], []
    for n in range(2):
        logs.append(open(tmp_path / f"worker{n}.log", "wb"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "--config", str(tmp_path / "worker.yaml"), "worker", "--pool",
             "solo", "--concurrency", "1", "--name", f"hb{n}@test"], stdout=logs[-1], stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True))
    pids = {p.pid for p in procs}

    def running() -> dict[int, int]:
        """job id -> pid of the worker whose key says it runs the job (a finished job's key
        lives on for its time to live: those have an outcome)."""
        out = {}
        for job_id in jobs:
            value = client.get(heartbeat_key(job_id))
            finished = (cfg.data_dir / "results" / str(job_id) / OUTCOME_FILE).exists()
            if value is not None and not finished and int(value.split()[1]) in pids:
                out[job_id] = int(value.split()[1])
        return out

    def log() -> str:
        return "\n".join((tmp_path / f"worker{n}.log").read_text(errors="replace")[-2000:] for n in range(2))

    try:
        deadline = time.time() + 120
        while len(set(running().values())) < 2:  # both workers busy, each with its own job
            assert time.time() < deadline and all(p.poll() is None for p in procs), log()
            sub.run_once(ledger, time.time())
            time.sleep(0.05)
        busy = running()
        victim, survivor = procs[0], procs[1]
        [killed_job] = [j for j, pid in busy.items() if pid == victim.pid]
        [live_job] = [j for j, pid in busy.items() if pid == survivor.pid]
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(10)
        assert not (cfg.data_dir / "results" / str(killed_job) / OUTCOME_FILE).exists(), \
            "the job finished before its worker was killed; the test proves nothing"
        while not all(ledger.job(j).state == JobState.DONE for j in jobs):
            assert time.time() < deadline + 120 and survivor.poll() is None, log()
            sub.run_once(ledger, time.time())
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        sub.close()
        for handle in logs:
            handle.close()

    def events(job_id: int) -> list[str]:
        return [d or "" for _, _, d in ledger.events(job_id)]

    def starts(job_id: int) -> list[str]:
        return (cfg.data_dir / "results" / str(job_id) / "starts").read_text().splitlines()

    # The killed worker's job: found lost once its key expired, resubmitted, run to the end by
    # the survivor; started twice (killed, then once more), analysed once.
    dead = ledger.job(killed_job)
    assert dead.submissions == 2 and any("its Redis key expired" in d for d in events(killed_job)), events(killed_job)
    requeued = [at for _, at, d in ledger.events(killed_job) if (d or "").startswith("requeued")]
    assert len(requeued) == 1 and requeued[0] - killed_at >= TTL_S - 1.5  # not before the key could expire
    assert dead.result["worker"].split(":")[1] == str(survivor.pid)
    assert [line.split()[2] for line in starts(killed_job)] == [str(victim.pid), str(survivor.pid)]
    # The survivor's own job, and every other, went through once, untouched.
    for job_id in jobs:
        if job_id != killed_job:
            job = ledger.job(job_id)
            assert job.submissions == 1 and len(starts(job_id)) == 1, (job_id, events(job_id))
            assert not any("requeued" in d for d in events(job_id))
    assert ledger.job(live_job).result["worker"].split(":")[1] == str(survivor.pid)
    # Liveness came from Redis alone: no worker wrote a heartbeat file.
    assert not list((cfg.data_dir / "results").glob(f"*/{HEARTBEAT_FILE}"))
