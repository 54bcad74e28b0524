"""The audit trail: append-only JSON lines in ``<data_dir>/audit/audit.jsonl``, rotated.

``record(event, **fields)`` writes one line ``{"ts": ..., "event": ..., <fields>}``. Fields carry
UIDs, AE titles, addresses, job ids and counts, never patient names, IDs, birth dates or
accession numbers. Before :func:`configure` is called, records are dropped.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["configure", "record"]

_lock = threading.Lock()
_handler: logging.Handler | None = None


def configure(data_dir: Path, max_bytes: int = 10_000_000, backup_count: int = 10) -> Path:
    """Start writing audit records under ``data_dir/audit``; returns the file's path."""
    global _handler
    folder = Path(data_dir) / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.jsonl"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    with _lock:
        if _handler is not None:
            _handler.close()
        _handler = handler
    return path


def record(event: str, **fields: Any) -> None:
    """Append one audit record; never raises."""
    line = json.dumps({"ts": time.time(), "event": event, **fields}, default=str, sort_keys=False)
    with _lock:
        if _handler is None:
            return
        _handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
