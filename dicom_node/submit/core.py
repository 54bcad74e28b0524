"""What every part of the submitter shares: the job folder, manifests, outcomes, the transport.

A transport (:mod:`.embedded`, :mod:`.celery_transport`) provides ``_send`` and ``_in_flight``;
everything else reads and writes the files of :mod:`dicom_node.contract` and the ledger.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.config import Config
from dicom_node.contract import (
    LANES, MANIFEST_FILE, Manifest, ManifestError, Outcome, heartbeat_age, job_dir, read_manifest, read_outcome,
    write_manifest,
)
from dicom_node.ledger import Job, Ledger
from dicom_node.notify.queueing import queue_notifications

logger = logging.getLogger(__name__)

#: A queued task must be missing from the broker for this long (two looks) before it counts as
#: lost: between BRPOP and the unacked HSET a message is briefly in neither place.
MISSING_GRACE_S = 2.0


@dataclass(frozen=True)
class Beat:
    """What a job's heartbeat says now.

    Attributes
    ----------
    present:
        A worker has started the job and its heartbeat is there (so an outcome may be too).
    fresh:
        The worker beat within ``queue.heartbeat_timeout_s``: it is running the job.
    why:
        When not fresh, the reason the ledger records if the job is found lost.
    """

    present: bool
    fresh: bool
    why: str = ""


class SubmitterCore:
    """State and helpers of the submitter; subclasses say how a task is sent and whether it is
    still in flight."""

    def __init__(self, cfg: Config, ledger: Ledger | None = None) -> None:
        self.cfg = cfg
        self.ledger: Ledger = ledger  # type: ignore[assignment]  # or the one run_once is given
        self.data_dir = Path(cfg.data_dir)
        #: task id -> when the broker was first seen without it
        self._missing_since: dict[str, float] = {}

    # -- the transport -----------------------------------------------------------------------
    def _send(self, job_id: int, manifest_rel: str, lane: str, task_id: str) -> None:
        raise NotImplementedError

    def _in_flight(self, task_ids: set[str], now: float, waiting_only: bool = False) -> set[str] | None:
        """Which of ``task_ids`` the queue still holds (with ``waiting_only``: waiting in a lane,
        not reserved by a worker); None when that cannot be known now."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (threads, connections)."""

    def _probe(self, now: float) -> None:
        """Check the queue's dependencies when idle (the embedded queue has none)."""

    def health(self, now: float) -> list[str]:
        """Problems a health probe should see; empty when the queue is usable."""
        return []

    # -- job files ---------------------------------------------------------------------------
    def folder(self, job_id: int) -> Path:
        return job_dir(self.data_dir, job_id)

    @staticmethod
    def _lane(job: Job) -> str:
        return job.lane if job.lane in LANES else LANES[0]

    def _write_manifest(self, job: Job, lane: str, mode: str, *, state: str | None = None,
                        reason: str | None = None, fail_stage: str | None = None) -> str:
        """Write the job's manifest; returns its path relative to ``data_dir``.

        Raises ``ValueError`` when an instance lies outside ``data_dir``, where workers on
        other hosts cannot reach it.
        """
        instances = []
        base = self.data_dir.resolve()
        for path in self.ledger.instance_paths(job.id):
            full = (self.data_dir / path).resolve() if not path.is_absolute() else path.resolve()
            rel = os.path.relpath(full, base)
            if rel.startswith(".."):
                raise ValueError(f"instance file {full} is outside node.data_dir {base}; workers cannot reach it")
            instances.append(rel)
        manifest = Manifest(job_id=job.id, series_uid=job.series_uid, study_uid=job.study_uid,
                            instances=tuple(sorted(instances)), lane=lane, mode=mode, state=state, reason=reason,
                            fail_stage=fail_stage,
                            caveat=self.ledger.interrupted_transfer(job.id) if mode == "analyse" else None)
        return write_manifest(self.data_dir, manifest)

    def _outcome(self, job_id: int, mode: str | None = None) -> Outcome | None:
        """The job's outcome, when its worker wrote one (of the manifest in ``mode``, if given)."""
        outcome = read_outcome(self.folder(job_id))
        if outcome is None or outcome.job_id != job_id:
            return None
        if mode is not None:
            try:
                manifest = read_manifest(self.folder(job_id) / MANIFEST_FILE)
            except ManifestError:
                return None
            if manifest.mode != mode:
                return None  # an outcome of the analysis, while we wait for the status report
        return outcome

    def _beats(self, jobs: Sequence[Job], now: float) -> dict[int, Beat | None] | None:
        """Each job's heartbeat (here: the ``heartbeat`` file's age); a job mapped to None cannot
        be judged yet, and None for all of them means the heartbeats cannot be read now."""
        timeout = self.cfg.queue.heartbeat_timeout_s
        out: dict[int, Beat | None] = {}
        for job in jobs:
            age = heartbeat_age(self.folder(job.id), now)
            if age is None:
                out[job.id] = Beat(False, False, "worker heartbeat missing")
            else:
                out[job.id] = Beat(True, age <= timeout, f"worker heartbeat stale for {age:.0f} s")
        return out

    def _missing_long_enough(self, task_id: str, now: float) -> bool:
        """Whether the broker has gone without ``task_id`` for :data:`MISSING_GRACE_S`."""
        first = self._missing_since.setdefault(task_id, now)
        return now - first >= MISSING_GRACE_S

    def _deliver(self, job_id: int, files: Any, now: float) -> None:
        """One delivery per configured destination, when there is anything to send, and the
        result's notifications (``notify:``)."""
        if files:
            self.ledger.add_deliveries(job_id, [d.name for d in self.cfg.destinations], now=now)
        self._notify(job_id, now)

    def _notify(self, job_id: int, now: float) -> None:
        try:
            queue_notifications(self.cfg, self.ledger, job_id, now)
        except Exception:  # the result stays recorded and delivered; the log says which job went unannounced
            logger.exception("queueing notifications failed", extra={"job": job_id})
