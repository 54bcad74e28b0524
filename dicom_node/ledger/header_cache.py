"""Header summaries the assembler read, one per instance, so each file is parsed once."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dicom_node.ledger.store import Store, no_open_association


class HeaderCache(Store):
    """The ``instance_headers`` table, joined with the instances it describes."""

    def record_header(self, sop_uid: str, summary: dict[str, Any], error: str | None = None,
                      now: float | None = None) -> None:
        """Store the header summary of one instance (``error`` when it could not be read)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO instance_headers VALUES (?,?,?,?)",
                       (sop_uid, now or time.time(), error, json.dumps(summary)))

    def instances_without_header(self, limit: int = 1000,
                                 settled_before: float | None = None) -> list[tuple[str, Path]]:
        """(SOP Instance UID, path) of recorded instances whose header was not read yet.

        With ``settled_before``, only instances of jobs whose last instance arrived at or before
        that time, or whose associations were all released: series still streaming in are left
        for later.
        """
        settled = "" if settled_before is None else (
            f" AND (j.last_instance_at <= ? OR {no_open_association('i.job_id')})")
        args: tuple[Any, ...] = (limit,) if settled_before is None else (settled_before, limit)
        rows = self._db().execute(
            "SELECT i.sop_uid, i.path FROM instances i LEFT JOIN instance_headers h ON h.sop_uid = i.sop_uid "
            "LEFT JOIN jobs j ON j.id = i.job_id "
            f"WHERE h.sop_uid IS NULL{settled} ORDER BY i.received_at LIMIT ?", args)
        return [(r[0], Path(r[1])) for r in rows]

    def headers_for_job(self, job_id: int) -> list[dict[str, Any]]:
        """Header summaries of a job's instances; an instance not read yet has ``None`` there.

        Each item: ``sop_uid``, ``sop_class_uid`` (as announced on the association), ``error``
        and ``summary`` (the dict given to ``record_header``, or ``None``).
        """
        rows = self._db().execute(
            "SELECT i.sop_uid, i.sop_class_uid, h.error, h.summary_json, h.sop_uid IS NOT NULL AS seen "
            "FROM instances i LEFT JOIN instance_headers h ON h.sop_uid = i.sop_uid "
            "WHERE i.job_id=? ORDER BY i.sop_uid", (job_id,))
        return [{"sop_uid": r[0], "sop_class_uid": r[1], "error": r[2],
                 "summary": json.loads(r[3]) if r[4] else None} for r in rows]
