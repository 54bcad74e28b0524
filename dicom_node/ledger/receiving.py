"""What the receiver records: associations and instances, grouped into one job per series."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

from dicom_node.ledger.records import OPEN_STATES, DeliveryState, JobState
from dicom_node.ledger.store import Store


#: sop_uid, study_uid, series_uid, sop_class_uid, path, assoc_id, received_at
InstanceRow = Tuple[str, str, str, str, Union[str, Path], Optional[str], float]


class Receiving(Store):
    """Associations and instances; a new instance opens or joins its series' job."""

    # -- associations ----------------------------------------------------------------------
    def open_association(self, assoc_id: str, calling_ae: str, now: float | None = None, *,
                         called_ae: str | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO associations(id, calling_ae, opened_at, called_ae) VALUES (?,?,?,?)",
                       (assoc_id, calling_ae, now or time.time(), called_ae))

    def close_association(self, assoc_id: str, now: float | None = None, *, aborted: bool = False) -> None:
        """Record the end of an association; ``aborted``: it ended without a release."""
        with self._tx() as db:
            db.execute("UPDATE associations SET closed_at=?, aborted=? WHERE id=? AND closed_at IS NULL",
                       (now or time.time(), int(aborted), assoc_id))

    def close_all_associations(self, now: float | None = None) -> int:
        """At start-up no association of a previous run can still be open: they were cut off,
        and are recorded as aborted."""
        with self._tx() as db:
            cur = db.execute("UPDATE associations SET closed_at=?, aborted=1 WHERE closed_at IS NULL",
                             (now or time.time(),))
            return cur.rowcount

    def interrupted_transfer(self, job_id: int) -> str | None:
        """Why the job's series may be incomplete, or None: the association that carried its
        latest instance ended without a release. A sender that sent the rest on a new
        association, and released that one, did not leave it interrupted."""
        row = self._db().execute(
            "SELECT a.aborted, (SELECT COUNT(*) FROM instances WHERE job_id=? AND assoc_id=a.id) "
            "FROM instances i JOIN associations a ON a.id = i.assoc_id WHERE i.job_id=? "
            "ORDER BY i.received_at DESC LIMIT 1", (job_id, job_id)).fetchone()
        if row is None or not row[0]:
            return None
        return (f"Transfer interrupted: the association sending this series was aborted after {row[1]} "
                "instance(s). The series may be incomplete; slices that did not arrive were not analysed.")

    def open_associations_for_job(self, job_id: int) -> int:
        row = self._db().execute(
            "SELECT COUNT(DISTINCT a.id) FROM instances i JOIN associations a ON a.id = i.assoc_id "
            "WHERE i.job_id=? AND a.closed_at IS NULL", (job_id,)).fetchone()
        return int(row[0])

    def instances_in_last_association(self, job_id: int) -> int:
        """How many of the job's instances came on the association that carried its latest one."""
        row = self._db().execute(
            "SELECT COUNT(*) FROM instances WHERE job_id=? AND assoc_id = (SELECT assoc_id FROM instances "
            "WHERE job_id=? ORDER BY received_at DESC LIMIT 1)", (job_id, job_id)).fetchone()
        return int(row[0])

    def job_ae_titles(self, job_id: int) -> tuple[str | None, str | None]:
        """Calling and called AE titles of the association that carried the job's latest instance
        (``(None, None)`` when it came without one, e.g. from a folder)."""
        row = self._db().execute(
            "SELECT a.calling_ae, a.called_ae FROM instances i JOIN associations a ON a.id = i.assoc_id "
            "WHERE i.job_id=? ORDER BY i.received_at DESC LIMIT 1", (job_id,)).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    # -- instances -------------------------------------------------------------------------
    def record_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str,
                        path: str | Path, assoc_id: str | None, now: float | None = None) -> bool:
        """Record a spooled instance; returns False when the SOP Instance UID was already known.

        The instance joins the series' open job; when the series' latest job is past
        ``received`` (complete or later), a new job is opened and the older one is marked as
        superseded, so the series is re-analysed with all its instances. An instance whose file
        retention purged counts as new when it is sent again, and purged instances never join
        the re-opened job (their files are gone).
        """
        with self._tx() as db:
            return self._record(db, sop_uid, study_uid, series_uid, sop_class_uid, path, assoc_id, now or time.time())

    def record_instances(self, rows: Iterable[InstanceRow]) -> int:
        """:meth:`record_instance` for several instances in one transaction (the receive
        journal's mover records its batches so); returns how many were new."""
        with self._tx() as db:
            return sum(self._record(db, *row) for row in rows)

    def _record(self, db: sqlite3.Connection, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str,
                path: str | Path, assoc_id: str | None, now: float) -> bool:
        known = db.execute("SELECT purged_at FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
        if known is not None and known[0] is None:
            return False
        if known is not None and not Path(path).is_file():
            # Retention purged the instance and, in the same transaction, the file just
            # written for it again. Raising makes the write happen again: the receiver answers
            # a failure status the sender retries, the journal mover retries its batch.
            raise FileNotFoundError(f"{path}: removed by retention while being received; send again")
        job_id = self._job_for_new_instance(db, series_uid, study_uid, now)
        db.execute("INSERT OR REPLACE INTO instances(sop_uid, series_uid, study_uid, sop_class_uid, path, "
                   "assoc_id, received_at, job_id, purged_at) VALUES (?,?,?,?,?,?,?,?,NULL)",
                   (sop_uid, series_uid, study_uid, sop_class_uid, str(path), assoc_id, now, job_id))
        db.execute("UPDATE jobs SET last_instance_at=?, updated_at=? WHERE id=?", (now, now, job_id))
        # Earlier instances of the series belong to the re-opened job as well.
        db.execute("UPDATE instances SET job_id=? WHERE series_uid=? AND job_id IS NOT ? AND purged_at IS NULL",
                   (job_id, series_uid, job_id))
        return True

    def _job_for_new_instance(self, db: sqlite3.Connection, series_uid: str, study_uid: str, now: float) -> int:
        row = db.execute("SELECT id, state FROM jobs WHERE series_uid=? AND state != ? ORDER BY id DESC LIMIT 1",
                         (series_uid, JobState.SUPERSEDED.value)).fetchone()
        if row is not None and row["state"] == JobState.RECEIVED:
            return int(row["id"])
        # A series that `dicom-node reprocess` is retrieving goes to the batch lane, so that it
        # never delays a series sent by a modality.
        lane = "batch" if db.execute("SELECT 1 FROM reprocess_series WHERE series_uid=? AND state=?",
                                     (series_uid, "retrieving")).fetchone() else None
        cur = db.execute(
            "INSERT INTO jobs(series_uid, study_uid, state, created_at, updated_at, last_instance_at, lane) "
            "VALUES (?,?,?,?,?,?,?)", (series_uid, study_uid, JobState.RECEIVED.value, now, now, now, lane))
        job_id = int(cur.lastrowid or 0)
        self._event(db, job_id, JobState.RECEIVED, now, None)
        if row is not None:
            previous = int(row["id"])
            db.execute("UPDATE jobs SET superseded_by=?, updated_at=? WHERE id=?", (job_id, now, previous))
            if row["state"] in OPEN_STATES:
                # Its result would be stale; the new job carries the whole series.
                db.execute("UPDATE jobs SET state=? WHERE id=?", (JobState.SUPERSEDED.value, previous))
                db.execute("UPDATE deliveries SET state=? WHERE job_id=? AND state=?",
                           (DeliveryState.DEAD.value, previous, DeliveryState.PENDING.value))
            self._event(db, previous, JobState.SUPERSEDED, now, f"superseded by job {job_id}")
        return job_id

    def has_instance(self, sop_uid: str) -> bool:
        return self._db().execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone() is not None

    def known_paths(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT path FROM instances WHERE purged_at IS NULL")}

    def instance_paths(self, job_id: int) -> list[Path]:
        rows = self._db().execute("SELECT path FROM instances WHERE job_id=? ORDER BY sop_uid", (job_id,))
        return [Path(r[0]) for r in rows]

    def instance_count(self, job_id: int) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM instances WHERE job_id=?", (job_id,)).fetchone()[0])
