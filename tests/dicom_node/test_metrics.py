"""Prometheus metrics: the exposition parsed with prometheus_client's own parser, the receiver's
counters against a real receiver and dcmtk storescu, and the ledger-derived metrics on a ledger
driven through every stage."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.config import parse_config
from dicom_node.ledger import JobState, Ledger
from dicom_node.observability import metrics
from dicom_node.observability.ledger_metrics import STAGES
from dicom_node.scp import start_receiver

CT = "1.2.840.10008.5.1.4.1.1.2"
T = 1_800_000_000.0


def scrape() -> dict[str, dict[tuple, float]]:
    """``{sample name: {label items: value}}`` from the text exposition."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("dural_"), family.name
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    metrics.bind_ledger(ledger)
    yield ledger
    metrics.bind_ledger(None)


def analysed(ledger: Ledger, n: int, *, t: float, deliveries: dict[str, str], notified: bool = False,
             model: str = "3.0") -> int:
    """A series through every stage: last instance at t, complete at t+2, queued at t+3, worker
    started at t+4 (1 s queue wait), inference 5 s, objects 0.5+0.25 s, outcome at t+12, DICOM
    sent at t+15, the notification at t+13."""
    series = f"1.2.826.0.2.{n}"
    ledger.record_instance(f"{series}.1", "1.2.826.0.2", series, CT, f"/x/{n}", None, now=t)
    job = ledger.jobs()[-1].id
    ledger.transition(job, JobState.COMPLETE, detail="complete: quiet", now=t + 2)
    ledger.mark_submitted(job, f"task{n}", "stat", now=t + 3)
    ledger.transition(job, JobState.RUNNING, now=t + 4.5)
    outcome = {"state": "done", "files": [{"type": "sr", "path": "r"}], "started_at": t + 4,
               "timings": {"read": 0.2, "model_load": 0.1, "inference": 5.0, "build": 0.5, "write": 0.25},
               "model": {"name": "CSR-UNet SDH/EDH", "version": model, "weights_sha256": "ab" * 32}}
    ledger.transition(job, JobState.DONE, result=outcome, now=t + 12)
    ledger.add_deliveries(job, list(deliveries), now=t + 12)
    if notified:
        ledger.add_notification(job, "webhook:ward", "webhook", {"job": job}, now=t + 12)
    for delivery in sorted(ledger.deliveries(job), key=lambda d: d.kind != "webhook"):  # in time order
        if delivery.kind == "webhook":
            ledger.delivery_attempted(delivery.id, ok=True, now=t + 13)
        elif deliveries[delivery.destination] == "sent":
            ledger.delivery_attempted(delivery.id, ok=True, now=t + 15)
        elif deliveries[delivery.destination] == "retrying":
            ledger.delivery_attempted(delivery.id, ok=False, error="refused", next_attempt_at=t + 100, now=t + 15)
        elif deliveries[delivery.destination] == "dead":
            ledger.delivery_attempted(delivery.id, ok=False, error="refused", dead=True, now=t + 15)
    return job


def test_stage_histograms_follow_the_ledger_and_count_each_job_once(ledger):
    analysed(ledger, 1, t=T, deliveries={"pacs": "sent"}, notified=True)
    samples = scrape()
    expected = {"receive_to_complete": 2.0, "queue_wait": 1.0, "inference": 5.0, "object_building": 0.75,
                "sending": 3.0, "notification": 1.0, "end_to_end": 15.0}
    for stage in STAGES:
        assert value(samples, "dural_stage_duration_seconds_count", stage=stage) == 1, stage
        assert value(samples, "dural_stage_duration_seconds_sum", stage=stage) == pytest.approx(expected[stage])
    # Buckets are cumulative: the 5 s inference is in le=5.0 and above, not in le=2.5.
    assert value(samples, "dural_stage_duration_seconds_bucket", stage="inference", le="2.5") == 0
    assert value(samples, "dural_stage_duration_seconds_bucket", stage="inference", le="5.0") == 1
    assert value(samples, "dural_stage_duration_seconds_bucket", stage="inference", le="+Inf") == 1

    assert scrape() == samples, "a scrape with nothing new must change nothing"
    analysed(ledger, 2, t=T + 100, deliveries={"pacs": "sent"})
    again = scrape()
    assert value(again, "dural_stage_duration_seconds_count", stage="inference") == 2
    assert value(again, "dural_stage_duration_seconds_count", stage="notification") == 1  # job 2 notified nobody
    # A node restarting reads the whole log once: the same counts, not double.
    metrics.bind_ledger(Ledger(ledger.path))
    assert scrape()["dural_stage_duration_seconds_count"] == again["dural_stage_duration_seconds_count"]


