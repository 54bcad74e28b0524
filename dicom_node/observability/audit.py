"""The audit trail: append-only JSON lines in ``<data_dir>/audit/audit.jsonl``, rotated.

``record(event, **fields)`` appends one line::

    {"time": "2026-11-30T03:12:09.412Z", "event": "association_opened", "assoc": "9f1c...", ...}

Fields carry UIDs, AE titles, peer addresses, job ids, counts, states and reasons: never patient
names, patient IDs, birth dates or accession numbers. A field whose name says it holds one of
those is dropped (and the drop logged, without its value), so a caller's mistake cannot put PHI
into the trail. The events and their fields are listed in ``docs/operations.md``.

Only the process that serves the node writes the trail (:func:`configure` is called by
``dicom-node serve``): :class:`logging.handlers.RotatingFileHandler` rotates safely within one
process only. Before :func:`configure`, and after :func:`close`, records are dropped.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import re
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["AUDIT_DIR", "AUDIT_FILE", "close", "configure", "record"]

logger = logging.getLogger(__name__)

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"
#: Field names that would hold PHI (PS3.15 E.1 identifiers the project never writes to a log).
_PHI_FIELD = re.compile(r"patient|accession|birth|(^|_)name$", re.IGNORECASE)
#: Field names that contain "name" but hold no PHI.
_ALLOWED_NAMES = frozenset({"token_name", "destination_name", "model_name", "user_name"})

_lock = threading.Lock()
_handler: logging.handlers.RotatingFileHandler | None = None


def configure(data_dir: str | Path, max_bytes: int = 20_000_000, backup_count: int = 10) -> Path:
    """Start writing the audit trail under ``data_dir/audit``; returns the file's path.

    Parameters
    ----------
    data_dir:
        The node's ``node.data_dir``.
    max_bytes:
        Size at which ``audit.jsonl`` is renamed ``audit.jsonl.1`` (older ones shift up).
    backup_count:
        Rotated files kept; the oldest beyond that is deleted.
    """
    if max_bytes < 1 or backup_count < 1:
        raise ValueError(f"max_bytes and backup_count must be at least 1; got {max_bytes}, {backup_count}")
    folder = Path(data_dir) / AUDIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / AUDIT_FILE
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    with _lock:
        global _handler
        if _handler is not None:
            _handler.close()
        _handler = handler
    return path


def close() -> None:
    """Stop writing (the node stopped); later records are dropped."""
    global _handler
    with _lock:
        if _handler is not None:
            _handler.close()
            _handler = None


def _timestamp(now: float) -> str:
    whole = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((now - whole) * 1000):03d}Z"


def record(event: str, **fields: Any) -> None:
    """Append one audit record; never raises (a failing write is logged).

    Parameters
    ----------
    event:
        What happened, e.g. ``association_opened``, ``job_result``, ``login``.
    **fields:
        JSON-serialisable details (others are written with ``str``); None values are left out.
    """
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        if _PHI_FIELD.search(key) and key not in _ALLOWED_NAMES:
            logger.error("audit: dropped a field that may hold PHI", extra={"audit_event": event, "field": key})
            continue
        if value is not None:
            clean[key] = value
    try:
        line = json.dumps({"time": _timestamp(time.time()), "event": event, **clean}, default=str,
                          ensure_ascii=False)
    except (TypeError, ValueError):
        logger.exception("audit: record not serialisable", extra={"audit_event": event})
        return
    with _lock:
        if _handler is None:
            return
        try:
            _handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        except Exception:  # noqa: BLE001 - auditing must never break what is being audited
            logger.exception("audit: cannot write the audit trail")
