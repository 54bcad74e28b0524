"""The status document that ``dicom-node status`` prints and ``GET /status`` serves.

:func:`status_snapshot` builds one JSON-able dict from the ledger, the node's state file and the
disk, so that ``GET /status`` and ``dicom-node status`` (which runs when the node is down) show
the same thing. It holds UIDs, states, reasons and timestamps, never patient data. The HTTP side
(``/healthz``, ``/readyz``, ``/status``, the dashboard and ``/api/v1``) is ``dicom_node.console``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dicom_node.atomic import write_json_atomic
from dicom_node.config import Config
from dicom_node.ledger import DeliveryState, Job, JobState, Ledger, OPEN_STATES
from dicom_node.names import NODE_STATE_FILE

#: The node state file counts as current while younger than this (it is written every loop pass).
STATE_STALE_S = 30.0


def iso(ts: float | None) -> str | None:
    """UTC ISO-8601 with seconds, or None."""
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def read_node_state(data_dir: Path) -> dict[str, Any] | None:
    """The last state the running node wrote, or None when there is none (or it is corrupt)."""
    try:
        return json.loads((data_dir / NODE_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_node_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically, so a reader never sees half of it.

    Not fsynced: it is rewritten every loop pass and describes only the running process.
    """
    write_json_atomic(data_dir / NODE_STATE_FILE, state, sync=False)


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job(job: Job, now: float) -> dict[str, Any]:
    return {"job": job.id, "series_uid": job.series_uid, "study_uid": job.study_uid, "state": job.state.value,
            "fail_stage": job.fail_stage, "reason": job.reason, "submissions": job.submissions,
            "superseded_by": job.superseded_by, "updated_at": iso(job.updated_at),
            "age_s": round(now - job.created_at, 1)}


def status_snapshot(ledger: Ledger, cfg: Config, now: float, limit: int = 50) -> dict[str, Any]:
    """Everything ``dicom-node status`` shows, as one JSON-able dict.

    Parameters
    ----------
    ledger:
        The node's ledger (read only here).
    cfg:
        The configuration (data folder, disk threshold).
    now:
        Current time, seconds since the epoch.
    limit:
        At most this many jobs per list (newest first); totals are always complete.
    """
    state = read_node_state(cfg.data_dir) or {}
    fresh = state.get("updated_at") is not None and now - float(state["updated_at"]) < STATE_STALE_S
    running = bool(state) and not state.get("stopped_at") and fresh and _pid_alive(state.get("pid"))
    free_gb = shutil.disk_usage(cfg.data_dir).free / 1e9
    receiver = {**ledger.receiver_summary(), **(state.get("receiver") or {})}
    if not running:
        # The ledger still lists associations a killed node never closed; none can be open now.
        receiver["open_associations"] = 0
    receiver.update({
        "last_instance_at": iso(receiver.get("last_instance_at")),
        "disk_free_gb": round(free_gb, 2),
        "min_free_disk_gb": cfg.node.min_free_disk_gb,
        # What the SCP decides on every C-STORE, computed here too so it shows when the node is down.
        "low_disk_refusal": free_gb < cfg.node.min_free_disk_gb,
    })
    counts = ledger.counts()
    dead = ledger.deliveries(states=[DeliveryState.DEAD])
    return {
        "generated_at": iso(now),
        "node": {"running": running, "pid": state.get("pid"), "started_at": iso(state.get("started_at")),
                 "updated_at": iso(state.get("updated_at")), "stopped_at": iso(state.get("stopped_at")),
                 "stages": state.get("stages", {}), "problems": state.get("problems", []) if running else [],
                 "ae_title": cfg.node.ae_title, "port": cfg.node.port},
        "receiver": receiver,
        "series": ledger.series_count(),
        "jobs": {s.value: counts.get(s.value, 0) for s in JobState},
        "open": [_job(j, now) for j in ledger.recent_jobs(OPEN_STATES, limit)],
        "failed": [_job(j, now) for j in ledger.recent_jobs([JobState.FAILED], limit)],
        "not_analysed": [_job(j, now) for j in ledger.recent_jobs([JobState.NOT_ANALYSED], limit)],
        "deliveries": {"pending": len(ledger.deliveries(states=[DeliveryState.PENDING])), "dead": len(dead)},
        "dead_letters": [{"delivery": d.id, "job": d.job_id, "destination": d.destination, "attempts": d.attempts,
                          "last_error": d.last_error, "updated_at": iso(d.updated_at)} for d in dead[-limit:]],
    }