def test_requeued_and_superseded_jobs_are_not_counted_twice(ledger):
    series = "1.2.826.0.3.1"
    ledger.record_instance(f"{series}.1", "1.2.826.0.3", series, CT, "/x/a", None, now=T)
    job = ledger.jobs()[-1].id
    ledger.transition(job, JobState.COMPLETE, detail="complete: quiet", now=T + 2)
    ledger.mark_submitted(job, "t1", "stat", now=T + 3)
    ledger.requeue(job, "worker lost", now=T + 50)  # a second 'complete' event: not a second completion
    ledger.mark_submitted(job, "t2", "stat", now=T + 60)
    outcome = {"state": "done", "files": [], "started_at": T + 62, "timings": {"inference": 1.0}}
    ledger.transition(job, JobState.DONE, result=outcome, now=T + 70)
    samples = scrape()
    assert value(samples, "dural_stage_duration_seconds_count", stage="receive_to_complete") == 1
    assert value(samples, "dural_stage_duration_seconds_sum", stage="receive_to_complete") == 2
    # Queue wait from the latest submission, not the first.
    assert value(samples, "dural_stage_duration_seconds_sum", stage="queue_wait") == 2


def test_jobs_series_outbox_and_model_gauges(ledger):
    analysed(ledger, 1, t=T, deliveries={"pacs": "sent", "archive": "sent"}, model="2.0")
    analysed(ledger, 2, t=T + 10, deliveries={"pacs": "retrying", "archive": "sent"}, model="3.0")
    analysed(ledger, 3, t=T + 20, deliveries={"pacs": "dead", "archive": "retrying"}, model="3.0")
    ledger.record_instance("1.2.826.0.2.9.1", "1.2.826.0.2", "1.2.826.0.2.9", CT, "/x/9", None, now=T + 30)
    samples = scrape()
    assert value(samples, "dural_jobs", state="delivered") == 1
    assert value(samples, "dural_jobs", state="done") == 2
    assert value(samples, "dural_jobs", state="received") == 1
    assert value(samples, "dural_jobs", state="failed") == 0  # every state is present
    assert value(samples, "dural_series", state="done") == 2 and value(samples, "dural_series", state="received") == 1
    assert value(samples, "dural_outbox_depth", destination="pacs", kind="dicom") == 1
    assert value(samples, "dural_outbox_retrying", destination="pacs", kind="dicom") == 1
    assert value(samples, "dural_outbox_dead_letters", destination="pacs", kind="dicom") == 1
    assert value(samples, "dural_outbox_depth", destination="archive", kind="dicom") == 1
    assert value(samples, "dural_outbox_dead_letters", destination="archive", kind="dicom") == 0
    # More instances of the delivered series: its new job is what the series' state says now.
    ledger.record_instance("1.2.826.0.2.1.2", "1.2.826.0.2", "1.2.826.0.2.1", CT, "/x/1b", None, now=T + 40)
    grown = scrape()
    assert value(grown, "dural_series", state="delivered") == 0 and value(grown, "dural_series", state="received") == 2
    assert value(grown, "dural_jobs", state="delivered") == 1  # the job itself keeps its state
    info = samples["dural_model_info"]
    assert list(info) == [(("name", "CSR-UNet SDH/EDH"), ("version", "3.0"), ("weights_sha256", "ab" * 32))]
    assert value(samples, "dural_ledger_readable") == 1


def test_an_unreadable_ledger_is_reported_not_raised(ledger):
    ledger._db().execute("DROP TABLE deliveries")
    samples = scrape()
    assert value(samples, "dural_ledger_readable") == 0
    assert "dural_instances_received_total" in samples  # the process's own counters still come


@pytest.mark.network
def test_receiver_counts_instances_and_associations(tmp_path, series_factory, dcmtk, free_port):
    cfg = parse_config({"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": str(tmp_path / "data"),
                                 "min_free_disk_gb": 0, "allowed_calling_aets": ["DCMTK_SCU"]}})
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    receiver = start_receiver(cfg, ledger)
    files = series_factory("metrics", n_slices=4)
    before = scrape()

    def store(calling: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "DURAL_AI", "127.0.0.1",
                               str(receiver.port), *map(str, paths)], capture_output=True, text=True, timeout=60)

    try:
        assert store("DCMTK_SCU", files).returncode == 0
        assert store("BAD_SCU", files[:1]).returncode != 0  # rejected: calling AE not allowed
        receiver.state.min_free_gb = 10**9  # the disk is now "full": refused with 0xA700
        assert store("DCMTK_SCU", files[:1]).returncode != 0
    finally:
        receiver.shutdown()
    deadline = time.time() + 10
    while True:
        after = scrape()
        delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
        if delta("dural_associations_total", result="accepted") == 2 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert delta("dural_instances_received_total") == 4
    assert delta("dural_instances_refused_total", reason="low_disk") == 1
    assert delta("dural_instances_refused_total", reason="undecodable") == 0
    assert delta("dural_associations_total", result="accepted") == 2
    assert delta("dural_associations_total", result="rejected") == 1
