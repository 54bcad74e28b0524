"""Outage tracking (dicom_node.outage): silent while short, one ERROR when long, recovery logged."""
from __future__ import annotations

import logging

from dicom_node.outage import Outage


def test_alerts_once_after_threshold_and_clears_on_recovery(caplog) -> None:
    outage = Outage("queue broker", alert_after_s=60)
    caplog.set_level(logging.INFO, logger="dicom_node.outage")
    outage.failed(100.0, ConnectionError("refused"))
    outage.failed(150.0, ConnectionError("refused"))
    assert outage.problem(150.0) is None and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    outage.failed(160.0, ConnectionError("still refused"))
    outage.failed(170.0, ConnectionError("still refused"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unreachable" in errors[0].getMessage()
    assert outage.problem(175.0) == "queue broker unreachable for 75 s: still refused"
    outage.ok(180.0)
    assert outage.problem(180.0) is None
    assert "reachable again" in caplog.records[-1].getMessage()


def test_a_new_outage_starts_its_own_clock() -> None:
    outage = Outage("queue broker", alert_after_s=60)
    outage.failed(0.0, "down")
    outage.ok(10.0)
    outage.failed(100.0, "down")
    assert outage.problem(159.0) is None and outage.problem(160.0) is not None
