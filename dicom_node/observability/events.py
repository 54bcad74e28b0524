"""What the receiver and the sender report as it happens: metrics counters and audit records.

One call per occurrence keeps the receiver's and sender's code to a line each. Instances are
not audited one by one: the receiver counts them per association and series, and when the
association ends one ``series_received`` record per series says how many came.
"""
from __future__ import annotations

import threading
import time
from collections import Counter as Tally

from dicom_node.observability import audit, metrics

__all__ = [
    "association_closed", "association_opened", "association_rejected", "delivery_attempted",
    "instance_refused", "instance_stored",
]

_lock = threading.Lock()
#: assoc id -> (opened at, {(study uid, series uid): instances}); emptied when it closes.
_open: dict[str, tuple[float, Tally[tuple[str, str]]]] = {}


def association_opened(assoc_id: str, calling_ae: str, called_ae: str, peer: str) -> None:
    metrics.ASSOCIATIONS.labels("accepted").inc()
    with _lock:
        _open[assoc_id] = (time.time(), Tally())
    audit.record("association_opened", assoc=assoc_id, calling_ae=calling_ae, called_ae=called_ae, peer=peer)


def association_rejected(calling_ae: str, peer: str, reason: str) -> None:
    metrics.ASSOCIATIONS.labels("rejected").inc()
    audit.record("association_rejected", calling_ae=calling_ae, peer=peer, reason=reason)


def instance_stored(assoc_id: str | None, study_uid: str, series_uid: str) -> None:
    metrics.INSTANCES_RECEIVED.inc()
    if assoc_id is None:
        return
    with _lock:
        entry = _open.get(assoc_id)
        if entry is not None:
            entry[1][(study_uid, series_uid)] += 1


def instance_refused(reason: str, assoc_id: str | None, sop_uid: str, status: int) -> None:
    """``reason``: one of :data:`metrics.REFUSAL_REASONS`."""
    metrics.INSTANCES_REFUSED.labels(reason).inc()
    audit.record("instance_refused", assoc=assoc_id, sop_uid=sop_uid or None, reason=reason,
                 status=f"0x{status:04X}")


def association_closed(assoc_id: str, how: str) -> None:
    """``how``: ``released`` or ``aborted``. Writes the association's receptions first."""
    with _lock:
        opened_at, series = _open.pop(assoc_id, (None, Tally()))
    for (study_uid, series_uid), count in sorted(series.items()):
        audit.record("series_received", assoc=assoc_id, study_uid=study_uid, series_uid=series_uid,
                     instances=count)
    audit.record("association_closed", assoc=assoc_id, how=how, instances=sum(series.values()),
                 seconds=None if opened_at is None else round(time.time() - opened_at, 3))


def delivery_attempted(job_id: int, destination: str, kind: str, result: str, attempt: int,
                       error: str | None = None) -> None:
    """``kind``: dicom, hl7 or webhook; ``result``: sent, retry or dead."""
    metrics.DELIVERY_ATTEMPTS.labels(destination, kind, result).inc()
    audit.record("delivery" if kind == "dicom" else "notification", job=job_id, destination=destination,
                 kind=kind, result=result, attempt=attempt, error=error)
