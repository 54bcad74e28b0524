"""The job state machine: the only code that changes a job's state, and what a job produced.

Transitions only move forward; the deliberate exceptions are :meth:`Jobs.requeue`, used when
a task was lost (worker killed, broker emptied), which counts submissions, and
:meth:`Jobs.reanalyse`, an operator's request to run a failed analysis again.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from dicom_node.ledger.records import (
    OUTCOME_STATES, RANK, Assessment, FailStage, Job, JobState, ReanalysisRefused, TransitionError,
)
from dicom_node.ledger.store import Store, no_open_association


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """A worker's outcome document as column values: its ``files`` apart from the rest."""
    rest = {k: v for k, v in result.items() if k != "files"}
    columns: dict[str, Any] = {"worker_outcome_json": json.dumps(rest) if rest else None}
    if "files" in result:
        columns["files_json"] = json.dumps(result["files"])
    return columns


class Jobs(Store):
    """Reading jobs and moving them through their states."""

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

    def has_work_in_flight(self) -> bool:
        """Whether a job is being decided, run or collected right now (the loop then polls faster).

        True for jobs in complete, queued or running, and for received jobs whose associations
        were all released (their completion is due within the settle time). Received jobs still
        streaming in, or waiting for the quiet timer on an open association, do not count.
        """
        row = self._db().execute(
            "SELECT EXISTS(SELECT 1 FROM jobs WHERE state IN (?,?,?)) OR EXISTS(SELECT 1 FROM jobs j "
            f"WHERE j.state=? AND {no_open_association('j.id')})",
            (JobState.COMPLETE.value, JobState.QUEUED.value, JobState.RUNNING.value, JobState.RECEIVED.value),
        ).fetchone()
        return bool(row[0])

    def transition(self, job_id: int, state: JobState, *, reason: str | None = None,
                   fail_stage: FailStage | None = None, detail: str | None = None,
                   result: dict[str, Any] | None = None, assessment: Assessment | None = None,
                   expect: Iterable[JobState] | None = None, now: float | None = None,
                   expect_last_instance_at: float | None = None, lane: str | None = None) -> bool:
        """Move a job forward to ``state``; returns False (and changes nothing) when the job is
        not in one of ``expect`` (another actor got there first, e.g. it was superseded), or when
        ``expect_last_instance_at`` is given and an instance arrived since (the assembler's
        decision was made on fewer instances than the job now holds).

        ``result`` is the worker's outcome document (its ``files`` are what gets delivered);
        ``assessment`` is the assembler's verdict on a series it does not pass on; ``lane`` the
        queue lane its rules chose.

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
            if RANK[state] <= RANK[current] and not (state == current == JobState.QUEUED):
                raise TransitionError(f"job {job_id}: cannot move from {current} to {state}")
            fields: dict[str, Any] = {"state": state.value, "updated_at": now}
            if state in OUTCOME_STATES:
                fields["outcome"] = state.value
            if reason is not None:
                fields["reason"] = reason
            if fail_stage is not None:
                fields["fail_stage"] = FailStage(fail_stage).value
            if result is not None:
                fields.update(result_columns(result))
            if lane is not None:
                fields["lane"] = lane
            if assessment is not None:
                fields.update(series_kind=assessment.series_kind, status_report=int(assessment.status_report),
                              assessed_instances=assessment.instances)
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

    def requeue(self, job_id: int, why: str, now: float | None = None) -> None:
        """Put a lost queued/running job back to ``complete`` so the scheduler submits it again."""
        now = now or time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=? AND state IN (?,?)",
                       (JobState.COMPLETE.value, now, job_id, JobState.QUEUED.value, JobState.RUNNING.value))
            self._event(db, job_id, JobState.COMPLETE, now, f"requeued: {why}")

    def reanalyse(self, job_id: int, requested_by: str, now: float | None = None, *,
                  clear_files: Callable[[], None] | None = None) -> Job:
        """Put a failed job back to ``complete`` so the scheduler submits its analysis again.

        Everything the failure produced is cleared so the re-run is recorded and delivered like a
        first run: outcome, reason, stage, files, the status-report bookkeeping, the submission
        count, triage, and the job's deliveries and notifications (one per job and destination,
        so a status SR already sent would otherwise block the new result's delivery). The event
        says who asked and how many earlier deliveries were cleared.

        ``clear_files`` runs once the job is found eligible, while the ledger is still locked and the
        job still reads as failed, to remove what the failed run left in its folder; if it raises,
        nothing changes.

        Raises ``KeyError`` for an unknown job and ``ReanalysisRefused`` when the job's outcome is
        not ``failed``, it was superseded, or retention purged its files.
        """
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"job {job_id} is not in the ledger")
            job = Job.from_row(row)
            if job.purged_at is not None:
                raise ReanalysisRefused(f"job {job_id}: its files were purged by retention; the series must be "
                                        "sent to the node again")
            if not job.reanalysable:
                raise ReanalysisRefused(f"job {job_id} is {job.state.value}"
                                        f"{f' (outcome {job.outcome})' if job.outcome else ''}; "
                                        "only a failed job can be re-analysed")
            if clear_files is not None:
                clear_files()
            cleared = db.execute("DELETE FROM deliveries WHERE job_id=?", (job_id,)).rowcount
            db.execute("UPDATE jobs SET state=?, outcome=NULL, reason=NULL, fail_stage=NULL, submissions=0, "
                       "task_id=NULL, files_json=NULL, worker_outcome_json=NULL, report_error=NULL, "
                       "report_attempts=0, report_task_id=NULL, triage=NULL, updated_at=? WHERE id=?",
                       (JobState.COMPLETE.value, now, job_id))
            detail = f"re-analysis requested by {requested_by}"
            if cleared:
                detail += f"; {cleared} earlier deliver{'y' if cleared == 1 else 'ies'} of the failure cleared"
            self._event(db, job_id, JobState.COMPLETE, now, detail)
            return Job.from_row(db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    def set_triage(self, job_id: int, category: str) -> None:
        """Record the triage category of the job's result (``dicom_node.triage``)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET triage=? WHERE id=?", (category, job_id))

    # -- status reports of failed and not-analysed jobs ----------------------------------------
    def jobs_awaiting_report(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in ``states`` for which nothing settled yet what goes out (no files recorded):
        the failed and not-analysed jobs that may still need a status report."""
        values = [JobState(s).value for s in states]
        rows = self._db().execute(f"SELECT * FROM jobs WHERE files_json IS NULL AND state IN "
                                  f"({','.join('?' * len(values))}) ORDER BY id", values)
        return [Job.from_row(r) for r in rows]

    def report_requested(self, job_id: int, task_id: str) -> int:
        """Count one status-report task sent for the job; returns the attempts so far."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET report_attempts=report_attempts+1, report_task_id=? WHERE id=?",
                       (task_id, job_id))
            row = db.execute("SELECT report_attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"job {job_id} is not in the ledger")
            return int(row[0])

    def settle_report(self, job_id: int, files: list[dict[str, Any]], *, outcome: dict[str, Any] | None = None,
                      error: str | None = None, detail: str | None = None, now: float | None = None) -> None:
        """Record what goes out for a failed or not-analysed job without changing its state.

        Parameters
        ----------
        files:
            The status report's files; empty when none goes out.
        outcome:
            The report worker's outcome document, when one ran.
        error:
            Why no report could be made.
        detail:
            Event text; no event is written without one.
        """
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"job {job_id} is not in the ledger")
            fields: dict[str, Any] = {"files_json": json.dumps(files), "updated_at": now}
            if outcome is not None:
                fields.update(result_columns(outcome), files_json=json.dumps(files))
            if error is not None:
                fields["report_error"] = error
            sets = ", ".join(f"{k}=?" for k in fields)
            db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))
            if detail:
                self._event(db, job_id, JobState(row["state"]), now, detail)
