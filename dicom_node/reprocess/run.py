"""One reprocess run: query, retrieve at a limited rate, follow the batch jobs to their outcome.

Everything a run knows is in the ledger (``ledger.reprocessing``): a run interrupted at any
point (Ctrl-C, kill -9, reboot) is found again by its parameters and goes on with the series
that are not final. A series whose retrieval was cut short is retrieved again; the node already
holds the instances it received and opens no second job for them, and a redo reuses the job it
made, so nothing is analysed twice.

The retrieved series are analysed by the running node (``dicom-node serve``) like any other,
in the ``batch`` lane, and their results leave through the outbox.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node import qr
from dicom_node.config import Config, Destination
from dicom_node.ledger import JobState, Ledger
from dicom_node.ledger.reprocessing import (
    ANALYSED, FAILED, FINAL, FOUND, NOT_ANALYSED, QUEUED, RETRIEVING, ReprocessItem,
)
from dicom_node.logs import short_uid
from dicom_node.reprocess.plan import ModelIdentity, Params, in_hours, plan_study

logger = logging.getLogger(__name__)

#: Seconds between looks at the ledger while waiting for the batch jobs' outcomes.
WAIT_POLL_S = 1.0
_FINAL_JOB = {JobState.DONE: ANALYSED, JobState.DELIVERED: ANALYSED, JobState.NOT_ANALYSED: NOT_ANALYSED,
              JobState.FAILED: FAILED}

Progress = Callable[[int, int], None]


@dataclass
class Summary:
    """What a run found and did; ``rows`` are ``(category, count, reasons)`` for the table."""

    run_id: int
    resumed: bool
    finished: bool
    stopped: str | None
    counts: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    dry_run: list[dict[str, Any]] | None = None


class Reprocessor:
    """Runs :class:`Params` against ``source``; see the module docstring.

    Parameters
    ----------
    scheduled:
        A run from the timer: it starts no retrieval outside ``reprocess.hours``.
    clock, sleep, now_local:
        Injected time (tests).
    on_progress:
        Called with (series final, series to do) whenever that changes.
    """

    def __init__(self, cfg: Config, ledger: Ledger, source: Destination, params: Params, model: ModelIdentity,
                 *, scheduled: bool = False, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 now_local: Callable[[], dt.datetime] = dt.datetime.now,
                 on_progress: Progress | None = None, on_notice: Callable[[str], None] | None = None) -> None:
        self.cfg, self.ledger, self.source, self.params, self.model = cfg, ledger, source, params, model
        self.scheduled = scheduled
        self.clock, self.sleep, self.now_local = clock, sleep, now_local
        self.on_progress = on_progress or (lambda done, total: None)
        self.on_notice = on_notice or (lambda text: None)
        self.use_get = source.retrieve == "get"
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Start no further retrieval (Ctrl-C); what runs finishes and is recorded."""
        self._stop.set()

    # -- query ---------------------------------------------------------------------------------
    def _studies(self) -> list[dict[str, Any]]:
        aet, timeout = self.cfg.node.ae_title, self.source.timeout_s
        if self.params.accessions:
            studies = [s for accession in self.params.accessions
                       for s in qr.find_studies(self.source, aet, accession=accession, timeout=timeout)]
        else:
            studies = qr.find_studies(self.source, aet, since=self.params.since, until=self.params.until,
                                      timeout=timeout)
        unique = {s["StudyInstanceUID"]: s for s in studies if s.get("StudyInstanceUID")}
        ordered = sorted(unique.values(), key=lambda s: (s.get("StudyDate") or "", s["StudyInstanceUID"]))
        return ordered[: self.params.limit] if self.params.limit else ordered

    def plan(self) -> list[dict[str, Any]]:
        """Query the source and decide each series; writes nothing."""
        rows: list[dict[str, Any]] = []
        for study in self._studies():
            series = qr.find_series(self.source, self.cfg.node.ae_title, study["StudyInstanceUID"],
                                    timeout=self.source.timeout_s)
            rows += plan_study(self.ledger, study, series, self.cfg.series, self.model, self.params.force,
                               len(rows))
        return rows

    # -- the run -------------------------------------------------------------------------------
    def dry_run(self) -> Summary:
        rows = self.plan()
        summary = Summary(run_id=0, resumed=False, finished=False, stopped="dry run", dry_run=rows)
        for row in rows:
            summary.counts["found"] += 1
            summary.counts[row["state"] if row["state"] != FOUND else f"would {row['action']}"] += 1
        return summary

    def run(self) -> Summary:
        run, resumed = self.ledger.open_reprocess_run(self.params.key, self.params.source, self.params.to_dict())
        log = {"run": run.id, "source": self.source.name, "resumed": resumed}
        logger.info("reprocess run started", extra=log)
        if run.state == "querying":
            self.ledger.add_reprocess_series(run.id, self.plan())
            self.ledger.set_reprocess_run(run.id, state="retrieving")
        stopped = self._retrieve_all(run.id)
        self.ledger.set_reprocess_run(run.id, state="waiting")
        if stopped is None:
            stopped = self._wait(run.id)
        finished = not self.ledger.reprocess_items(run.id, [FOUND, RETRIEVING, QUEUED])
        if finished:
            self.ledger.set_reprocess_run(run.id, state="finished")
        logger.info("reprocess run ended", extra={**log, "finished": finished, "stopped": stopped})
        return self.summary(run.id, resumed, finished, stopped)

    def _progress(self, run_id: int) -> None:
        items = self.ledger.reprocess_items(run_id)
        todo = [i for i in items if i.action != "skip"]
        self.on_progress(sum(i.state in FINAL for i in todo), len(todo))

    def _hold(self) -> str | None:
        """Wait while stat work waits; why the run must stop now, or None."""
        paused = False
        while True:
            if self._stop.is_set():
                return "interrupted"
            if self.scheduled and not in_hours(self.cfg.reprocess.hours, self.now_local()):
                return f"outside reprocess.hours ({self.cfg.reprocess.hours}); the next run goes on"
            waiting = self.ledger.stat_work_waiting()
            if not waiting:
                if paused:
                    logger.info("stat work done; batch retrieval goes on")
                return None
            if not paused:
                logger.info("stat work waiting; batch retrieval paused", extra={"stat_jobs": waiting})
                paused = True
            self.sleep(self.cfg.reprocess.stat_poll_s)

    def _retrieve_all(self, run_id: int) -> str | None:
        items = self.ledger.reprocess_items(run_id, [FOUND, RETRIEVING])
        studies: dict[str, list[ReprocessItem]] = {}
        for item in items:
            studies.setdefault(item.study_uid, []).append(item)
        interval = 60.0 / self.cfg.reprocess.studies_per_minute
        slots = threading.Semaphore(self.cfg.reprocess.max_concurrent_retrieves)
        pending: list[Future[None]] = []
        stopped = None
        next_start = self.clock()
        self._progress(run_id)
        with ThreadPoolExecutor(self.cfg.reprocess.max_concurrent_retrieves, "retrieve") as pool:
            for study_items in studies.values():
                stopped = self._hold()
                if stopped:
                    break
                if any(i.action != "follow" for i in study_items):
                    delay = next_start - self.clock()
                    if delay > 0:
                        self.sleep(delay)
                    next_start = self.clock() + interval
                slots.acquire()
                future = pool.submit(self._study, run_id, study_items)
                future.add_done_callback(lambda _f: slots.release())
                pending.append(future)
            for future in pending:
                future.result()
        done = sum(1 for f in pending if f.done())
        self.ledger.set_reprocess_run(run_id, studies_done=done)
        return stopped

    def _study(self, run_id: int, items: list[ReprocessItem]) -> None:
        for item in items:
            try:
                self._series(run_id, item)
            except Exception as exc:  # noqa: BLE001 - one series' failure is recorded, the run goes on
                logger.exception("reprocess of a series failed", extra={"series": short_uid(item.series_uid)})
                self.ledger.set_reprocess_item(run_id, item.series_uid, FAILED, reason=f"retrieve: {exc}")
            self._progress(run_id)

    def _series(self, run_id: int, item: ReprocessItem) -> None:
        if item.action == "follow":
            job = self.ledger.latest_job(item.series_uid)
            if job is None:
                self.ledger.set_reprocess_item(run_id, item.series_uid, FAILED, reason="the job it followed vanished")
            else:
                self.ledger.set_reprocess_item(run_id, item.series_uid, QUEUED, job_id=job.id)
            return
        if item.action == "redo" and item.previous_job_id is not None and self._files_present(item.previous_job_id):
            self.ledger.reopen_series(run_id, item.series_uid, item.previous_job_id)
            return
        self.ledger.set_reprocess_item(run_id, item.series_uid, RETRIEVING)
        result = self._retrieve(item)
        if not result.ok:
            self.ledger.set_reprocess_item(
                run_id, item.series_uid, FAILED, method=result.method,
                reason=f"C-{result.method.upper()} status 0x{result.status:04X}: {result.failed} of "
                       f"{result.completed + result.failed + result.warning} instance(s) failed")
            return
        if item.action == "redo" and item.previous_job_id is not None:
            self.ledger.reopen_series(run_id, item.series_uid, item.previous_job_id)
            return
        job = self.ledger.latest_job(item.series_uid)
        if job is None:
            self.ledger.set_reprocess_item(run_id, item.series_uid, FAILED, method=result.method,
                                           reason=f"C-{result.method.upper()} delivered no instance to the node")
            return
        self.ledger.set_reprocess_item(run_id, item.series_uid, QUEUED, job_id=job.id, method=result.method)

    def _files_present(self, job_id: int) -> bool:
        paths = self.ledger.instance_paths(job_id)
        base = Path(self.cfg.data_dir)
        return bool(paths) and all((p if p.is_absolute() else base / p).is_file() for p in paths)

    # -- retrieval -----------------------------------------------------------------------------
    def _retrieve(self, item: ReprocessItem) -> qr.Retrieved:
        aet, timeout = self.cfg.node.ae_title, self.source.timeout_s
        if not self.use_get:
            try:
                result = qr.move_series(self.source, aet, aet, item.study_uid, item.series_uid, timeout)
            except ValueError:
                result = qr.Retrieved("move", 0xFFFF)  # the PACS refused the C-MOVE context
            if result.status == qr.STATUS_MOVE_DESTINATION_UNKNOWN or (result.refused and result.status != 0xFFFF):
                with self._lock:
                    if not self.use_get:
                        self.use_get = True
                        message = str(qr.MoveDestinationUnknown(self.source, self.source.name, aet,
                                                                self.cfg.node.port, result.status))
                        logger.error(message)
                        self.on_notice(message)
            elif result.ok:
                return result
            else:
                logger.warning("C-MOVE failed; trying C-GET", extra={"series": short_uid(item.series_uid),
                                                                     "status": f"0x{result.status:04X}",
                                                                     "comment": result.comment[:120]})
        return self._get(item, aet, timeout)

    def _get(self, item: ReprocessItem, aet: str, timeout: float) -> qr.Retrieved:
        from dicom_node.receive_handlers import ReceiverState, handle_store  # pynetdicom's receive path only here
        from dicom_node.spool import Spool

        state = ReceiverState(self.cfg.node.min_free_disk_gb)
        spool = Spool(self.cfg.data_dir)
        state.disk_checked(spool.free_gb())
        assoc_id = f"get-{uuid.uuid4().hex}"

        def opened(assoc: Any) -> None:
            state.assoc_ids[assoc] = assoc_id
            self.ledger.open_association(assoc_id, self.source.ae_title)

        retrieved = None
        try:
            retrieved = qr.get_series(self.source, aet, item.study_uid, item.series_uid,
                                      lambda event: handle_store(event, spool, self.ledger, state), on_open=opened,
                                      timeout=timeout)
            return retrieved
        finally:
            # A retrieval cut short leaves the series marked as possibly incomplete.
            self.ledger.close_association(assoc_id, aborted=retrieved is None)

    # -- outcomes ------------------------------------------------------------------------------
    def _wait(self, run_id: int) -> str | None:
        deadline = self.clock() + self.cfg.reprocess.wait_s
        while True:
            open_items = self.ledger.reprocess_items(run_id, [QUEUED])
            for item in open_items:
                self._settle(run_id, item)
            self._progress(run_id)
            if not self.ledger.reprocess_items(run_id, [QUEUED]):
                return None
            if self._stop.is_set():
                return "interrupted"
            if self.clock() >= deadline:
                return f"analyses still pending after reprocess.wait_s ({self.cfg.reprocess.wait_s:g} s)"
            self.sleep(WAIT_POLL_S)

    def _settle(self, run_id: int, item: ReprocessItem) -> None:
        job_id = item.job_id
        seen = set()
        while job_id is not None and job_id not in seen:
            seen.add(job_id)
            job = self.ledger.job(job_id)
            if job.superseded_by is not None and job.state not in _FINAL_JOB:
                job_id = job.superseded_by  # more instances arrived: the newer job carries the series
                continue
            state = _FINAL_JOB.get(job.state)
            if state is not None:
                self.ledger.set_reprocess_item(run_id, item.series_uid, state, job_id=job.id,
                                               reason=job.reason if state != ANALYSED else None)
            elif job_id != item.job_id:
                self.ledger.set_reprocess_item(run_id, item.series_uid, QUEUED, job_id=job.id)
            return

    def summary(self, run_id: int, resumed: bool, finished: bool, stopped: str | None) -> Summary:
        out = Summary(run_id=run_id, resumed=resumed, finished=finished, stopped=stopped)
        for item in self.ledger.reprocess_items(run_id):
            out.counts["found"] += 1
            category = item.state if item.state in FINAL else "pending"
            out.counts[category] += 1
            if item.method is not None:
                out.counts["retrieved"] += 1
            elif item.action == "redo" and item.job_id is not None:
                out.counts["reopened"] += 1  # analysed again from the instances the node holds
            if item.reason and category not in (ANALYSED,):
                out.reasons.setdefault(category, Counter())[item.reason] += 1
        return out
