"""Outcome collection: what workers wrote into ``results/<job id>/`` goes into the ledger.

For every queued or running job each pass: an outcome is recorded (ledger transition plus one
delivery per destination); a fresh heartbeat marks the job running; anything else is handed to
lost-task detection.
"""
from __future__ import annotations

import logging

from dicom_node.contract import Outcome
from dicom_node.ledger import FailStage, Job, JobState
from dicom_node.submit.lost import LostTasks

logger = logging.getLogger(__name__)


class OutcomeCollection(LostTasks):
    """Records outcomes and running jobs; finds lost tasks through :class:`LostTasks`."""

    def _record(self, job: Job, outcome: Outcome, now: float) -> bool:
        state = JobState(outcome.state)
        moved = self.ledger.transition(
            job.id, state, reason=outcome.reason,
            fail_stage=FailStage(outcome.fail_stage) if outcome.fail_stage is not None else None, result=outcome.to_dict(), expect=[JobState.QUEUED, JobState.RUNNING], now=now,
            detail=f"{len(outcome.files)} result file(s) by {outcome.worker}")
        if moved:
            self._deliver(job.id, outcome.files, now)
            logger.info("job outcome recorded", extra={"job": job.id, "state": state.value,
                                                       "fail_stage": outcome.fail_stage,
                                                       "files": len(outcome.files)})
        return moved

    def _collect(self, now: float, counts: dict[str, int]) -> None:
        unseen: dict[str, Job] = {}
        for job in self.ledger.jobs([JobState.QUEUED, JobState.RUNNING]):
            age = self._heartbeat_age(job.id, now)
            # A worker writes the heartbeat before anything else, so without one there is no
            # outcome to read: a backlog of queued jobs costs one stat each per pass.
            outcome = self._outcome(job.id) if age is not None else None
            if outcome is not None:
                counts["recorded"] += self._record(job, outcome, now)
                continue
            if age is not None and age <= self.cfg.queue.heartbeat_timeout_s:
                self._missing_since.pop(job.task_id or "", None)
                if job.state == JobState.QUEUED and self.ledger.transition(
                        job.id, JobState.RUNNING, expect=[JobState.QUEUED], now=now, detail="worker heartbeat"):
                    counts["running"] += 1
            elif job.state == JobState.RUNNING:
                why = self._stale_running_is_lost(job, age, now)
                if why is not None:
                    self._lost(job, why, now, counts)
            elif job.task_id:
                unseen[job.task_id] = job
        if not unseen:
            return
        for job in self._unseen_are_lost(unseen, now) or []:
            # The worker writes the outcome before it acknowledges: look once more.
            outcome = self._outcome(job.id)
            if outcome is not None:
                counts["recorded"] += self._record(job, outcome, now)
            else:
                self._lost(job, "task no longer in the queue (broker restarted or emptied)", now, counts)
