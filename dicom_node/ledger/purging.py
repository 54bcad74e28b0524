"""Retention's side of the ledger: which jobs' files may go, and the record that they went.

A job's files may be purged once nothing is left to deliver: it is ``delivered``, or it reached
an outcome whose result files are settled and every delivery of it was sent (a job with nothing
to send, such as a scout that got no status report, counts too), or it was superseded by a newer
job of its series. A pending or dead-lettered delivery keeps the files, whatever their age or the
disk, so that a retry can still send them. The job's rows stay; ``purged_at`` marks them.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dicom_node.ledger.store import Store

__all__ = ["Purging", "SETTLE_S"]

T = TypeVar("T")

#: A job changed this recently is never a candidate: its outcome may have been recorded a moment
#: ago, before its deliveries were queued.
SETTLE_S = 600.0

_PURGEABLE = (
    "j.purged_at IS NULL AND (j.state = 'superseded' OR ((j.state = 'delivered' OR "
    "(j.state IN ('done', 'failed', 'not_analysed') AND j.files_json IS NOT NULL)) AND NOT EXISTS "
    "(SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.state != 'sent')))"
)

#: ``take_away(job_id, spool paths) -> T``: moves the job's files where the receiver cannot reach them.
TakeAwayFn = Callable[[int, list[Path]], T]


class Purging(Store):
    """Purge candidates and purge records."""

    def purge_candidates(self, now: float, changed_before: float | None = None, limit: int = 500) -> list[sqlite3.Row]:
        """Jobs whose files may be purged (``id``, ``updated_at``), least recently changed first.

        Parameters
        ----------
        now:
            The current time; jobs changed within :data:`SETTLE_S` of it are left out.
        changed_before:
            Only jobs last changed before this time (the age limit); None: any age.
        """
        before = now - SETTLE_S if changed_before is None else min(changed_before, now - SETTLE_S)
        return list(self._db().execute(
            f"SELECT j.id, j.updated_at FROM jobs j WHERE {_PURGEABLE} AND j.updated_at < ? "
            "ORDER BY j.updated_at, j.id LIMIT ?", (before, limit)))

    def purge_job(self, job_id: int, take_away: TakeAwayFn[T], now: float | None = None) -> T | None:
        """Take a job's files away with ``take_away`` and mark the job and its instances purged;
        returns what ``take_away`` returned, or None when the job is no longer a candidate (a
        delivery was requeued meanwhile).

        ``take_away`` runs inside the write transaction, so it must be quick (renames, not
        deletions): the receiver cannot record an instance of the series meanwhile, and an
        instance sent again at this very moment is either still known (a duplicate, as before) or
        found purged with its new file gone, and recording it fails so that its file is written
        again (see ``Receiving.record_instance``).
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute(f"SELECT 1 FROM jobs j WHERE j.id=? AND {_PURGEABLE}", (job_id,)).fetchone() is None:
                return None
            paths = [Path(r[0]) for r in db.execute("SELECT path FROM instances WHERE job_id=? AND purged_at IS NULL "
                                                    "ORDER BY sop_uid", (job_id,))]
            taken = take_away(job_id, paths)
            db.execute("UPDATE instances SET purged_at=? WHERE job_id=? AND purged_at IS NULL", (now, job_id))
            db.execute("UPDATE jobs SET purged_at=? WHERE id=?", (now, job_id))
            return taken

    def record_purged_bytes(self, job_id: int, freed: int) -> None:
        """The bytes a purge freed, once its files were deleted."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET purged_bytes=COALESCE(purged_bytes, 0)+? WHERE id=?", (freed, job_id))

    def purge_totals(self) -> dict[str, int]:
        """Jobs purged and bytes freed over the ledger's life."""
        jobs, freed = self._db().execute("SELECT COUNT(*), COALESCE(SUM(purged_bytes), 0) FROM jobs "
                                         "WHERE purged_at IS NOT NULL").fetchone()
        return {"jobs": int(jobs), "bytes": int(freed)}
