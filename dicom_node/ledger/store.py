"""The ledger's database file: one connection per thread, write transactions, the event log.

Every part of :class:`~dicom_node.ledger.Ledger` builds on :class:`Store`. One connection per
thread: the SCP records instances from pynetdicom's association threads while the scheduler
loop works in its own.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from dicom_node.ledger.records import JobState
from dicom_node.ledger.schema import migrate


def no_open_association(job_id_column: str) -> str:
    """SQL condition: no association that delivered an instance of that job is still open."""
    return ("NOT EXISTS(SELECT 1 FROM instances oi JOIN associations oa ON oa.id = oi.assoc_id "
            f"WHERE oi.job_id = {job_id_column} AND oa.closed_at IS NULL)")


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class Store:
    """Thread-safe access to the ledger database at ``path``, migrated to the current schema.

    Raises
    ------
    dicom_node.ledger.schema.SchemaError
        When the file was written by a newer version of the node.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        migrate(self._db(), str(self.path))

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); the spool files are fsynced
            # before we get here and a start-up rescan re-records any instance a power cut lost.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def _tx(self) -> _Tx:
        return _Tx(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: int, state: JobState, now: float, detail: str | None) -> None:
        db.execute("INSERT INTO events(job_id, state, at, detail) VALUES (?,?,?,?)",
                   (job_id, JobState(state).value, now, detail))
