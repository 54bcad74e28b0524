"""Status-report scheduling: a failed or not-analysed CT series gets an SR saying so.

A worker makes it in ``report`` mode (headers only), so nobody reads silence as negative. The
attempts are counted in the ledger; a report task lost ``queue.max_submissions`` times is
given up, visibly (``report_error``).
"""
from __future__ import annotations

import logging
import uuid

from dicom_node.assembler import needs_status_report
from dicom_node.contract import CT_FAMILY
from dicom_node.ledger import Job, JobState
from dicom_node.submit.core import SubmitterCore

logger = logging.getLogger(__name__)


class StatusReports(SubmitterCore):
    """Requests, watches and records the status report of each failed or not-analysed job."""

    def _report(self, job: Job, now: float, counts: dict[str, int]) -> None:
        if job.superseded_by is not None or not self._wants_report(job):
            self.ledger.settle_report(job.id, [], now=now)
            return
        outcome = self._outcome(job.id, mode="report")
        if outcome is not None:
            files = [dict(f) for f in outcome.files]
            self.ledger.settle_report(job.id, files, outcome={**outcome.to_dict(), "state": job.state.value},
                                      now=now, detail=f"status report: {len(files)} file(s)")
            self._deliver(job.id, files, now)
            counts["reports"] += 1
            return
        attempt = job.report_attempts
        if attempt and not self._report_lost(job, now):
            return
        if attempt >= self.cfg.queue.max_submissions:
            logger.error("status report could not be produced", extra={"job": job.id, "attempts": attempt})
            self.ledger.settle_report(job.id, [], error="status report task lost", now=now,
                                      detail=f"status report lost {attempt} times; none sent")
            self._notify(job.id, now)  # the RIS still hears that there is no result
            return
        task_id = f"job{job.id}-report{attempt + 1}-{uuid.uuid4().hex[:12]}"
        lane = self._lane(job)
        try:
            rel = self._write_manifest(job, lane, "report", state=job.state.value,
                                       reason=job.reason or "not analysed", fail_stage=job.fail_stage)
        except ValueError as exc:
            self.ledger.settle_report(job.id, [], error=str(exc), now=now, detail=f"no status report: {exc}")
            return
        self.ledger.report_requested(job.id, task_id)
        try:
            self._send(job.id, rel, lane, task_id)
        except Exception as exc:
            logger.warning("queue unreachable; status report not sent yet", extra={"job": job.id,
                                                                                  "error": str(exc)[:200]})

    def _report_lost(self, job: Job, now: float) -> bool:
        """Whether the job's latest report task is gone: no fresh heartbeat, not in the queue
        for the grace period, and no outcome after all."""
        beats = self._beats([job], now)
        beat = beats.get(job.id) if beats is not None else None
        if beat is None or beat.fresh:
            return False
        task_id = job.report_task_id or ""
        held = self._in_flight({task_id}, now)
        if held is None or task_id in held:
            return False
        if not self._missing_long_enough(task_id, now) or self._outcome(job.id, mode="report") is not None:
            return False
        self._missing_since.pop(task_id, None)
        return True

    def _wants_report(self, job: Job) -> bool:
        if job.state == JobState.NOT_ANALYSED:
            # The assembler decides (CT images only; never our own results, which would loop).
            return needs_status_report(job)
        return any(h["sop_class_uid"] in CT_FAMILY for h in self.ledger.headers_for_job(job.id))
