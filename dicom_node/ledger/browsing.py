"""Read-only queries behind the operator console's worklist and study pages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.ledger.records import Job, JobState
from dicom_node.ledger.store import Store


class Browsing(Store):
    """Current jobs by arrival or study, and where a study's instances are; nothing here writes."""

    def current_jobs(self, created_from: float | None = None, created_to: float | None = None,
                     study_uid: str | None = None) -> list[Job]:
        """Jobs nothing superseded (one per series), oldest first; optionally only those that
        arrived in ``[created_from, created_to)`` or belong to one study."""
        query = "SELECT * FROM jobs WHERE superseded_by IS NULL AND state!=?"
        args: list[Any] = [JobState.SUPERSEDED.value]
        for clause, value in (("created_at>=?", created_from), ("created_at<?", created_to),
                              ("study_uid=?", study_uid)):
            if value is not None:
                query, args = f"{query} AND {clause}", args + [value]
        return [Job.from_row(r) for r in self._db().execute(query + " ORDER BY created_at, id", args)]

    def study_instance_paths(self, study_uid: str, limit: int = 3) -> list[Path]:
        """Paths (as recorded) of a few instances of the study, to read its header from."""
        rows = self._db().execute("SELECT path FROM instances WHERE study_uid=? ORDER BY received_at LIMIT ?",
                                  (study_uid, limit))
        return [Path(r[0]) for r in rows]

    def instance_path(self, sop_uid: str) -> Path | None:
        """Path (as recorded) of one instance, or None when the ledger does not know it."""
        row = self._db().execute("SELECT path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
        return None if row is None else Path(row[0])

    def recent_outcomes(self, outcomes: list[str], limit: int) -> list[Job]:
        """The ``limit`` most recently updated current jobs whose outcome is one of ``outcomes``
        (``failed``, ``not_analysed``), delivered status reports included, newest first."""
        marks = ",".join("?" * len(outcomes))
        rows = self._db().execute(f"SELECT * FROM jobs WHERE outcome IN ({marks}) AND superseded_by IS NULL "
                                  "ORDER BY updated_at DESC, id DESC LIMIT ?", (*outcomes, limit))
        return [Job.from_row(r) for r in rows]
