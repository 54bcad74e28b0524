"""What a notification says: the frozen payload, the job's result and the source header.

The PHI a receiver needs (patient ID and name, accession number) is read from the series' own
header when the notification is sent: the ledger keeps none, and nothing here logs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.ledger import Delivery, Job, Ledger

__all__ = ["CLASSES", "Notice", "NoticeError", "build_notice"]

#: Finding classes, in the order messages list them.
CLASSES = ("SDH", "EDH")


class NoticeError(RuntimeError):
    """The notification cannot be put together (e.g. the source header is gone)."""


@dataclass(frozen=True)
class Notice:
    """Everything an HL7 or webhook message is built from.

    Attributes
    ----------
    job_id, delivery_id:
        The result version and the outbox row (the message control ID derives from both).
    category, priority_category:
        The result's triage category, and the one its priority follows (never lower than a
        category sent before for the series).
    correction, previous_category:
        Whether this replaces an earlier result sent to the same receiver, and its category.
    state, reason:
        ``done``, ``not_analysed`` or ``failed``, and why there is no result.
    caveat:
        For a result: what limits it (its series' transfer was interrupted), or None.
    findings:
        Per class: ``present``, ``volume_ml``, ``max_thickness_mm``, ``laterality``.
    model:
        Name and version of the model that ran.
    objects:
        SOP Instance UIDs of the result objects by type (``sr``, ``seg``).
    patient_id, patient_name, accession_number:
        From the source header (PHI; never logged).
    """

    job_id: int
    delivery_id: int
    study_uid: str
    series_uid: str
    category: str
    priority_category: str
    correction: bool
    previous_category: str | None
    state: str
    reason: str | None
    caveat: str | None = None
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""

    @property
    def control_id(self) -> str:
        """MSH-10 and the webhook's ``id``: the same on every retry, so a receiver can drop a
        duplicate (20 characters at most, as ST in MSH-10 allows)."""
        return f"DN{self.job_id}-{self.delivery_id}"[:20]


def _source_header(ledger: Ledger, job: Job, data_dir: Path) -> pydicom.Dataset:
    for path in ledger.instance_paths(job.id):
        full = path if path.is_absolute() else data_dir / path
        try:
            return pydicom.dcmread(full, stop_before_pixels=True, specific_tags=[
                "PatientID", "PatientName", "AccessionNumber"])
        except Exception:  # noqa: BLE001 - try the next instance; the reason is raised below
            continue
    raise NoticeError(f"no readable source instance of job {job.id}; the notification needs its header")


def build_notice(ledger: Ledger, delivery: Delivery, data_dir: str | Path) -> Notice:
    """The notice for one queued notification.

    Raises
    ------
    NoticeError
        When the delivery is not a notification or no source instance can be read.
    """
    if not delivery.payload or "category" not in delivery.payload:
        raise NoticeError(f"delivery {delivery.id} is not a notification (no payload)")
    job = ledger.job(delivery.job_id)
    header = _source_header(ledger, job, Path(data_dir))
    outcome = job.worker_outcome or {}
    findings = {}
    for name in CLASSES:
        item = (outcome.get("findings") or {}).get(name)
        if item is not None:
            findings[name] = {"present": bool(item.get("present")), "volume_ml": round(float(item.get("volume_ml") or 0), 2),
                              "max_thickness_mm": round(float(item.get("max_thickness_mm") or 0), 1),
                              "laterality": item.get("laterality")}
    model = {k: v for k, v in (outcome.get("model") or {}).items() if k in ("name", "version")}
    objects = {f["type"]: f["sop_instance_uid"] for f in job.files or [] if f.get("type") in ("sr", "seg")}
    payload = delivery.payload
    state = job.outcome or job.state.value
    return Notice(job_id=job.id, delivery_id=delivery.id, study_uid=job.study_uid, series_uid=job.series_uid,
                  category=payload["category"], priority_category=payload.get("priority_category", payload["category"]),
                  correction=bool(payload.get("correction")), previous_category=payload.get("previous_category"),
                  state=state, reason=job.reason if state != "done" else None,
                  caveat=outcome.get("caveat") if state == "done" else None, findings=findings, model=model,
                  objects=objects, patient_id=str(header.get("PatientID", "") or ""),
                  patient_name=str(header.get("PatientName", "") or ""),
                  accession_number=str(header.get("AccessionNumber", "") or ""))
