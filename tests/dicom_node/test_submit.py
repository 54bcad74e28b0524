"""The submitters: manifests, outcomes into the ledger, status reports, lost-task detection.

The embedded runner runs the real pipeline with a tiny random-weight model; the Celery
submitter publishes to a real redis-server started on a free port.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pydicom
import pytest
import torch

from dicom_node.config import parse_config
from dicom_node.contract import read_manifest
from dicom_node.heartbeats import heartbeat_key
from dicom_node.ledger import Assessment, DeliveryState, FailStage, JobState, Ledger
from dicom_node.names import HEARTBEAT_FILE, LEDGER_FILE
from dicom_node.submit import BROKER_ALERT_S, CelerySubmitter, EmbeddedSubmitter, make_submitter
from dicom_node.submit.celery_transport import KEY_MISSING_GRACE_S
from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.dicom_io import make_test_series
from segmenter.weights import sha256_file
from worker.embedded import make_runner

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    cfg = CSRUNetConfig(base_width=4, depth=2, input_size=64, windows=("brain",))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"model": CSRUNet.from_config(cfg).state_dict(), "config": cfg.to_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(path), "version": "test-0"}))
    return path


@pytest.fixture
def node(tmp_path, tiny_weights):
    cfg = parse_config({"node": {"data_dir": str(tmp_path / "data")},
                        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
                        "queue": {"heartbeat_timeout_s": 5, "max_submissions": 2},
                        "model": {"weights": str(tiny_weights), "device": "cpu", "threads": 1}})
    return cfg, Ledger(cfg.data_dir / LEDGER_FILE)


def add_series(cfg, ledger: Ledger, state: JobState = JobState.COMPLETE, n: int = 12, **assessment) -> int:
    folder = cfg.data_dir / "spool" / f"s{len(ledger.jobs())}"
    for path in make_test_series(folder, n_slices=n, rows=64, cols=64, seed=len(ledger.jobs())):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, CT, path, None)
    job_id = ledger.jobs()[-1].id
    ledger.transition(job_id, state, reason="too few slices" if state == JobState.NOT_ANALYSED else None,
                      assessment=Assessment(**assessment) if assessment else None)
    return job_id


def texts(ds) -> list[str]:
    """Every TextValue in an SR content tree."""
    out = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        out += texts(item)
    return out


def drive(sub, ledger, until, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not until():
        assert time.time() < deadline, f"timed out; jobs: {ledger.jobs()}"
        sub.run_once(ledger, time.time())
        time.sleep(0.1)


def test_make_submitter_picks_by_broker(node):
    cfg, ledger = node
    assert isinstance(make_submitter(cfg, runner=make_runner(cfg)), EmbeddedSubmitter)
    redis_cfg = cfg.model_copy(update={"queue": cfg.queue.model_copy(update={"broker_url": "redis://127.0.0.1:1/9"})})
    sub = make_submitter(redis_cfg, ledger)
    assert isinstance(sub, CelerySubmitter)
    sub.close()


def test_embedded_queue_needs_a_runner(node):
    cfg, ledger = node
    with pytest.raises(ValueError, match="a job runner must be given"):
        make_submitter(cfg, ledger)


def test_embedded_runs_job_records_outcome_and_deliveries(node):
    cfg, ledger = node
    job_id = add_series(cfg, ledger)
    sub = EmbeddedSubmitter(cfg, runner=make_runner(cfg))
    try:
        drive(sub, ledger, lambda: ledger.job(job_id).state == JobState.DONE)
    finally:
        sub.close()
    job = ledger.job(job_id)
    assert job.submissions == 1 and job.result["state"] == "done"
    assert {f["type"] for f in job.result["files"]} >= {"sr"}
    for f in job.result["files"]:
        assert (cfg.data_dir / f["path"]).is_file()
    [delivery] = ledger.deliveries(job_id)
    assert delivery.destination == "pacs" and delivery.state == DeliveryState.PENDING
    manifest = read_manifest(cfg.data_dir / "results" / str(job_id) / "job.json")  # the worker's reader
    assert manifest.job_id == job_id and len(manifest.instances) == 12
    assert all(not Path(p).is_absolute() for p in manifest.instances)
    states = [s for s, _, _ in ledger.events(job_id)]
    assert states[-2:] in (["running", "done"], ["queued", "done"])


def test_restart_finds_queued_job_lost_and_resubmits_then_fails_visibly(node):
    cfg, ledger = node
    job_id = add_series(cfg, ledger)
    ledger.mark_submitted(job_id, "task-of-a-dead-process", "stat")
    sub = EmbeddedSubmitter(cfg, runner=make_runner(cfg))
    sub._send = lambda *a: None  # a queue that silently loses everything
    now = time.time()
    sub.run_once(ledger, now)  # first look: missing, within the grace period
    assert ledger.job(job_id).state == JobState.QUEUED
    counts = sub.run_once(ledger, now + 3)
    assert counts["lost"] == 1 and counts["submitted"] == 1
    assert ledger.job(job_id).submissions == 2
    sub.run_once(ledger, now + 6)
    counts = sub.run_once(ledger, now + 9)
    assert counts["failed"] == 1
    job = ledger.job(job_id)
    assert job.state == JobState.FAILED and job.fail_stage == FailStage.QUEUE and "lost 2 times" in job.reason
    sub.close()
    real = EmbeddedSubmitter(cfg, runner=make_runner(cfg))  # the status report goes through a working runner
    try:
        drive(real, ledger, lambda: (ledger.job(job_id).result or {}).get("files"))
    finally:
        real.close()
    files = ledger.job(job_id).result["files"]
    assert [f["type"] for f in files] == ["sr"]
    sr = pydicom.dcmread(cfg.data_dir / files[0]["path"])
    assert "lost 2 times" in " ".join(texts(sr)) and "FAILED" in sr.SeriesDescription.upper() + str(sr.get("DocumentTitle", ""))
    assert ledger.deliveries(job_id)[0].state == DeliveryState.PENDING


def test_stale_heartbeat_requeues_running_job(node):
    cfg, ledger = node
    job_id = add_series(cfg, ledger)
    ledger.mark_submitted(job_id, "t1", "stat")
    folder = cfg.data_dir / "results" / str(job_id)
    folder.mkdir(parents=True)
    (folder / HEARTBEAT_FILE).write_text("host 1")
    sub = EmbeddedSubmitter(cfg, runner=make_runner(cfg))
    sub._send = lambda *a: None
    now = time.time()
    assert sub.run_once(ledger, now)["running"] == 1
    assert ledger.job(job_id).state == JobState.RUNNING
    os.utime(folder / HEARTBEAT_FILE, (now - 30, now - 30))
    counts = sub.run_once(ledger, now + 1)
    assert counts["lost"] == 1 and counts["submitted"] == 1
    assert any("heartbeat stale" in (d or "") for _, _, d in ledger.events(job_id))
    assert not (folder / HEARTBEAT_FILE).exists()  # removed at resubmission


@pytest.mark.parametrize("wants, files", [(True, ["sr"]), (False, [])])
def test_not_analysed_gets_status_report_only_when_assembler_says(node, wants, files):
    cfg, ledger = node
    job_id = add_series(cfg, ledger, JobState.NOT_ANALYSED, status_report=wants, series_kind="ct_image")
    sub = EmbeddedSubmitter(cfg, runner=make_runner(cfg))
    try:
        drive(sub, ledger, lambda: "files" in (ledger.job(job_id).result or {}))
    finally:
        sub.close()
    result = ledger.job(job_id).result
    assert [f["type"] for f in result["files"]] == files
    assert result["status_report"] is wants  # the assembler's keys are kept
    assert len(ledger.deliveries(job_id)) == len(files)
    assert ledger.job(job_id).state == JobState.NOT_ANALYSED




@pytest.mark.network
def test_celery_submitter_publishes_by_name_and_notices_an_emptied_broker(node, redis_url):
    import redis

    cfg, ledger = node
    cfg = cfg.model_copy(update={"queue": cfg.queue.model_copy(update={"broker_url": redis_url})})
    job_id = add_series(cfg, ledger)
    sub = CelerySubmitter(cfg, ledger)
    client = redis.Redis.from_url(redis_url)
    try:
        now = time.time()
        assert sub.run_once(ledger, now)["submitted"] == 1
        [raw] = client.lrange("stat", 0, -1)
        message = json.loads(raw)
        assert message["headers"]["task"] == "worker.tasks.segment_series"
        assert message["headers"]["id"] == ledger.job(job_id).task_id
        assert json.loads(message["headers"]["argsrepr"].replace("'", '"')) == [job_id, f"results/{job_id}/job.json"]
        assert sub.run_once(ledger, now + 5)["lost"] == 0  # still in the lane
        # A worker reserved it: kombu moves it into the unacked hash.
        client.lpop("stat")
        client.hset("unacked", "tag-1", json.dumps([message, "", "stat"]))
        assert sub.run_once(ledger, now + 10)["lost"] == 0
        # It runs: the worker keeps its heartbeat key alive in Redis (no file is involved).
        key = heartbeat_key(job_id)
        client.set(key, "host 1", px=60_000)
        assert sub.run_once(ledger, now + 12)["running"] == 1
        # Redis restarted empty: the key is gone until the worker's next beat, which is no death.
        client.delete(key)
        assert sub.run_once(ledger, now + 13)["lost"] == 0
        client.set(key, "host 1", px=60_000)
        assert sub.run_once(ledger, now + 14)["lost"] == 0
        # Its pool process dies: the key expires and the message goes back to the lane.
        client.delete(key)
        client.hdel("unacked", "tag-1")
        client.rpush("stat", raw)
        assert sub.run_once(ledger, now + 100)["lost"] == 0  # missing, within the grace period
        assert sub.run_once(ledger, now + 100 + KEY_MISSING_GRACE_S)["lost"] == 0  # stale, but waiting for a worker
        assert ledger.job(job_id).state == JobState.RUNNING
        client.flushdb()  # Redis restarted without persistence
        counts = sub.run_once(ledger, now + 103 + KEY_MISSING_GRACE_S)
        assert counts["lost"] == 1 and counts["submitted"] == 1
        assert ledger.job(job_id).submissions == 2 and client.llen("stat") == 1
        assert any("heartbeat stale: its Redis key expired" in (d or "") for _, _, d in ledger.events(job_id))
        # Queued again and then gone from Redis: lost after the grace period.
        client.flushdb()
        sub.run_once(ledger, now + 120)
        assert sub.run_once(ledger, now + 125)["lost"] == 1
        assert any("no longer in the queue" in (d or "") for _, _, d in ledger.events(job_id))
    finally:
        sub.close()
        client.close()


def test_broker_down_leaves_job_complete_without_counting(node):
    cfg, ledger = node
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = cfg.model_copy(update={"queue": cfg.queue.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})})
    job_id = add_series(cfg, ledger)
    sub = CelerySubmitter(cfg, ledger)
    try:
        t0 = time.time()
        assert sub.run_once(ledger, t0)["submitted"] == 0
        assert sub.health(t0 + 1) == []  # a short outage is routine: the job just waits
        sub.run_once(ledger, t0 + BROKER_ALERT_S)
        (problem,) = sub.health(t0 + BROKER_ALERT_S)
        assert problem.startswith(f"queue broker unreachable for {BROKER_ALERT_S:.0f} s")
    finally:
        sub.close()
    job = ledger.job(job_id)
    assert job.state == JobState.COMPLETE and job.submissions == 0


def test_files_outside_data_dir_fail_visibly(node, tmp_path):
    cfg, ledger = node
    outside = make_test_series(tmp_path / "elsewhere", n_slices=10, rows=32, cols=32)
    for path in outside:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, CT, path, None)
    job_id = ledger.jobs()[-1].id
    ledger.transition(job_id, JobState.COMPLETE)
    sub = EmbeddedSubmitter(cfg, runner=make_runner(cfg))
    try:
        assert sub.run_once(ledger, time.time())["failed"] == 1
        sub.run_once(ledger, time.time())
    finally:
        sub.close()
    job = ledger.job(job_id)
    assert job.state == JobState.FAILED and job.fail_stage == FailStage.QUEUE and "outside node.data_dir" in job.reason
    assert job.result["files"] == [] and "outside" in job.result["report_error"]
