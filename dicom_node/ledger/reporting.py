"""Read-only summaries of the ledger for ``dicom-node status`` and ``GET /status``."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from dicom_node.ledger.records import Job, JobState
from dicom_node.ledger.store import Store


class Reporting(Store):
    """Counts and recent jobs; nothing here writes."""

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def recent_jobs(self, states: Iterable[JobState], limit: int) -> list[Job]:
        """The ``limit`` most recently updated jobs in ``states``, newest first."""
        values = [JobState(s).value for s in states]
        rows = self._db().execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(values))}) "
                                  "ORDER BY updated_at DESC, id DESC LIMIT ?", (*values, limit))
        return [Job.from_row(r) for r in rows]

    def series_count(self) -> int:
        return int(self._db().execute("SELECT COUNT(DISTINCT series_uid) FROM jobs").fetchone()[0])

    def iter_instances(self) -> Iterator[sqlite3.Row]:
        yield from self._db().execute("SELECT * FROM instances ORDER BY received_at")

    def receiver_summary(self) -> dict[str, Any]:
        """Instances, associations still open and the time of the last instance, for status."""
        db = self._db()
        instances, last = db.execute("SELECT COUNT(*), MAX(received_at) FROM instances").fetchone()
        open_assocs = db.execute("SELECT COUNT(*) FROM associations WHERE closed_at IS NULL").fetchone()[0]
        return {"instances": int(instances), "last_instance_at": last, "open_associations": int(open_assocs)}
