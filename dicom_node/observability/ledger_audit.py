"""Job decisions and results in the audit trail, read from the ledger's event log.

Every job state change is an event in the ledger, whichever process made it (the node's
assembler and scheduler, a ``dicom-node retry``). :class:`LedgerAuditor` runs in the node's loop
and turns the events added since its last pass into audit records:

=================  =========================================================================
event              audit record
=================  =========================================================================
complete           ``job_decision`` (decision ``eligible``, lane) or ``job_requeued``
not_analysed       ``job_decision`` (decision ``not_analysed``, reason)
queued             ``job_queued`` (lane)
done, failed       ``job_result`` (state, fail stage, reason, findings, model, triage)
delivered          ``job_delivered``
superseded         ``job_superseded``
=================  =========================================================================

The id of the last event written is kept in ``audit/ledger-cursor`` (written after the records,
so a crash repeats a few records rather than losing any). A node starting without that file
begins at the ledger's current end: the trail starts when auditing started.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.observability import audit

if TYPE_CHECKING:
    from dicom_node.ledger import Ledger

__all__ = ["CURSOR_FILE", "LedgerAuditor", "audit_fields"]

logger = logging.getLogger(__name__)

CURSOR_FILE = "ledger-cursor"
_EVENTS_PER_PASS = 1000


def _findings(outcome: dict[str, Any]) -> dict[str, Any] | None:
    findings = outcome.get("findings")
    if not isinstance(findings, dict) or not findings:
        return None
    keep = ("present", "volume_ml", "max_thickness_mm", "laterality", "confidence")
    return {name: {k: f.get(k) for k in keep if k in f} for name, f in findings.items() if isinstance(f, dict)}


def audit_fields(row: sqlite3.Row) -> tuple[str, dict[str, Any]] | None:
    """The audit record for one row of ``Ledger.events_after``; None for events not audited."""
    state, detail = row["state"], row["detail"]
    base: dict[str, Any] = {"job": row["job_id"], "study_uid": row["job_study_uid"],
                            "series_uid": row["job_series_uid"]}
    if state == "complete":
        if detail and detail.startswith("requeued"):
            return "job_requeued", {**base, "reason": detail}
        return "job_decision", {**base, "decision": "eligible", "lane": row["job_lane"], "detail": detail}
    if state == "not_analysed":
        return "job_decision", {**base, "decision": "not_analysed", "reason": row["job_reason"],
                                "instances": row["job_assessed_instances"], "lane": row["job_lane"]}
    if state == "queued":
        return "job_queued", {**base, "detail": detail}
    if state in ("done", "failed"):
        try:
            outcome = json.loads(row["job_worker_outcome_json"] or "{}") or {}
            files = json.loads(row["job_files_json"]) if row["job_files_json"] else None
        except ValueError:
            outcome, files = {}, None
        model = outcome.get("model") if isinstance(outcome.get("model"), dict) else {}
        return "job_result", {**base, "state": state, "fail_stage": row["job_fail_stage"],
                              "reason": row["job_reason"], "triage": row["job_triage"],
                              "findings": _findings(outcome), "model_version": model.get("version"),
                              "worker": outcome.get("worker"), "detail": detail,
                              "files": len(files) if isinstance(files, list) else None}
    if state == "delivered":
        return "job_delivered", base
    if state == "superseded":
        return "job_superseded", {**base, "detail": detail}
    return None


class LedgerAuditor:
    """Writes audit records for the ledger events added since the last pass.

    Parameters
    ----------
    ledger:
        The node's ledger.
    data_dir:
        The node's data folder; the cursor lives in ``data_dir/audit``.
    """

    def __init__(self, ledger: Ledger, data_dir: str | Path) -> None:
        self.ledger = ledger
        self.cursor_path = Path(data_dir) / audit.AUDIT_DIR / CURSOR_FILE
        self.cursor = self._load_cursor()

    def _load_cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip())
        except FileNotFoundError:
            return self.ledger.last_event_id()
        except ValueError:
            logger.warning("audit cursor unreadable; auditing from the ledger's current end",
                           extra={"path": str(self.cursor_path)})
            return self.ledger.last_event_id()

    def _save_cursor(self) -> None:
        self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{self.cursor}\n")
        os.replace(tmp, self.cursor_path)

    def run_once(self, now: float | None = None) -> int:
        """Audit new events; returns how many records were written."""
        written = 0
        start = self.cursor
        while True:
            rows = self.ledger.events_after(self.cursor, _EVENTS_PER_PASS)
            for row in rows:
                found = audit_fields(row)
                if found is not None:
                    audit.record(found[0], **found[1])
                    written += 1
                self.cursor = int(row["id"])
            if len(rows) < _EVENTS_PER_PASS:
                break
        if self.cursor != start:
            self._save_cursor()
        return written
