"""Notifications end to end through the outbox: a real MLLP listener and a real HTTP receiver
on 127.0.0.1 (``tests/notify_peers.py``), the real ledger and the real sender."""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config import parse_config
from dicom_node.ledger import DeliveryState, JobState, Ledger
from dicom_node.notify import queue_notifications
from dicom_node.notify.hl7 import AckError, parse_ack
from dicom_node.notify.webhook import sign, verify
from dicom_node.sender import Sender
from tests.dicom_node.conftest import PHI
from tests.notify_peers import MllpListener, WebhookReceiver, ack

SECRET = "s3cret-for-tests"
CT = "1.2.840.10008.5.1.4.1.1.2"
ABSENT = {"present": False, "volume_ml": 0.0, "max_thickness_mm": 0.0, "laterality": None}
CRITICAL = {"SDH": {"present": True, "volume_ml": 41.5, "max_thickness_mm": 12.3, "laterality": "left"}, "EDH": ABSENT}
POSITIVE = {"SDH": {"present": True, "volume_ml": 3.2, "max_thickness_mm": 4.0, "laterality": "right"}, "EDH": ABSENT}
NEGATIVE = {"SDH": ABSENT, "EDH": ABSENT}


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURAL_WEBHOOK_SECRET", SECRET)


def make_cfg(tmp_path: Path, *, mllp: int | None = None, hook: str | None = None, on: list[str] | None = None,
             **receiver: Any):
    notify: dict[str, Any] = {"hl7": [], "webhooks": []}
    retry = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 1, **receiver}
    if mllp is not None:
        notify["hl7"].append({"name": "ris", "host": "127.0.0.1", "port": mllp,
                              "on": on or ["critical", "positive", "not_analysed", "failed"], **retry})
    if hook is not None:
        notify["webhooks"].append({"name": "oncall", "url": hook, "secret_env": "DURAL_WEBHOOK_SECRET",
                                   "on": on or ["critical", "positive", "not_analysed", "failed"], **retry})
    return parse_config({"node": {"data_dir": str(tmp_path / "data")}, "notify": notify})


def add_result(ledger: Ledger, paths: list[Path], findings: dict[str, Any], state: str = "done",
               reason: str | None = None, caveat: str | None = None) -> int:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, CT, path, None)
    job_id = ledger.jobs()[-1].id
    files = [{"type": "sr", "sop_instance_uid": f"2.25.{job_id}1", "path": "x/sr.dcm"}]
    if any(f["present"] for f in findings.values()):
        files.append({"type": "seg", "sop_instance_uid": f"2.25.{job_id}2", "path": "x/seg.dcm"})
    result = {"findings": findings, "model": {"name": "csr-unet", "version": "2.1", "weights_sha256": "ab"},
              "files": files, **({"caveat": caveat} if caveat else {})}
    ledger.transition(job_id, JobState(state), result=result, reason=reason)
    return job_id


def deliver(cfg, ledger: Ledger, rounds: int = 1) -> list:
    sender = Sender(cfg, ledger, rng=random.Random(0))
    for _ in range(rounds):
        sender.run_once(time.time() + 3600, wait=True)
    return ledger.deliveries()


def obx(message: Any) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    order = message.oru_r01_patient_result.oru_r01_order_observation
    for group in order.oru_r01_observation:
        code = group.obx.obx_3.to_er7().split("^")[0]
        values.setdefault(code, []).append(group.obx.obx_5.to_er7())
    return values


