"""Outcome collection: what workers wrote into ``results/<job id>/`` goes into the ledger.

For every queued or running job each pass: an outcome is recorded (ledger transition plus one
delivery per destination); a fresh heartbeat (:meth:`~.core.SubmitterCore._beats`: a Redis key
with a Redis broker, a file's age with the embedded queue) marks the job running; anything else
is handed to lost-task detection.
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
        jobs = self.ledger.jobs([JobState.QUEUED, JobState.RUNNING])
        beats = self._beats(jobs, now) if jobs else {}
        for job in jobs:
            beat = beats.get(job.id) if beats is not None else None
            # A worker's heartbeat appears before anything else, so a queued job without one
            # has no outcome to read: a backlog costs no file look-up per pass. A running job's
            # outcome is looked for whatever its heartbeat says (a Redis key expires after the
            # job ends; the broker may be unreachable).
            if beat is None or beat.present or job.state == JobState.RUNNING:
                outcome = self._outcome(job.id)
                if outcome is not None:
                    counts["recorded"] += self._record(job, outcome, now)
                    continue
            if beat is None:
                continue  # liveness cannot be judged now; nothing is declared lost meanwhile
            if beat.fresh:
                self._missing_since.pop(job.task_id or "", None)
                if job.state == JobState.QUEUED and self.ledger.transition(
                        job.id, JobState.RUNNING, expect=[JobState.QUEUED], now=now, detail="worker heartbeat"):
                    counts["running"] += 1
            elif job.state == JobState.RUNNING:
                why = self._stale_running_is_lost(job, beat.why, now)
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
