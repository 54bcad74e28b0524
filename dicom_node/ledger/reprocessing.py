"""Batch reprocessing bookkeeping: runs, the series each found, and where each series stands.

A run is keyed by its parameters (source, window or accession list, ``--force``), so a rerun
after Ctrl-C, kill -9 or a reboot finds the unfinished run and carries on with the series that
are not final yet. Each series row moves forward only::

    found -> retrieving -> queued -> analysed | not_analysed | failed
    ineligible, already_done: decided from the query, never retrieved

While a row is ``retrieving``, the receiver opens that series' job in the ``batch`` lane
(``Receiving._job_for_new_instance``).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dicom_node.ledger.records import DeliveryState, Job, JobState
from dicom_node.ledger.store import Store

#: Row states; the last three are final.
FOUND, INELIGIBLE, ALREADY_DONE, RETRIEVING, QUEUED = "found", "ineligible", "already_done", "retrieving", "queued"
ANALYSED, NOT_ANALYSED, FAILED = "analysed", "not_analysed", "failed"
FINAL = frozenset({INELIGIBLE, ALREADY_DONE, ANALYSED, NOT_ANALYSED, FAILED})
#: What a run does with a found series: fetch it, analyse again what the node already holds
#: (an older model's result, or ``--force``), or follow a job that is already under way.
ACTIONS = ("retrieve", "redo", "follow", "skip")


@dataclass(frozen=True)
class ReprocessItem:
    """One row of ``reprocess_series``."""

    run_id: int
    series_uid: str
    study_uid: str
    ordinal: int
    instances: int | None
    action: str
    state: str
    reason: str | None
    job_id: int | None
    previous_job_id: int | None
    method: str | None
    updated_at: float


@dataclass(frozen=True)
class ReprocessRun:
    id: int
    key: str
    source: str
    params: dict[str, Any]
    state: str  # querying, retrieving, waiting, finished
    studies_done: int
    started_at: float
    updated_at: float
    finished_at: float | None


class Reprocessing(Store):
    """The ``reprocess_runs`` and ``reprocess_series`` tables."""

    def open_reprocess_run(self, key: str, source: str, params: dict[str, Any],
                           now: float | None = None) -> tuple[ReprocessRun, bool]:
        """The unfinished run with this key (resumed: True), else a new one."""
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT id FROM reprocess_runs WHERE key=? AND state!='finished' ORDER BY id DESC "
                             "LIMIT 1", (key,)).fetchone()
            resumed = row is not None
            if row is None:
                cur = db.execute("INSERT INTO reprocess_runs(key, source, params_json, state, started_at, updated_at) "
                                 "VALUES (?,?,?,?,?,?)", (key, source, json.dumps(params, sort_keys=True),
                                                          "querying", now, now))
                run_id = int(cur.lastrowid or 0)
            else:
                run_id = int(row[0])
        return self.reprocess_run(run_id), resumed

    def reprocess_run(self, run_id: int) -> ReprocessRun:
        row = self._db().execute("SELECT * FROM reprocess_runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"reprocess run {run_id} is not in the ledger")
        data = dict(row)
        data["params"] = json.loads(data.pop("params_json"))
        return ReprocessRun(**data)

    def set_reprocess_run(self, run_id: int, *, state: str | None = None, studies_done: int | None = None,
                          now: float | None = None) -> None:
        now = now or time.time()
        fields: dict[str, Any] = {"updated_at": now}
        if state is not None:
            fields["state"] = state
            if state == "finished":
                fields["finished_at"] = now
        if studies_done is not None:
            fields["studies_done"] = studies_done
        with self._tx() as db:
            db.execute(f"UPDATE reprocess_runs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                       (*fields.values(), run_id))

    def add_reprocess_series(self, run_id: int, rows: Iterable[dict[str, Any]], now: float | None = None) -> int:
        """Record found series (``series_uid``, ``study_uid``, ``ordinal``, ``instances``,
        ``action``, ``state``, ``reason``, ``previous_job_id``); known ones are left as they are."""
        now = now or time.time()
        added = 0
        with self._tx() as db:
            for r in rows:
                added += db.execute(
                    "INSERT OR IGNORE INTO reprocess_series(run_id, series_uid, study_uid, ordinal, instances, action, "
                    "state, reason, previous_job_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (run_id, r["series_uid"], r["study_uid"], r["ordinal"], r.get("instances"), r["action"],
                     r["state"], r.get("reason"), r.get("previous_job_id"), now)).rowcount
        return added

    def reprocess_items(self, run_id: int, states: Iterable[str] | None = None) -> list[ReprocessItem]:
        query, args = "SELECT * FROM reprocess_series WHERE run_id=?", [run_id]
        if states is not None:
            values = list(states)
            query += f" AND state IN ({','.join('?' * len(values))})"
            args += values
        return [ReprocessItem(**dict(r)) for r in self._db().execute(query + " ORDER BY ordinal", args)]

    def set_reprocess_item(self, run_id: int, series_uid: str, state: str, *, reason: str | None = None,
                           job_id: int | None = None, method: str | None = None, now: float | None = None) -> None:
        fields: dict[str, Any] = {"state": state, "updated_at": now or time.time()}
        for key, value in (("reason", reason), ("job_id", job_id), ("method", method)):
            if value is not None:
                fields[key] = value
        with self._tx() as db:
            db.execute(f"UPDATE reprocess_series SET {', '.join(f'{k}=?' for k in fields)} "
                       "WHERE run_id=? AND series_uid=?", (*fields.values(), run_id, series_uid))

    def latest_job(self, series_uid: str) -> Job | None:
        """The series' newest job that nothing superseded, or None."""
        row = self._db().execute("SELECT * FROM jobs WHERE series_uid=? AND superseded_by IS NULL AND state!=? "
                                 "ORDER BY id DESC LIMIT 1", (series_uid, JobState.SUPERSEDED.value)).fetchone()
        return None if row is None else Job.from_row(row)

    def reopen_series(self, run_id: int, series_uid: str, previous_job_id: int, now: float | None = None) -> int:
        """Analyse a series the node already holds again, in the batch lane; returns the new job.

        In one transaction: a new ``received`` job takes every instance of the series, the
        previous job is marked superseded by it, and the run's row moves to ``queued``. Run
        twice (a resumed run), it finds the job it made the first time and makes no other.
        """
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE series_uid=? AND superseded_by IS NULL AND state!=? "
                             "ORDER BY id DESC LIMIT 1", (series_uid, JobState.SUPERSEDED.value)).fetchone()
            if row is not None and int(row[0]) != previous_job_id:
                job_id = int(row[0])
            else:
                prev = db.execute("SELECT study_uid, state FROM jobs WHERE id=?", (previous_job_id,)).fetchone()
                if prev is None:
                    raise KeyError(f"job {previous_job_id} is not in the ledger")
                cur = db.execute(
                    "INSERT INTO jobs(series_uid, study_uid, state, created_at, updated_at, last_instance_at, lane) "
                    "VALUES (?,?,?,?,?,?,?)", (series_uid, prev["study_uid"], JobState.RECEIVED.value, now, now, now,
                                               "batch"))
                job_id = int(cur.lastrowid or 0)
                self._event(db, job_id, JobState.RECEIVED, now, f"reprocess run {run_id}: analysed again")
                db.execute("UPDATE instances SET job_id=? WHERE series_uid=?", (job_id, series_uid))
                db.execute("UPDATE jobs SET superseded_by=?, updated_at=? WHERE id=?", (job_id, now, previous_job_id))
                if prev["state"] in (JobState.RECEIVED.value, JobState.COMPLETE.value, JobState.QUEUED.value,
                                     JobState.RUNNING.value):
                    db.execute("UPDATE jobs SET state=? WHERE id=?", (JobState.SUPERSEDED.value, previous_job_id))
                    db.execute("UPDATE deliveries SET state=? WHERE job_id=? AND state=?",
                               (DeliveryState.DEAD.value, previous_job_id, DeliveryState.PENDING.value))
                self._event(db, previous_job_id, JobState.SUPERSEDED, now,
                            f"superseded by job {job_id} (reprocess run {run_id})")
            db.execute("UPDATE reprocess_series SET state=?, job_id=?, updated_at=? WHERE run_id=? AND series_uid=?",
                       (QUEUED, job_id, now, run_id, series_uid))
        return job_id

    def stat_work_waiting(self) -> int:
        """Jobs of the stat lane (or not yet given a lane, which the scheduler sends as stat)
        waiting to be assembled or run: while there are any, a batch run retrieves nothing."""
        row = self._db().execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?,?,?) AND COALESCE(lane, 'stat')='stat'",
            (JobState.RECEIVED.value, JobState.COMPLETE.value, JobState.QUEUED.value),
        ).fetchone()
        return int(row[0])