def test_critical_result_reaches_ris_and_webhook(tmp_path, series_factory, caplog):
    caplog.set_level(logging.INFO)
    paths = series_factory("critical")
    with MllpListener() as ris, WebhookReceiver(SECRET.encode()) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, paths, CRITICAL)
        assert sorted(queue_notifications(cfg, ledger, job_id)) == ["hl7:ris", "webhook:oncall"]
        deliveries = deliver(cfg, ledger)
    assert [d.state for d in deliveries] == [DeliveryState.SENT] * 2 and not ris.invalid
    assert ledger.job(job_id).triage == "critical" and ledger.job(job_id).state == JobState.DELIVERED
    (msg,) = [r.message for r in ris.received]
    pid = msg.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == PHI["PatientID"] and pid.pid_5.to_er7() == PHI["PatientName"]
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.orc.orc_3.to_er7() == order.obr.obr_3.to_er7() == PHI["AccessionNumber"]
    assert order.obr.obr_25.to_er7() == "F" and order.obr.obr_5.to_er7() == "S"
    assert order.oru_r01_timing_qty.tq1.tq1_9.to_er7().startswith("S^")
    values = obx(msg)
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    assert values["110180"] == [study_uid] and values["TRIAGE"][0].startswith("critical")
    assert values["SDH"][0].startswith("Y") and values["EDH"][0].startswith("N")
    assert values["SDH-VOL"] == ["41.5"] and values["SDH-THK"] == ["12.3"] and values["SDH-SIDE"] == ["left"]
    assert values["SR-UID"] == [f"2.25.{job_id}1"] and values["SEG-UID"] == [f"2.25.{job_id}2"]
    (posted,) = hook.received
    assert posted.signature_ok
    doc = posted.doc
    assert doc["triage"] == "critical" and doc["event"] == "result" and doc["accession_number"] == PHI["AccessionNumber"]
    assert doc["study_uid"] == study_uid and doc["findings"]["SDH"]["max_thickness_mm"] == 12.3
    assert doc["model"] == {"name": "csr-unet", "version": "2.1"} and doc["links"]["status"].endswith("/status")
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records
                       if r.levelno >= logging.INFO)
    for value in PHI.values():
        assert value not in logged


def test_negative_notifies_only_receivers_that_ask_for_it(tmp_path, series_factory):
    with MllpListener() as ris, WebhookReceiver(SECRET.encode()) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, series_factory("negative"), NEGATIVE)
        assert queue_notifications(cfg, ledger, job_id) == []
        assert deliver(cfg, ledger) == [] and not ris.received and not hook.received
        assert ledger.job(job_id).triage == "negative"
        cfg2 = make_cfg(tmp_path, hook=hook.url, on=["negative"])
        assert queue_notifications(cfg2, ledger, job_id) == ["webhook:oncall"]


def test_each_result_version_notifies_once(tmp_path, series_factory):
    with MllpListener() as ris, WebhookReceiver(SECRET.encode()) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, series_factory("once"), POSITIVE)
        assert len(queue_notifications(cfg, ledger, job_id)) == 2
        assert queue_notifications(cfg, ledger, job_id) == []
        deliver(cfg, ledger, rounds=3)
    assert len(ris.received) == 1 and len(hook.received) == 1


@pytest.mark.parametrize("answers, error", [
    (["AE", "AE", "AE"], "RIS answered AE: test says no"),
    (["AR", "drop", "AR"], "RIS answered AR: test says no"),
    (["drop", "drop", "drop"], "closed the connection without an ACK"),
    (["wrong", "wrong", "wrong"], "ACK is for message 'other'"),
    (["hang", "AE", "hang"], "no ACK within"),
])
def test_ris_refusals_and_timeouts_are_retried_then_dead_lettered(tmp_path, series_factory, answers, error):
    with MllpListener(answers, hang_s=1.5) as ris:
        cfg = make_cfg(tmp_path, mllp=ris.port, timeout_s=0.5)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, series_factory("refused"), CRITICAL)
        queue_notifications(cfg, ledger, job_id)
        (delivery,) = deliver(cfg, ledger, rounds=4)
        assert delivery.state == DeliveryState.DEAD and delivery.attempts == 3 and error in delivery.last_error
        assert ris.wait_received(3) == 3
        assert ledger.retry_dead(job_id) == 1  # `dicom-node retry`
        (delivery,) = deliver(cfg, ledger)
    assert delivery.state == DeliveryState.SENT and len(ris.received) == 4
    controls = {r.message.msh.msh_10.to_er7() for r in ris.received}
    assert len(controls) == 1  # every retry is the same message


def test_webhook_5xx_is_retried_and_a_bad_secret_is_dead_at_once(tmp_path, series_factory, monkeypatch):
    with WebhookReceiver(SECRET.encode(), statuses=[500, 503]) as hook:
        cfg = make_cfg(tmp_path, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, series_factory("hook5xx"), POSITIVE)
        queue_notifications(cfg, ledger, job_id)
        (delivery,) = deliver(cfg, ledger, rounds=3)
        assert delivery.state == DeliveryState.SENT and delivery.attempts == 3 and len(hook.received) == 3
        assert len({h.doc["id"] for h in hook.received}) == 1
        monkeypatch.setenv("DURAL_WEBHOOK_SECRET", "not-the-shared-one")
        second = add_result(ledger, series_factory("hook401"), POSITIVE)
        queue_notifications(cfg, ledger, second)
        (delivery,) = [d for d in deliver(cfg, ledger) if d.job_id == second]
    assert delivery.state == DeliveryState.DEAD and delivery.attempts == 1 and "HTTP 401" in delivery.last_error


