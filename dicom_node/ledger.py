"""The job ledger: SQLite (WAL) in ``data_dir``, the node's single source of truth.

It records every received instance, every association, every job and every job state change with
a timestamp, and the per-destination delivery records (the durable outbox). It is the only module
that changes job state. Transitions only move forward; the one deliberate exception is
``requeue``, used when a task was lost (worker killed, broker emptied), which counts submissions.

One connection per thread: the SCP records instances from pynetdicom's association threads while
the scheduler loop works in its own.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, calling_ae TEXT, opened_at REAL NOT NULL, closed_at REAL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, assoc_id TEXT, received_at REAL NOT NULL,
    job_id INTEGER);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_job ON instances(job_id);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    state TEXT NOT NULL, outcome TEXT, fail_stage TEXT, reason TEXT, lane TEXT,
    submissions INTEGER NOT NULL DEFAULT 0, task_id TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, last_instance_at REAL NOT NULL, superseded_by INTEGER,
    result_json TEXT);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_uid);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, state TEXT NOT NULL,
    at REAL NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, destination TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_error TEXT, updated_at REAL NOT NULL, UNIQUE(job_id, destination));
CREATE TABLE IF NOT EXISTS instance_headers (
    sop_uid TEXT PRIMARY KEY, read_at REAL NOT NULL, error TEXT, summary_json TEXT NOT NULL);
"""


def _no_open_association(job_id_column: str) -> str:
    """SQL condition: no association that delivered an instance of that job is still open."""
    return ("NOT EXISTS(SELECT 1 FROM instances oi JOIN associations oa ON oa.id = oi.assoc_id "
            f"WHERE oi.job_id = {job_id_column} AND oa.closed_at IS NULL)")


class JobState(StrEnum):
    RECEIVED = "received"  # instances are arriving
    COMPLETE = "complete"  # the series is complete; eligibility decides what happens next
    QUEUED = "queued"  # submitted to the queue (or the embedded runner)
    RUNNING = "running"  # a worker has started it
    DONE = "done"  # analysed; results in results/<job id>/
    FAILED = "failed"  # explicit failure with stage and reason; a status SR still goes out
    NOT_ANALYSED = "not_analysed"  # ineligible, with a human-readable reason
    DELIVERED = "delivered"  # every destination acknowledged every result object
    SUPERSEDED = "superseded"  # more instances arrived; a newer job for the series replaces it


class FailStage(StrEnum):
    ASSEMBLY = "assembly"
    QUEUE = "queue"
    LOAD = "load"
    INFERENCE = "inference"
    RESULTS = "results"
    DELIVERY = "delivery"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # gave up after the destination's max_attempts; `dicom-node retry` requeues


#: Rank of each state; a transition must not lower it (see ``requeue`` for the one exception).
_RANK = {
    JobState.RECEIVED: 0, JobState.COMPLETE: 1, JobState.QUEUED: 2, JobState.RUNNING: 3,
    JobState.DONE: 4, JobState.FAILED: 4, JobState.NOT_ANALYSED: 4, JobState.DELIVERED: 5,
    JobState.SUPERSEDED: 6,
}
OUTCOME_STATES = (JobState.DONE, JobState.FAILED, JobState.NOT_ANALYSED)
#: States in which a job still needs the scheduler's attention.
OPEN_STATES = (JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING)


class TransitionError(RuntimeError):
    """A state change that would move a job backwards or out of a terminal state."""


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    state: JobState
    outcome: str | None
    fail_stage: str | None
    reason: str | None
    lane: str | None
    submissions: int
    task_id: str | None
    created_at: float
    updated_at: float
    last_instance_at: float
    superseded_by: int | None
    result: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        data["state"] = JobState(data["state"])
        raw = data.pop("result_json")
        data["result"] = json.loads(raw) if raw else None
        return cls(**data)


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    updated_at: float


