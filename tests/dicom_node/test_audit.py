"""The audit trail: its line format, PHI guard and rotation; the records of a real association
with a real node; job decisions and results from the ledger's event log; delivery attempts."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import parse_config
from dicom_node.ledger import JobState, Ledger
from dicom_node.observability import audit, metrics
from dicom_node.observability.ledger_audit import CURSOR_FILE, LedgerAuditor
from dicom_node.sender import Sender

CT = "1.2.840.10008.5.1.4.1.1.2"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def trail(tmp_path: Path):
    """Audit records written during the test (``trail()`` reads them)."""
    path = audit.configure(tmp_path)
    yield lambda: read(path)
    audit.close()


def test_lines_are_json_with_time_and_event_and_phi_fields_are_dropped(trail, caplog):
    audit.record("login", token_name="night-admin", peer="127.0.0.1:5511", ok=True, detail=None)
    audit.record("dashboard_action", action="retry", job=7, patient_name="Doe^Jane", PatientID="12345",
                 accession_number="A1", birth_date="19500101", series_uid="1.2.3")
    first, second = trail()
    assert ISO.match(first["time"]) and first["event"] == "login"
    assert first == {"time": first["time"], "event": "login", "token_name": "night-admin", "peer": "127.0.0.1:5511",
                     "ok": True}  # None values are left out
    assert second == {"time": second["time"], "event": "dashboard_action", "action": "retry", "job": 7,
                      "series_uid": "1.2.3"}
    assert "Doe" not in caplog.text and "12345" not in caplog.text  # the drop is logged by key only
    assert sorted(r.field for r in caplog.records) == ["PatientID", "accession_number", "birth_date", "patient_name"]


def test_rotation_keeps_the_configured_number_of_files(tmp_path):
    path = audit.configure(tmp_path, max_bytes=2000, backup_count=2)
    try:
        for n in range(200):
            audit.record("series_received", assoc="a" * 32, series_uid=f"1.2.826.0.{n}", instances=n)
    finally:
        audit.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    kept = [r for name in reversed(names) for r in read(path.parent / name)]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    numbers = [r["instances"] for r in kept]
    assert numbers == list(range(numbers[0], 200)), "rotation must keep the newest records, in order"


def test_records_are_dropped_when_no_trail_is_configured(tmp_path):
    audit.close()
    audit.record("login", token_name="x")  # neither raises nor writes anywhere
    assert not (tmp_path / "audit").exists()


@pytest.mark.network
def test_a_real_association_is_audited_without_phi(node_factory, series_factory, dcmtk, no_phi):
    node = node_factory(allowed_calling_aets=["DCMTK_SCU"])
    files = series_factory("audited", n_slices=5)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    store = subprocess.run([dcmtk("storescu"), "-aet", "DCMTK_SCU", "-aec", "DURAL_AI", "127.0.0.1", str(node.port),
                            *map(str, files)], capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stdout + store.stderr
    bad = subprocess.run([dcmtk("echoscu"), "-aet", "BAD_SCU", "-aec", "DURAL_AI", "127.0.0.1", str(node.port)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    ledger = node.ledger()
    deadline = time.time() + 30
    while not ledger.jobs([JobState.NOT_ANALYSED]):  # five slices: below series.min_slices
        assert time.time() < deadline, f"no decision: {ledger.jobs()}"
        time.sleep(0.1)
    assert node.stop() == 0
    path = node.data_dir / "audit" / "audit.jsonl"
    records = read(path)
    by_event: dict[str, list[dict]] = {}
    for r in records:
        by_event.setdefault(r["event"], []).append(r)

    opened, = by_event["association_opened"]
    assert opened["calling_ae"] == "DCMTK_SCU" and opened["called_ae"] == "DURAL_AI"
    assert opened["peer"].startswith("127.0.0.1:")
    received, = by_event["series_received"]
    assert received == {**received, "assoc": opened["assoc"], "study_uid": ds.StudyInstanceUID,
                        "series_uid": ds.SeriesInstanceUID, "instances": 5}
    closed, = by_event["association_closed"]
    assert closed["assoc"] == opened["assoc"] and closed["how"] == "released" and closed["instances"] == 5
    rejected, = by_event["association_rejected"]
    assert rejected["calling_ae"] == "BAD_SCU" and "allowed_calling_aets" in rejected["reason"]
    decision, = by_event["job_decision"]
    assert decision["decision"] == "not_analysed" and decision["series_uid"] == ds.SeriesInstanceUID
    assert decision["reason"] and decision["instances"] == 5
    events = [r["event"] for r in records]
    assert events.index("series_received") < events.index("association_closed") < events.index("job_decision")
    no_phi(path.read_text())


def _job_through(ledger: Ledger, n: int) -> int:
    series = f"1.2.826.0.5.{n}"
    ledger.record_instance(f"{series}.1", "1.2.826.0.5", series, CT, f"/x/{n}", None)
    job = ledger.jobs()[-1].id
    ledger.transition(job, JobState.COMPLETE, detail="complete: quiet", lane="stat")
    ledger.mark_submitted(job, f"task{n}", "stat")
    findings = {"SDH": {"present": True, "volume_ml": 12.5, "max_thickness_mm": 8.1, "laterality": "left",
                        "confidence": 0.9, "label": 1, "voxel_count": 9000, "name": "SDH"}}
    ledger.transition(job, JobState.DONE, result={"state": "done", "files": [{"type": "sr", "path": "r"}],
                                                  "findings": findings, "worker": "w1@host:12",
                                                  "model": {"name": "m", "version": "3.0", "weights_sha256": "ab"}})
    ledger.set_triage(job, "critical")
    return job


def test_job_decisions_and_results_come_from_the_ledger_once(tmp_path, trail):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    auditor = LedgerAuditor(ledger, tmp_path)
    job = _job_through(ledger, 1)
    assert auditor.run_once() == 3
    decision, queued, result = trail()
    assert decision == {**decision, "event": "job_decision", "job": job, "decision": "eligible", "lane": "stat",
                        "series_uid": "1.2.826.0.5.1", "study_uid": "1.2.826.0.5"}
    assert queued["event"] == "job_queued" and queued["job"] == job
    assert result == {**result, "event": "job_result", "state": "done", "triage": "critical", "files": 1,
                      "model_version": "3.0", "worker": "w1@host:12"}
    assert result["findings"] == {"SDH": {"present": True, "volume_ml": 12.5, "max_thickness_mm": 8.1,
                                          "laterality": "left", "confidence": 0.9}}
    assert auditor.run_once() == 0
    assert (tmp_path / "audit" / CURSOR_FILE).read_text().strip() == str(ledger.last_event_id())
    # A restarted node goes on from the saved cursor: nothing twice, nothing lost.
    _job_through(ledger, 2)
    assert LedgerAuditor(ledger, tmp_path).run_once() == 3
    assert [r["event"] for r in trail()].count("job_result") == 2


def test_a_new_trail_starts_at_the_ledgers_end(tmp_path, trail):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    _job_through(ledger, 1)
    auditor = LedgerAuditor(ledger, tmp_path / "fresh")
    assert auditor.run_once() == 0 and trail() == []
    series = "1.2.826.0.5.1"
    ledger.record_instance(f"{series}.2", "1.2.826.0.5", series, CT, "/x/b", None)  # the series grows
    assert auditor.run_once() == 1  # the analysed job is superseded; the new job's arrival is series_received's
    superseded, = trail()
    assert superseded["event"] == "job_superseded" and superseded["job"] == 1
    ledger.transition(ledger.jobs()[-1].id, JobState.NOT_ANALYSED, reason="too few slices")
    assert auditor.run_once() == 1
    assert trail()[-1]["decision"] == "not_analysed" and trail()[-1]["reason"] == "too few slices"


def test_delivery_attempts_are_audited_and_counted(tmp_path, trail):
    cfg = parse_config({"node": {"data_dir": str(tmp_path / "data")},
                        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                                          "max_attempts": 2, "backoff_base_s": 1}]})
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job = _job_through(ledger, 1)
    ledger.add_deliveries(job, ["pacs"])
    statuses = iter([[0xA700], [0xA700]])
    sender = Sender(cfg, ledger, send=lambda dest, paths: next(statuses))
    before = {r: metrics.REGISTRY.get_sample_value("dural_delivery_attempts_total",
                                                   {"destination": "pacs", "kind": "dicom", "result": r}) or 0
              for r in ("retry", "dead")}
    sender.attempt(ledger.deliveries(job)[0])
    sender.attempt(ledger.deliveries(job)[0])
    retry, dead = [r for r in trail() if r["event"] == "delivery"]
    assert retry == {**retry, "job": job, "destination": "pacs", "kind": "dicom", "result": "retry", "attempt": 1}
    assert dead["result"] == "dead" and dead["attempt"] == 2 and "0xA700" in dead["error"]
    for result in ("retry", "dead"):
        now = metrics.REGISTRY.get_sample_value("dural_delivery_attempts_total",
                                                {"destination": "pacs", "kind": "dicom", "result": result})
        assert now - before[result] == 1


@pytest.mark.network
def test_notifications_are_audited_timed_and_free_of_phi(tmp_path, trail, series_factory, monkeypatch, no_phi):
    from dicom_node.notify import queue_notifications
    from tests.dicom_node.test_notify import CRITICAL, SECRET, add_result, deliver, make_cfg
    from tests.notify_peers import MllpListener, WebhookReceiver

    monkeypatch.setenv("DURAL_WEBHOOK_SECRET", SECRET)
    with MllpListener() as ris, WebhookReceiver(SECRET.encode(), statuses=[503]) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        metrics.bind_ledger(ledger)
        try:
            job = add_result(ledger, series_factory("notified"), CRITICAL)
            assert sorted(queue_notifications(cfg, ledger, job)) == ["hl7:ris", "webhook:oncall"]
            deliver(cfg, ledger, rounds=2)  # the webhook answers 503 once, then 200
            assert ledger.job(job).state == JobState.DELIVERED
            body, _ = metrics.exposition()
        finally:
            metrics.bind_ledger(None)
    sent = [(r["destination"], r["kind"], r["result"], r["attempt"]) for r in trail() if r["event"] == "notification"]
    assert sorted(sent) == [("hl7:ris", "hl7", "sent", 1), ("webhook:oncall", "webhook", "retry", 1),
                            ("webhook:oncall", "webhook", "sent", 2)]
    assert 'dural_stage_duration_seconds_count{stage="notification"} 1.0' in body.decode()
    assert 'dural_stage_duration_seconds_count{stage="sending"} 0.0' in body.decode()  # no DICOM destination
    no_phi((tmp_path / "audit" / "audit.jsonl").read_text())
