"""The Celery app, the task adapter and a real `dicom-node worker` process.

The worker runs as a separate process sharing only ``data_dir`` and a redis-server (started
here on a free port) with the test process, which plays the node.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import torch
import yaml

from dicom_node.commands import worker as worker_command
from dicom_node.config import parse_config
from dicom_node.contract import LANES, STARTS_FILE, TASK_NAME
from dicom_node.ledger import JobState, Ledger
from dicom_node.names import LEDGER_FILE
from dicom_node.submit import CelerySubmitter
from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.dicom_io import make_test_series
from segmenter.weights import sha256_file
from worker.celery_app import make_celery
from worker.tasks import segment

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    cfg = CSRUNetConfig(base_width=4, depth=2, input_size=64, windows=("brain",))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"model": CSRUNet.from_config(cfg).state_dict(), "config": cfg.to_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(path), "version": "test-0"}))
    return path


def config(tmp_path: Path, weights: Path, broker: str = "redis://127.0.0.1:6390/9") -> dict:
    return {"node": {"data_dir": str(tmp_path / "data")}, "queue": {"broker_url": broker, "max_submissions": 2},
            "model": {"weights": str(weights), "device": "cpu", "threads": 1}}


def add_series(cfg, ledger: Ledger, seed: int) -> int:
    folder = cfg.data_dir / "spool" / f"s{seed}"
    for path in make_test_series(folder, n_slices=10, rows=64, cols=64, seed=seed):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, CT, path, None)
    job_id = ledger.jobs()[-1].id
    ledger.transition(job_id, JobState.COMPLETE)
    return job_id


@pytest.mark.parametrize("key, value", [
    ("task_acks_late", True), ("task_reject_on_worker_lost", True), ("worker_prefetch_multiplier", 1),
    ("task_default_queue", "stat"), ("task_soft_time_limit", 600), ("task_time_limit", 900),
    ("task_ignore_result", True), ("result_backend", None),
])
def test_make_celery_settings(tmp_path, tiny_weights, key, value):
    app = make_celery(parse_config(config(tmp_path, tiny_weights)))
    assert app.conf[key] == value


def test_make_celery_transport_and_queues(tmp_path, tiny_weights):
    app = make_celery(parse_config(config(tmp_path, tiny_weights)))
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == 4 * 3600 and options["queue_order_strategy"] == "priority"
    assert [q.name for q in app.conf.task_queues] == list(LANES)
    assert TASK_NAME in app.tasks


def test_embedded_broker_is_refused(tmp_path, tiny_weights, capsys):
    cfg = parse_config({**config(tmp_path, tiny_weights), "queue": {"broker_url": "embedded"}})
    with pytest.raises(ValueError, match="redis://"):
        make_celery(cfg)
    parser = argparse.ArgumentParser()
    worker_command.add_arguments(parser)
    assert worker_command.run(parser.parse_args([]), cfg) == 2
    assert "embedded" in capsys.readouterr().err


def test_task_fails_job_that_keeps_killing_its_worker(tmp_path, tiny_weights):
    cfg = parse_config(config(tmp_path, tiny_weights))
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    job_id = add_series(cfg, ledger, seed=1)
    sub = CelerySubmitter(cfg, ledger)
    rel = sub._write_manifest(ledger.job(job_id), "stat", "analyse")
    sub.close()
    folder = cfg.data_dir / "results" / str(job_id)
    (folder / STARTS_FILE).write_text("1 h 1\n2 h 2\n")  # two starts that never finished
    summary = segment(cfg, job_id, rel, redelivered=True)
    assert summary["state"] == "failed"
    outcome = json.loads((folder / "outcome.json").read_text())
    assert outcome["fail_stage"] == "inference" and "stopped 2 times" in outcome["reason"]
    assert [f["type"] for f in outcome["files"]] == ["sr"]
    assert outcome["timings"].get("inference") is None  # the model was not run




@pytest.mark.network
@pytest.mark.slow
def test_worker_process_runs_lanes_in_order_and_node_records(tmp_path, tiny_weights, redis_url):
    raw = config(tmp_path, tiny_weights, redis_url)
    cfg = parse_config(raw)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    sub = CelerySubmitter(cfg, ledger)
    jobs = {}
    for lane in ("batch", "routine", "stat"):  # published in reverse order of urgency
        job_id = add_series(cfg, ledger, seed=len(jobs) + 10)
        task_id = f"t-{lane}"
        sub._send(job_id, sub._write_manifest(ledger.job(job_id), lane, "analyse"), lane, task_id)
        ledger.mark_submitted(job_id, task_id, lane)
        jobs[lane] = job_id
    # The worker is a separate process with its own copy of the config: only data_dir is shared.
    worker_cfg = tmp_path / "worker.yaml"
    worker_cfg.write_text(yaml.safe_dump(raw))
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node", "--config", str(worker_cfg), "worker",
                             "--pool", "solo", "--concurrency", "1"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not all(ledger.job(j).state == JobState.DONE for j in jobs.values()):
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            sub.run_once(ledger, time.time())
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        sub.close()
        log.close()
    started = {lane: ledger.job(j).result["started_at"] for lane, j in jobs.items()}
    assert started["stat"] < started["routine"] < started["batch"]
    assert all(ledger.job(j).result["worker"].split(":")[1] != str(os.getpid()) for j in jobs.values())
