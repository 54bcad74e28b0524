"""Data retention: purge the spool and result files of jobs with nothing left to deliver.

Two rules, each oldest first (by the time the job last changed, for most jobs its delivery):

- **age**: a job's files go ``retention.max_age_days`` after that time;
- **disk**: while the disk holding ``node.data_dir`` is fuller than
  ``retention.disk_high_water_percent``, jobs go one by one, whatever their age, until it is not.

Which jobs are candidates is the ledger's decision (:mod:`dicom_node.ledger.purging`): never one
with a pending or dead-lettered delivery, never one changed in the last ten minutes. Removed are
the job's instances under ``spool/`` (never a file outside it: ``dicom-node process`` may have
recorded a user's own folder) and its ``results/<job id>/`` folder. The ledger keeps every row
and marks it purged. While the ledger is locked for that mark, the files are only renamed into a
trash folder under ``tmp/`` (milliseconds); they are deleted after the lock is released.

The node runs :class:`Retention` in a thread of its own every ``retention.interval_minutes``;
:func:`retention_status` is what the console and ``/metrics`` show of it.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from dicom_node.config import Config
from dicom_node.ledger import Ledger
from dicom_node.names import RESULTS_DIR, SPOOL_DIR, TMP_DIR
from dicom_node.observability import audit, metrics

__all__ = ["DiskUsage", "Retention", "RetentionRun", "purge_once", "retention_status"]

logger = logging.getLogger(__name__)


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


#: ``usage(path) -> DiskUsage`` of the filesystem holding ``path`` (``shutil.disk_usage``).
UsageFn = Callable[[Path], Any]
_BATCH = 200
#: Trash folders under ``tmp/`` (same filesystem as the spool, so moving there is a rename).
TRASH_PREFIX = "purge-"


@dataclass(frozen=True)
class RetentionRun:
    """What one run did."""

    started_at: float
    seconds: float
    jobs: int
    files: int
    bytes: int
    by_age: int
    by_disk: int
    disk_used_percent: float | None


_lock = threading.Lock()
_status: dict[str, Any] = {"enabled": False, "last_run_at": None, "last_run": None, "last_error": None,
                           "jobs_purged": 0, "files_purged": 0, "bytes_freed": 0}


def retention_status() -> dict[str, Any]:
    """Retention as this process saw it, for the console.

    Returns
    -------
    dict
        ``enabled``, ``max_age_days``, ``disk_high_water_percent``, ``interval_minutes`` (the
        configuration, once a :class:`Retention` was made), ``last_run_at`` (Unix time or None),
        ``last_run`` (a :class:`RetentionRun` as a dict, or None), ``last_error``, and the totals
        since the process started: ``jobs_purged``, ``files_purged``, ``bytes_freed``.
    """
    with _lock:
        return dict(_status)


def _used_percent(usage: Any) -> float:
    # As df's Use%: blocks reserved for root count neither as used nor as available.
    usable = usage.used + usage.free
    return 100.0 * usage.used / usable if usable else 0.0


def _within(path: Path, folder: str) -> bool:
    # Lexical, without a system call per path: rename and unlink never follow a symlink, so a
    # link inside the spool can only lose the link itself.
    return os.path.normpath(os.path.abspath(path)).startswith(folder + os.sep)


def take_away(data_dir: Path, job_id: int, spool_paths: list[Path]) -> Path:
    """Move a job's spool files and result folder into a trash folder under ``tmp/``; returns it.

    Renames only (a series folder whole when it holds nothing else, else file by file), because
    this runs while the ledger is locked; :func:`empty_trash` deletes afterwards.
    """
    trash = data_dir / TMP_DIR / f"{TRASH_PREFIX}{job_id}-{uuid.uuid4().hex[:8]}"
    trash.mkdir(parents=True)
    spool = os.path.normpath(data_dir.absolute() / SPOOL_DIR)
    by_folder: dict[Path, set[str]] = {}
    for path in spool_paths:
        if _within(path, spool):
            by_folder.setdefault(path.parent, set()).add(path.name)
        else:
            logger.warning("retention: instance outside the spool left in place", extra={"job": job_id})
    for n, (folder, names) in enumerate(sorted(by_folder.items())):
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            continue
        if present <= names:
            os.rename(folder, trash / f"series{n}")
            try:
                folder.parent.rmdir()  # the study folder, when this was its last series
            except OSError:
                pass
            continue
        for name in names & present:
            try:
                os.rename(folder / name, trash / f"{n}-{name}")
            except FileNotFoundError:
                pass
    results = data_dir / RESULTS_DIR / str(job_id)
    if results.is_dir() and not results.is_symlink():
        os.rename(results, trash / "results")
    return trash


def empty_trash(trash: Path) -> tuple[int, int]:
    """Delete a trash folder; returns (files, bytes) it held."""
    files = freed = 0
    for root, _dirs, names in os.walk(trash):
        for name in names:
            try:
                freed += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:
                pass
    shutil.rmtree(trash, ignore_errors=True)
    return files, freed


def _empty_leftover_trash(data_dir: Path) -> None:
    """Trash a crash left behind: its job was purged, or was about to be and still may be."""
    try:
        entries = list(os.scandir(data_dir / TMP_DIR))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(TRASH_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def purge_once(cfg: Config, ledger: Ledger, now: float | None = None,
               usage: UsageFn = shutil.disk_usage) -> RetentionRun:
    """Apply both rules once (age, then disk) and record what was purged.

    Parameters
    ----------
    cfg:
        ``retention`` and ``node.data_dir``.
    ledger:
        Decides the candidates and records each purge.
    now:
        The current time (default: the clock).
    usage:
        Disk usage of the data folder's filesystem; tests pass their own.
    """
    started = time.time()
    now = started if now is None else now
    rules, data_dir = cfg.retention, Path(cfg.data_dir)
    totals = {"jobs": 0, "files": 0, "bytes": 0, "age": 0, "disk": 0}

    skipped: set[int] = set()  # no longer candidates, or failed: not tried again in this run
    errors: list[str] = []

    def purge(job_id: int, reason: str) -> None:
        try:
            trash = ledger.purge_job(job_id, lambda jid, paths: take_away(data_dir, jid, paths), now)
        except OSError as exc:  # one job's files (permissions, a vanished mount) must not stop the rest
            logger.exception("retention: cannot purge a job's files; next run tries again", extra={"job": job_id})
            errors.append(f"job {job_id}: {exc}")
            trash = None
        if trash is None:
            skipped.add(job_id)
            return
        files, freed = empty_trash(trash)
        ledger.record_purged_bytes(job_id, freed)
        totals["jobs"] += 1
        totals["files"] += files
        totals["bytes"] += freed
        totals[reason] += 1
        metrics.RETENTION_PURGED_JOBS.inc()
        metrics.RETENTION_PURGED_FILES.inc(files)
        metrics.RETENTION_BYTES_FREED.inc(freed)
        audit.record("retention_purge", job=job_id, reason=reason, files=files, bytes=freed)

    def candidates(changed_before: float | None) -> list[int]:
        rows = ledger.purge_candidates(now, changed_before=changed_before, limit=_BATCH + len(skipped))
        return [int(r["id"]) for r in rows if int(r["id"]) not in skipped][:_BATCH]

    _empty_leftover_trash(data_dir)
    if rules.max_age_days is not None:
        cutoff = now - rules.max_age_days * 86400
        while batch := candidates(cutoff):
            for job_id in batch:
                purge(job_id, "age")
    used = _used_percent(usage(data_dir))
    if rules.disk_high_water_percent is not None:
        while used > rules.disk_high_water_percent:
            batch = candidates(None)
            if not batch:
                logger.warning("retention: disk above retention.disk_high_water_percent and nothing left to purge "
                               "(undelivered jobs are kept)", extra={"used_percent": round(used, 1)})
                break
            for job_id in batch:
                purge(job_id, "disk")
                used = _used_percent(usage(data_dir))
                if used <= rules.disk_high_water_percent:
                    break
    run = RetentionRun(started_at=now, seconds=round(time.time() - started, 3), jobs=totals["jobs"],
                       files=totals["files"], bytes=totals["bytes"], by_age=totals["age"], by_disk=totals["disk"],
                       disk_used_percent=round(used, 2))
    finished = time.time()
    metrics.RETENTION_LAST_RUN.set(finished)
    with _lock:
        _status.update(last_run_at=finished, last_run=asdict(run), last_error="; ".join(errors)[:300] or None,
                       jobs_purged=_status["jobs_purged"] + run.jobs, files_purged=_status["files_purged"] + run.files,
                       bytes_freed=_status["bytes_freed"] + run.bytes)
    if run.jobs:
        logger.info("retention purged jobs' files", extra={"jobs": run.jobs, "files": run.files, "bytes": run.bytes,
                                                           "by_age": run.by_age, "by_disk": run.by_disk})
    return run


class Retention:
    """Runs :func:`purge_once` every ``retention.interval_minutes`` in a thread of its own, so that
    a long purge never delays the node's loop.

    Parameters
    ----------
    cfg, ledger:
        As for :func:`purge_once`.
    usage:
        Disk usage function (tests).
    """

    def __init__(self, cfg: Config, ledger: Ledger, usage: UsageFn = shutil.disk_usage) -> None:
        self.cfg, self.ledger, self.usage = cfg, ledger, usage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        rules = cfg.retention
        with _lock:
            _status.update(enabled=rules.enabled, max_age_days=rules.max_age_days,
                           disk_high_water_percent=rules.disk_high_water_percent,
                           interval_minutes=rules.interval_minutes)

    def start(self) -> None:
        if not self.cfg.retention.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.cfg.retention.interval_minutes * 60
        while not self._stop.is_set():
            try:
                purge_once(self.cfg, self.ledger, usage=self.usage)
            except Exception as exc:  # noqa: BLE001 - try again at the next interval
                logger.exception("retention run failed; retrying at the next interval")
                with _lock:
                    _status["last_error"] = f"{type(exc).__name__}: {exc}"[:300]
            self._stop.wait(interval)
        self.ledger.close()  # this thread's connection

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
