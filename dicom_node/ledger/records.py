"""The ledger's typed records: job and delivery states, the job and delivery rows."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


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


#: Rank of each state; a transition must not lower it (see ``Ledger.requeue`` for the one exception).
RANK = {
    JobState.RECEIVED: 0, JobState.COMPLETE: 1, JobState.QUEUED: 2, JobState.RUNNING: 3,
    JobState.DONE: 4, JobState.FAILED: 4, JobState.NOT_ANALYSED: 4, JobState.DELIVERED: 5,
    JobState.SUPERSEDED: 6,
}
OUTCOME_STATES = (JobState.DONE, JobState.FAILED, JobState.NOT_ANALYSED)
#: States in which a job still needs the scheduler's attention.
OPEN_STATES = (JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING)


class TransitionError(RuntimeError):
    """A state change that would move a job backwards or out of a terminal state."""


class ReanalysisRefused(RuntimeError):
    """A job that cannot be re-analysed (not failed, superseded, or its files purged); the
    message says why."""


@dataclass(frozen=True)
class Assessment:
    """What the assembler found a complete series to be (see ``dicom_node.eligibility``).

    Attributes
    ----------
    series_kind:
        ``SeriesKind`` value: ``ct_image``, ``own_result`` or ``other``.
    status_report:
        Whether a "not analysed" status SR goes out for it.
    instances:
        How many instances the decision was made on.
    """

    series_kind: str
    status_report: bool
    instances: int | None = None


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``: a series' analysis, from its first instance to its delivery.

    The first fields are the state machine's (state, why it failed, submissions); the rest say
    what the job produced.

    Attributes
    ----------
    series_kind, status_report, assessed_instances:
        The assembler's :class:`Assessment` of a series it did not pass on (else None).
    files:
        The result files to deliver (the outcome's ``files``); None until the job's outcome or
        status report settled what goes out, an empty list when nothing does.
    worker_outcome:
        The worker's ``outcome.json`` (findings, model, timings, worker) less its ``files``.
    report_error:
        Why a failed or not-analysed job got no status report.
    report_attempts, report_task_id:
        Status-report tasks sent for the job, and the latest one's id.
    triage:
        The result's triage category (``dicom_node.triage.CATEGORIES``); None until settled.
    purged_at, purged_bytes:
        When retention removed the job's spool and result files, and the bytes that freed
        (``dicom_node.retention``); None while they are kept.
    """

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
    series_kind: str | None = None
    status_report: bool | None = None
    assessed_instances: int | None = None
    files: list[dict[str, Any]] | None = None
    worker_outcome: dict[str, Any] | None = None
    report_error: str | None = None
    report_attempts: int = 0
    report_task_id: str | None = None
    triage: str | None = None
    purged_at: float | None = None
    purged_bytes: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        data["state"] = JobState(data["state"])
        if data["status_report"] is not None:
            data["status_report"] = bool(data["status_report"])
        data["files"] = _json(data.pop("files_json"))
        data["worker_outcome"] = _json(data.pop("worker_outcome_json"))
        return cls(**data)

    @property
    def reanalysable(self) -> bool:
        """Whether its analysis may be run again (``Ledger.reanalyse``): it failed (its status
        report delivered or not), nothing superseded it and retention kept its files."""
        return (self.outcome == JobState.FAILED.value and self.state in (JobState.FAILED, JobState.DELIVERED)
                and self.superseded_by is None and self.purged_at is None)

    @property
    def result(self) -> dict[str, Any] | None:
        """Everything recorded about the job's result as one document, for people and tools
        (``status``, ``demo``, benchmarks): the assessment as ``status_report``, ``series_kind``
        and ``instances``, the worker's outcome, ``files`` and ``report_error``. None when there
        is nothing yet."""
        doc: dict[str, Any] = {}
        if self.series_kind is not None or self.status_report is not None:
            doc.update(status_report=self.status_report, series_kind=self.series_kind)
            if self.assessed_instances is not None:
                doc["instances"] = self.assessed_instances
        doc.update(self.worker_outcome or {})
        if self.files is not None:
            doc["files"] = self.files
        if self.report_error is not None:
            doc["report_error"] = self.report_error
        return doc or None


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class Delivery:
    """One row of ``deliveries``: a job's result for one destination or notification target.

    ``kind`` is ``dicom`` (C-STORE to ``destinations:``), ``hl7`` or ``webhook`` (``notify:``);
    ``payload`` is what a notification says, frozen when it was queued.
    """

    id: int
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    updated_at: float
    kind: str = "dicom"
    payload: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Delivery":
        data = dict(row)
        data["payload"] = _json(data.pop("payload_json", None))
        return cls(**{**data, "state": DeliveryState(row["state"])})
