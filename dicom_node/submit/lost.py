"""Lost-task detection: queued or running jobs whose task no longer exists anywhere.

A task is lost when its worker's heartbeat went stale and it is not waiting in a lane (a pool
process that died hands it back there), or when it never started and the broker holds it
neither in a lane nor in kombu's ``unacked`` hash (e.g. Redis restarted empty). A lost job goes
back to ``complete``; the scheduler then resubmits it, up to ``queue.max_submissions`` times.
"""
from __future__ import annotations

import logging

from dicom_node.ledger import Job
from dicom_node.submit.core import SubmitterCore

logger = logging.getLogger(__name__)


class LostTasks(SubmitterCore):
    """The checks the outcome collector runs on jobs that have no outcome yet."""

    def _stale_running_is_lost(self, job: Job, why: str, now: float) -> str | None:
        """Why a running job without a fresh heartbeat is lost, or None while it may still run.

        A pool process that died hands its task back to the lane (reject_on_worker_lost): it
        waits for a worker there and is not lost. A dead whole worker leaves it in ``unacked``
        until the visibility timeout, which is no sign of life.
        """
        waiting = self._in_flight({job.task_id or ""}, now, waiting_only=True)
        if waiting is None or waiting:
            return None
        return why

    def _unseen_are_lost(self, unseen: dict[str, Job], now: float) -> list[Job] | None:
        """Of queued jobs without a heartbeat (by task id), those the broker has lost; None when
        the broker cannot be asked now."""
        held = self._in_flight(set(unseen), now)
        if held is None:
            return None
        gone = []
        for task_id, job in unseen.items():
            if task_id in held:
                self._missing_since.pop(task_id, None)
            elif self._missing_long_enough(task_id, now):
                gone.append(job)
        return gone

    def _lost(self, job: Job, why: str, now: float, counts: dict[str, int]) -> None:
        self._missing_since.pop(job.task_id or "", None)
        logger.warning("task lost; job requeued", extra={"job": job.id, "task": job.task_id, "why": why,
                                                         "submissions": job.submissions})
        self.ledger.requeue(job.id, why, now=now)
        counts["lost"] += 1

