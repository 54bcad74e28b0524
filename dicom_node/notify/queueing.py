"""Which receivers hear of a result, and what it says about what they heard before.

A receiver gets a result when its category is in the receiver's ``on`` list, or when it was
told about an earlier result of the same series: then the new one goes out as a correction,
whatever its category, so that a receiver is never left believing a result that has changed. The
priority sent is the highest of the new category and every category sent before for the series,
so a correction never silently lowers it (a reader must look at the correction to do that).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from dicom_node.config import Config
from dicom_node.ledger import Job, JobState, Ledger
from dicom_node.triage import result_category, severity
from dicom_node.worklist_config import Hl7Endpoint, Webhook

__all__ = ["destination_name", "notice_payload", "queue_notifications"]

logger = logging.getLogger(__name__)

#: Job states whose result is notified.
NOTIFIED_STATES = (JobState.DONE, JobState.FAILED, JobState.NOT_ANALYSED, JobState.DELIVERED)


def destination_name(kind: str, name: str) -> str:
    """``hl7:ris``: the outbox's destination for a receiver. ``:`` cannot occur in the name of
    a DICOM destination, so the two never collide."""
    return f"{kind}:{name}"


def job_category(cfg: Config, job: Job) -> str:
    """The triage category of a job's result with the configured critical thresholds."""
    state = (job.outcome or job.state.value) if job.state == JobState.DELIVERED else job.state.value
    findings = {name: _Finding(f) for name, f in ((job.worker_outcome or {}).get("findings") or {}).items()}
    critical = cfg.triage.critical
    return result_category(state, findings, sdh_thickness_mm=critical.sdh_thickness_mm,
                           edh_volume_ml=critical.edh_volume_ml)


class _Finding:
    """The three attributes the triage rule reads, from a finding's JSON form."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.present = bool(data.get("present"))
        self.volume_ml = float(data.get("volume_ml") or 0.0)
        self.max_thickness_mm = float(data.get("max_thickness_mm") or 0.0)


def notice_payload(category: str, job: Job, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """The frozen facts of one notification: no PHI, only categories and job numbers.

    ``earlier`` holds the payloads of notifications already sent (or still to be sent) to the
    same receiver for earlier results of the series, oldest first.
    """
    sent = [e["category"] for e in earlier if e.get("category")]
    highest = max([category, *[e.get("priority_category", e["category"]) for e in earlier if e.get("category")]],
                  key=severity)
    return {"category": category, "priority_category": highest, "correction": bool(earlier),
            "previous_category": sent[-1] if sent else None,
            "previous_job": earlier[-1].get("job_id") if earlier else None, "job_id": job.id}


def queue_notifications(cfg: Config, ledger: Ledger, job_id: int, now: float | None = None) -> list[str]:
    """Record the job's triage category and queue its notifications; returns the destinations
    queued now (none again for a job already notified).

    Superseded jobs are not notified: the job that replaced them will be.
    """
    now = now or time.time()
    job = ledger.job(job_id)
    if job.state not in NOTIFIED_STATES or job.superseded_by is not None:
        return []
    category = job_category(cfg, job)
    if job.triage != category:
        ledger.set_triage(job.id, category)
    queued = []
    receivers: list[tuple[str, Hl7Endpoint | Webhook]] = cfg.notify.receivers()
    for kind, receiver in receivers:
        destination = destination_name(kind, receiver.name)
        earlier = [d.payload or {} for d in ledger.earlier_notifications(job.series_uid, destination, job.id)]
        if category not in receiver.on and not earlier:
            continue
        payload = notice_payload(category, job, earlier)
        if ledger.add_notification(job.id, destination, kind, payload, now=now):
            queued.append(destination)
            logger.info("notification queued", extra={"job": job.id, "destination": destination,
                                                      "category": category, "correction": payload["correction"]})
    return queued
