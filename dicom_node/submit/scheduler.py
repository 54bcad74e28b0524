"""The submitter's loop body: collect outcomes, submit complete jobs, request status reports."""
from __future__ import annotations

import logging
import time
import uuid

from dicom_node.contract import LANES
from dicom_node.ledger import FailStage, Job, JobState, Ledger
from dicom_node.logs import short_uid
from dicom_node.submit.outcomes import OutcomeCollection
from dicom_node.submit.reports import StatusReports

logger = logging.getLogger(__name__)


class Submitter(OutcomeCollection, StatusReports):
    """Hands ``complete`` jobs to workers and records what they produced; a transport subclass
    (:class:`~dicom_node.submit.embedded.EmbeddedSubmitter`,
    :class:`~dicom_node.submit.celery_transport.CelerySubmitter`) says how tasks travel."""

    def run_once(self, ledger: Ledger | None = None, now: float | None = None) -> dict[str, int]:
        """One pass: collect outcomes, detect lost tasks, submit, and request status reports.

        Returns counts by action, for logs and tests. Never raises for one bad job.
        """
        now = time.time() if now is None else now
        if ledger is not None:
            self.ledger = ledger
        counts = {"recorded": 0, "running": 0, "lost": 0, "submitted": 0, "failed": 0, "reports": 0}
        self._probe(now)
        self._collect(now, counts)
        # Most urgent lane first, so that a stat job is published before a backlog of others.
        for job in sorted(self.ledger.jobs([JobState.COMPLETE]), key=lambda j: LANES.index(self._lane(j))):
            try:
                self._submit(job, now, counts)
            except Exception:
                logger.exception("submitting a job failed", extra={"job": job.id})
        for job in self.ledger.jobs_awaiting_report([JobState.NOT_ANALYSED, JobState.FAILED]):
            try:
                self._report(job, now, counts)
            except Exception:
                logger.exception("status report handling failed", extra={"job": job.id})
        return counts

    def _submit(self, job: Job, now: float, counts: dict[str, int]) -> None:
        lane = self._lane(job)
        log = {"job": job.id, "series": short_uid(job.series_uid), "lane": lane}
        if job.submissions >= self.cfg.queue.max_submissions:
            reason = (f"the analysis task was lost {job.submissions} times (worker or queue stopped); "
                      "not resubmitted")
            if self.ledger.transition(job.id, JobState.FAILED, reason=reason, fail_stage=FailStage.QUEUE,
                                      expect=[JobState.COMPLETE], now=now):
                logger.error("job failed: task lost too often", extra={**log, "submissions": job.submissions})
                counts["failed"] += 1
            return
        try:
            manifest = self._write_manifest(job, lane, "analyse")
        except ValueError as exc:
            if self.ledger.transition(job.id, JobState.FAILED, reason=str(exc), fail_stage=FailStage.QUEUE,
                                      expect=[JobState.COMPLETE], now=now):
                logger.error("job failed: cannot be handed to a worker", extra={**log, "reason": str(exc)})
                counts["failed"] += 1
            return
        task_id = f"job{job.id}-{job.submissions + 1}-{uuid.uuid4().hex[:12]}"
        try:
            self._send(job.id, manifest, lane, task_id)
        except Exception as exc:
            # The job stays complete and is sent on a later pass; nothing is counted.
            logger.warning("queue unreachable; job stays complete", extra={**log, "error": str(exc)[:200]})
            return
        if self.ledger.mark_submitted(job.id, task_id, lane, now=now):
            counts["submitted"] += 1
            logger.info("job submitted", extra={**log, "task": task_id, "submission": job.submissions + 1})