class Ledger:
    """Thread-safe access to the ledger database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    # -- connection ----------------------------------------------------------------------
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

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "Ledger._Tx":
        return Ledger._Tx(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- associations ----------------------------------------------------------------------
    def open_association(self, assoc_id: str, calling_ae: str, now: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO associations(id, calling_ae, opened_at) VALUES (?,?,?)",
                       (assoc_id, calling_ae, now or time.time()))

    def close_association(self, assoc_id: str, now: float | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE associations SET closed_at=? WHERE id=? AND closed_at IS NULL",
                       (now or time.time(), assoc_id))

    def close_all_associations(self, now: float | None = None) -> int:
        """At start-up no association of a previous run can still be open."""
        with self._tx() as db:
            cur = db.execute("UPDATE associations SET closed_at=? WHERE closed_at IS NULL", (now or time.time(),))
            return cur.rowcount

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

    def has_work_in_flight(self) -> bool:
        """Whether a job is being decided, run or collected right now (the loop then polls faster).

        True for jobs in complete, queued or running, and for received jobs whose associations
        were all released (their completion is due within the settle time). Received jobs still
        streaming in, or waiting for the quiet timer on an open association, do not count.
        """
        row = self._db().execute(
            "SELECT EXISTS(SELECT 1 FROM jobs WHERE state IN (?,?,?)) OR EXISTS(SELECT 1 FROM jobs j "
            f"WHERE j.state=? AND {_no_open_association('j.id')})",
            (JobState.COMPLETE.value, JobState.QUEUED.value, JobState.RUNNING.value, JobState.RECEIVED.value),
        ).fetchone()
        return bool(row[0])

    # -- instances -------------------------------------------------------------------------
    def record_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str,
                        path: str | Path, assoc_id: str | None, now: float | None = None) -> bool:
        """Record a spooled instance; returns False when the SOP Instance UID was already known.

        The instance joins the series' open job; when the series' latest job is past
        ``received`` (complete or later), a new job is opened and the older one is marked as
        superseded, so the series is re-analysed with all its instances.
        """
        now = now or time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone():
                return False
            job_id = self._job_for_new_instance(db, series_uid, study_uid, now)
            db.execute("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?)",
                       (sop_uid, series_uid, study_uid, sop_class_uid, str(path), assoc_id, now, job_id))
            db.execute("UPDATE jobs SET last_instance_at=?, updated_at=? WHERE id=?", (now, now, job_id))
            # Earlier instances of the series belong to the re-opened job as well.
            db.execute("UPDATE instances SET job_id=? WHERE series_uid=? AND job_id IS NOT ?",
                       (job_id, series_uid, job_id))
            return True

    def _job_for_new_instance(self, db: sqlite3.Connection, series_uid: str, study_uid: str, now: float) -> int:
        row = db.execute("SELECT id, state FROM jobs WHERE series_uid=? AND state != ? ORDER BY id DESC LIMIT 1",
                         (series_uid, JobState.SUPERSEDED.value)).fetchone()
        if row is not None and row["state"] == JobState.RECEIVED:
            return int(row["id"])
        cur = db.execute(
            "INSERT INTO jobs(series_uid, study_uid, state, created_at, updated_at, last_instance_at) "
            "VALUES (?,?,?,?,?,?)", (series_uid, study_uid, JobState.RECEIVED.value, now, now, now))
        job_id = int(cur.lastrowid)
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
        return {r[0] for r in self._db().execute("SELECT path FROM instances")}

    def instance_paths(self, job_id: int) -> list[Path]:
        rows = self._db().execute("SELECT path FROM instances WHERE job_id=? ORDER BY sop_uid", (job_id,))
        return [Path(r[0]) for r in rows]

    def instance_count(self, job_id: int) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM instances WHERE job_id=?", (job_id,)).fetchone()[0])

    # -- jobs ------------------------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        row = self._db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"job {job_id} is not in the ledger")
        return Job.from_row(row)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        if states is None:
            rows = self._db().execute("SELECT * FROM jobs ORDER BY id")
        else:
            values = [JobState(s).value for s in states]
            marks = ",".join("?" * len(values))
            rows = self._db().execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", values)
        return [Job.from_row(r) for r in rows]

    def events(self, job_id: int) -> list[tuple[str, float, str | None]]:
        rows = self._db().execute("SELECT state, at, detail FROM events WHERE job_id=? ORDER BY id", (job_id,))
        return [(r[0], r[1], r[2]) for r in rows]

    def transition(self, job_id: int, state: JobState, *, reason: str | None = None,
                   fail_stage: FailStage | None = None, detail: str | None = None,
                   result: dict[str, Any] | None = None, expect: Iterable[JobState] | None = None,
                   now: float | None = None, expect_last_instance_at: float | None = None) -> bool:
        """Move a job forward to ``state``; returns False (and changes nothing) when the job is
        not in one of ``expect`` (another actor got there first, e.g. it was superseded), or when
        ``expect_last_instance_at`` is given and an instance arrived since (the assembler's
        decision was made on fewer instances than the job now holds).

        Raises ``TransitionError`` when the move would go backwards.
        """
        state = JobState(state)
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"job {job_id} is not in the ledger")
            current = JobState(row["state"])
            if expect is not None and current not in set(expect):
                return False
            if expect_last_instance_at is not None and db.execute(
                    "SELECT last_instance_at FROM jobs WHERE id=?", (job_id,)).fetchone()[0] != expect_last_instance_at:
                return False
            if _RANK[state] <= _RANK[current] and not (state == current == JobState.QUEUED):
                raise TransitionError(f"job {job_id}: cannot move from {current} to {state}")
            fields = {"state": state.value, "updated_at": now}
            if state in OUTCOME_STATES:
                fields["outcome"] = state.value
            if reason is not None:
                fields["reason"] = reason
            if fail_stage is not None:
                fields["fail_stage"] = FailStage(fail_stage).value
            if result is not None:
                fields["result_json"] = json.dumps(result)
            sets = ", ".join(f"{k}=?" for k in fields)
            db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))
            self._event(db, job_id, state, now, detail or reason)
            return True

    def mark_submitted(self, job_id: int, task_id: str, lane: str, now: float | None = None) -> bool:
        """Record a (re)submission to the queue: state queued, submission counted.

        Only a ``complete`` job moves; returns False when it is no longer complete (e.g. an
        instance arrived and superseded it while the task was being sent).
        """
        now = now or time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state=?, task_id=?, lane=?, submissions=submissions+1, updated_at=? "
                             "WHERE id=? AND state=?", (JobState.QUEUED.value, task_id, lane, now, job_id,
                                                        JobState.COMPLETE.value))
            if cur.rowcount == 0:
                return False
            self._event(db, job_id, JobState.QUEUED, now, f"task {task_id} on lane {lane}")
            return True

    def jobs_without_files(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in ``states`` whose result lists no result files yet (no ``files`` key): the
        failed and not-analysed jobs that may still need a status report."""
        values = [JobState(s).value for s in states]
        rows = self._db().execute(f"SELECT * FROM jobs WHERE (result_json IS NULL OR json_extract(result_json, "
                                  f"'$.files') IS NULL) AND state IN ({','.join('?' * len(values))}) ORDER BY id",
                                  values)
        return [Job.from_row(r) for r in rows]

    def record_result(self, job_id: int, result: dict[str, Any], detail: str | None = None,
                      now: float | None = None) -> None:
        """Attach a result to a job without changing its state (a status report produced for a
        job that was already failed or not analysed)."""
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"job {job_id} is not in the ledger")
            db.execute("UPDATE jobs SET result_json=?, updated_at=? WHERE id=?", (json.dumps(result), now, job_id))
            if detail:
                self._event(db, job_id, JobState(row["state"]), now, detail)

    def requeue(self, job_id: int, why: str, now: float | None = None) -> None:
        """Put a lost queued/running job back to ``complete`` so the scheduler submits it again."""
        now = now or time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=? AND state IN (?,?)",
                       (JobState.COMPLETE.value, now, job_id, JobState.QUEUED.value, JobState.RUNNING.value))
            self._event(db, job_id, JobState.COMPLETE, now, f"requeued: {why}")

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: int, state: JobState, now: float, detail: str | None) -> None:
        db.execute("INSERT INTO events(job_id, state, at, detail) VALUES (?,?,?,?)",
                   (job_id, JobState(state).value, now, detail))

    # -- deliveries (the durable outbox) ----------------------------------------------------
    def add_deliveries(self, job_id: int, destinations: Iterable[str], now: float | None = None) -> None:
        now = now or time.time()
        with self._tx() as db:
            for name in destinations:
                db.execute("INSERT OR IGNORE INTO deliveries(job_id, destination, state, next_attempt_at, "
                           "updated_at) VALUES (?,?,?,?,?)", (job_id, name, DeliveryState.PENDING.value, now, now))

    def deliveries(self, job_id: int | None = None, states: Iterable[DeliveryState] | None = None) -> list[Delivery]:
        query, args = "SELECT * FROM deliveries WHERE 1=1", []
        if job_id is not None:
            query, args = query + " AND job_id=?", [job_id]
        if states is not None:
            values = [DeliveryState(s).value for s in states]
            query += f" AND state IN ({','.join('?' * len(values))})"
            args += values
        rows = self._db().execute(query + " ORDER BY id", args)
        return [Delivery(**{**dict(r), "state": DeliveryState(r["state"])}) for r in rows]

    def due_deliveries(self, now: float) -> list[Delivery]:
        rows = self._db().execute("SELECT * FROM deliveries WHERE state=? AND next_attempt_at<=? ORDER BY "
                                  "next_attempt_at", (DeliveryState.PENDING.value, now))
        return [Delivery(**{**dict(r), "state": DeliveryState(r["state"])}) for r in rows]

    def delivery_attempted(self, delivery_id: int, *, ok: bool, error: str | None = None,
                           next_attempt_at: float | None = None, dead: bool = False,
                           now: float | None = None) -> None:
        """Record one send attempt; when every delivery of the job is sent the job is delivered."""
        now = now or time.time()
        state = DeliveryState.SENT if ok else (DeliveryState.DEAD if dead else DeliveryState.PENDING)
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?, next_attempt_at=?, "
                       "updated_at=? WHERE id=?", (state.value, error, next_attempt_at or now, now, delivery_id))
            job_id = db.execute("SELECT job_id FROM deliveries WHERE id=?", (delivery_id,)).fetchone()[0]
            left = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id=? AND state!=?",
                              (job_id, DeliveryState.SENT.value)).fetchone()[0]
            job_state = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if ok and left == 0 and job_state in {s.value for s in OUTCOME_STATES}:
                db.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=?",
                           (JobState.DELIVERED.value, now, job_id))
                self._event(db, job_id, JobState.DELIVERED, now, None)

    def retry_dead(self, job_id: int | None = None, now: float | None = None) -> int:
        """Requeue dead-lettered deliveries (all, or one job's); returns how many."""
        now = now or time.time()
        query = "UPDATE deliveries SET state=?, attempts=0, next_attempt_at=?, updated_at=? WHERE state=?"
        args: list[Any] = [DeliveryState.PENDING.value, now, now, DeliveryState.DEAD.value]
        if job_id is not None:
            query, args = query + " AND job_id=?", args + [job_id]
        with self._tx() as db:
            return db.execute(query, args).rowcount

    # -- reporting -------------------------------------------------------------------------
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

    # -- cached header summaries (written by the assembler, one per instance) ------------------
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
            f" AND (j.last_instance_at <= ? OR {_no_open_association('i.job_id')})")
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

    def receiver_summary(self) -> dict[str, Any]:
        """Instances, associations still open and the time of the last instance, for status."""
        db = self._db()
        instances, last = db.execute("SELECT COUNT(*), MAX(received_at) FROM instances").fetchone()
        open_assocs = db.execute("SELECT COUNT(*) FROM associations WHERE closed_at IS NULL").fetchone()[0]
        return {"instances": int(instances), "last_instance_at": last, "open_associations": int(open_assocs)}
