"""Re-running the analysis of a failed job, for ``dicom-node retry --reanalyse`` and the console.

The ledger puts the job back to ``complete`` (:meth:`~dicom_node.ledger.jobs.Jobs.reanalyse`)
and the node's scheduler submits it on its next pass like any new series. What the failed run
left in ``results/<job>/`` that a scheduler or worker reads as "this job already ran" goes first:
the outcome (it would be recorded again as the re-run's), the heartbeat (it would read as
running) and the start count (a job failed for too many worker restarts would fail again at once).
"""
from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.contract import STARTS_FILE, job_dir
from dicom_node.ledger import Job, Ledger
from dicom_node.names import HEARTBEAT_FILE, OUTCOME_FILE

__all__ = ["reanalyse"]

logger = logging.getLogger(__name__)

#: Files of a job's folder that describe a finished run rather than its results.
RUN_STATE_FILES = (OUTCOME_FILE, HEARTBEAT_FILE, STARTS_FILE)


def reanalyse(ledger: Ledger, data_dir: str | Path, job_id: int, requested_by: str,
              now: float | None = None) -> Job:
    """Queue a failed job's analysis again; returns the job as it is now (``complete``).

    Raises ``KeyError`` for an unknown job and ``ReanalysisRefused`` saying why it cannot be re-run.
    """
    folder = job_dir(data_dir, job_id)

    def clear_files() -> None:
        for name in RUN_STATE_FILES:
            (folder / name).unlink(missing_ok=True)

    job = ledger.reanalyse(job_id, requested_by, now, clear_files=clear_files)
    logger.info("re-analysis requested", extra={"job": job_id, "by": requested_by})
    return job
