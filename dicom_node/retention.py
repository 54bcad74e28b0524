"""Data retention: purge spool and result files once delivered, oldest first."""
from __future__ import annotations

from typing import Any

__all__ = ["retention_status"]

_status: dict[str, Any] = {"last_run_at": None, "files_purged": 0, "bytes_freed": 0}


def retention_status() -> dict[str, Any]:
    """Last run time (epoch seconds or None), files purged and bytes freed since start."""
    return dict(_status)