def test_missing_secret_is_dead_with_the_variable_named(tmp_path, series_factory, monkeypatch):
    monkeypatch.delenv("DURAL_WEBHOOK_SECRET")
    cfg = make_cfg(tmp_path, hook="http://127.0.0.1:9/hook")
    ledger = Ledger(cfg.data_dir / "ledger.sqlite")
    queue_notifications(cfg, ledger, add_result(ledger, series_factory("nosecret"), CRITICAL))
    (delivery,) = deliver(cfg, ledger)
    assert delivery.state == DeliveryState.DEAD and "DURAL_WEBHOOK_SECRET" in delivery.last_error


def test_later_lower_result_goes_out_as_a_correction_keeping_the_priority(tmp_path, series_factory):
    paths = series_factory("corrected", n_slices=7)
    with MllpListener() as ris, WebhookReceiver(SECRET.encode()) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        first = add_result(ledger, paths[:6], CRITICAL)
        queue_notifications(cfg, ledger, first)
        deliver(cfg, ledger)
        second = add_result(ledger, paths[6:], NEGATIVE)  # one more instance: a new result version
        assert second != first and ledger.job(second).series_uid == ledger.job(first).series_uid
        assert sorted(queue_notifications(cfg, ledger, second)) == ["hl7:ris", "webhook:oncall"]
        deliver(cfg, ledger)
    assert len(ris.received) == 2 and len(hook.received) == 2
    order = ris.received[1].message.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.to_er7() == "C" and order.obr.obr_5.to_er7() == "S"
    assert obx(ris.received[1].message)["TRIAGE"][0].startswith("negative")
    doc = hook.received[1].doc
    assert doc["event"] == "correction" and doc["triage"] == "negative"
    assert doc["previous_triage"] == "critical" and doc["priority_category"] == "critical"


def test_not_analysed_result_says_why(tmp_path, series_factory):
    with MllpListener() as ris:
        cfg = make_cfg(tmp_path, mllp=ris.port)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        job_id = add_result(ledger, series_factory("na"), {}, state="not_analysed", reason="only 6 slices")
        queue_notifications(cfg, ledger, job_id)
        deliver(cfg, ledger)
    values = obx(ris.received[0].message)
    assert values["TRIAGE"][0].startswith("not_analysed") and values["REASON"] == ["only 6 slices"]


def test_result_of_an_interrupted_transfer_says_so(tmp_path, series_factory):
    caveat = "Transfer interrupted: the association sending this series was aborted after 12 instance(s)."
    with MllpListener() as ris, WebhookReceiver(SECRET.encode()) as hook:
        cfg = make_cfg(tmp_path, mllp=ris.port, hook=hook.url)
        ledger = Ledger(cfg.data_dir / "ledger.sqlite")
        cut = add_result(ledger, series_factory("cut"), POSITIVE, caveat=caveat)
        whole = add_result(ledger, series_factory("whole"), POSITIVE)
        for job_id in (cut, whole):
            queue_notifications(cfg, ledger, job_id)
        deliver(cfg, ledger)
    by_job = {int(r.message.msh.msh_10.to_er7()[2:].split("-")[0]): obx(r.message) for r in ris.received}
    assert by_job[cut]["CAVEAT"] == [caveat] and "CAVEAT" not in by_job[whole]
    assert {h.doc["job_id"]: h.doc["caveat"] for h in hook.received} == {cut: caveat, whole: None}


@pytest.mark.parametrize("reply", ["", "MSH|^~\\&|x", "not hl7 at all"])
def test_parse_ack_refuses_what_is_no_ack(reply):
    with pytest.raises(AckError):
        parse_ack(reply, "DN1-1")


def test_parse_ack_accepts_aa_and_signature_round_trip():
    assert parse_ack(ack("DN1-1", "AA"), "DN1-1") == "AA"
    assert verify(b"k", b"{}", sign(b"k", b"{}")) and not verify(b"k", b"{}", sign(b"x", b"{}"))
