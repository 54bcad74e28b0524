"""Hands complete jobs to workers and records what they produced.

The node and its workers share only ``data_dir`` (on worker hosts: the same folder mounted at
each worker's own ``node.data_dir``) and the task name. For each job the node writes
``results/<job id>/job.json`` (paths relative to ``data_dir``) and submits
``worker.tasks.segment_series(job_id, "results/<job id>/job.json")``; the worker touches
``heartbeat`` while it runs and writes ``outcome.json`` last. ``run_once`` then:

- submits ``complete`` jobs (a ``not_analysed`` or ``failed`` CT series gets a "report" job
  that only writes the status SR, so nobody reads silence as negative);
- records outcomes (ledger transition + one delivery per destination), marks jobs running when
  their heartbeat appears;
- detects lost tasks (stale heartbeat; or queued but in neither the Redis lane nor kombu's
  ``unacked`` hash, e.g. Redis restarted empty) and resubmits them up to
  ``queue.max_submissions`` times, then fails the job visibly at stage ``queue``.

This module never imports ``worker`` at import time; the embedded runner imports it lazily.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from dicom_node.assembler import needs_status_report
from dicom_node.config import Config
from dicom_node.ledger import FailStage, Job, JobState, Ledger
from dicom_node.logs import short_uid
from dicom_node.names import HEARTBEAT_FILE, OUTCOME_FILE, RESULTS_DIR
from dicom_node.outage import Outage

logger = logging.getLogger(__name__)

TASK_NAME = "worker.tasks.segment_series"
LANES = ("stat", "routine", "batch")
MANIFEST_FILE = "job.json"
FORMAT = 1  # of job.json and outcome.json; worker.manifest.FORMAT must match
CT_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
#: A queued task must be missing from the broker for this long (two looks) before it counts as
#: lost: between BRPOP and the unacked HSET a message is briefly in neither place.
MISSING_GRACE_S = 2.0
#: Broker look-ups at most this often; each reads the lane lists and the unacked hash.
BROKER_CHECK_INTERVAL_S = 2.0
#: An idle node pings the broker this often, so an outage is noticed before a study arrives.
BROKER_PING_INTERVAL_S = 10.0
#: A broker unreachable for this long is reported (ERROR log, /healthz, status).
BROKER_ALERT_S = 60.0


class _Submitter:
    """Shared logic; subclasses say how a task is sent and whether it is still in flight."""

    def __init__(self, cfg: Config, ledger: Ledger | None = None) -> None:
        self.cfg = cfg
        self.ledger: Ledger = ledger  # type: ignore[assignment]  # or the one run_once is given
        self.data_dir = Path(cfg.data_dir)
        self._missing_since: dict[str, float] = {}

    # -- to be provided --------------------------------------------------------------------
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

    # -- the loop body ---------------------------------------------------------------------
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
        for job in self.ledger.jobs([JobState.COMPLETE]):
            try:
                self._submit(job, now, counts)
            except Exception:
                logger.exception("submitting a job failed", extra={"job": job.id})
        for job in self.ledger.jobs_without_files([JobState.NOT_ANALYSED, JobState.FAILED]):
            try:
                self._report(job, now, counts)
            except Exception:
                logger.exception("status report handling failed", extra={"job": job.id})
        return counts

    def folder(self, job_id: int) -> Path:
        return self.data_dir / RESULTS_DIR / str(job_id)

    def _write_manifest(self, job: Job, lane: str, mode: str, **report: Any) -> str:
        instances = []
        base = self.data_dir.resolve()
        for path in self.ledger.instance_paths(job.id):
            full = (self.data_dir / path).resolve() if not path.is_absolute() else path.resolve()
            rel = os.path.relpath(full, base)
            if rel.startswith(".."):
                raise ValueError(f"instance file {full} is outside node.data_dir {base}; workers cannot reach it")
            instances.append(rel)
        data = {"format": FORMAT, "job_id": job.id, "series_uid": job.series_uid, "study_uid": job.study_uid,
                "instances": sorted(instances), "lane": lane, "mode": mode, "state": report.get("state"),
                "reason": report.get("reason"), "fail_stage": report.get("fail_stage"),
                "extra": report.get("extra") or {}}
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MANIFEST_FILE}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / MANIFEST_FILE)
        (folder / HEARTBEAT_FILE).unlink(missing_ok=True)  # a stale one would read as "running"
        return f"{RESULTS_DIR}/{job.id}/{MANIFEST_FILE}"

    def _outcome(self, job_id: int, mode: str | None = None) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder(job_id) / OUTCOME_FILE).read_text(encoding="utf-8"))
            manifest = json.loads((self.folder(job_id) / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("job_id") != job_id:
            return None
        if data.get("state") not in ("done", "failed", "not_analysed"):
            return None
        if mode is not None and manifest.get("mode") != mode:
            return None  # an outcome of the analysis, while we wait for the status report
        return data

    def _heartbeat_age(self, job_id: int, now: float) -> float | None:
        try:
            return now - (self.folder(job_id) / HEARTBEAT_FILE).stat().st_mtime
        except OSError:
            return None

    def _submit(self, job: Job, now: float, counts: dict[str, int]) -> None:
        lane = job.lane if job.lane in LANES else LANES[0]
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

    def _record(self, job: Job, outcome: dict[str, Any], now: float) -> bool:
        state = JobState(outcome["state"])
        moved = self.ledger.transition(
            job.id, state, reason=outcome.get("reason"), fail_stage=outcome.get("fail_stage"),
            result=outcome, expect=[JobState.QUEUED, JobState.RUNNING], now=now,
            detail=f"{len(outcome.get('files', []))} result file(s) by {outcome.get('worker')}")
        if moved:
            self._deliver(job.id, outcome, now)
            logger.info("job outcome recorded", extra={"job": job.id, "state": state.value,
                                                       "fail_stage": outcome.get("fail_stage"),
                                                       "files": len(outcome.get("files", []))})
        return moved

    def _deliver(self, job_id: int, outcome: dict[str, Any], now: float) -> None:
        if outcome.get("files"):
            self.ledger.add_deliveries(job_id, [d.name for d in self.cfg.destinations], now=now)

    def _collect(self, now: float, counts: dict[str, int]) -> None:
        jobs = self.ledger.jobs([JobState.QUEUED, JobState.RUNNING])
        unseen: dict[str, Job] = {}
        for job in jobs:
            age = self._heartbeat_age(job.id, now)
            # A worker writes the heartbeat before anything else, so without one there is no
            # outcome to read: a backlog of queued jobs costs one stat each per pass.
            outcome = self._outcome(job.id) if age is not None else None
            if outcome is not None:
                counts["recorded"] += self._record(job, outcome, now)
                continue
            timeout = self.cfg.queue.heartbeat_timeout_s
            if age is not None and age <= timeout:
                self._missing_since.pop(job.task_id or "", None)
                if job.state == JobState.QUEUED and self.ledger.transition(
                        job.id, JobState.RUNNING, expect=[JobState.QUEUED], now=now, detail="worker heartbeat"):
                    counts["running"] += 1
            elif job.state == JobState.RUNNING:
                # A pool process that died hands its task back to the lane (reject_on_worker_lost):
                # it waits for a worker there and is not lost. A dead whole worker leaves it in
                # ``unacked`` until the visibility timeout, which is no sign of life.
                waiting = self._in_flight({job.task_id or ""}, now, waiting_only=True)
                if waiting is None or waiting:
                    continue
                why = f"worker heartbeat {'missing' if age is None else f'stale for {age:.0f} s'}"
                self._lost(job, why, now, counts)
            elif job.task_id:
                unseen[job.task_id] = job
        if not unseen:
            return
        held = self._in_flight(set(unseen), now)
        if held is None:
            return
        for task_id, job in unseen.items():
            if task_id in held:
                self._missing_since.pop(task_id, None)
                continue
            first = self._missing_since.setdefault(task_id, now)
            if now - first < MISSING_GRACE_S:
                continue
            # The worker writes the outcome before it acknowledges: look once more.
            outcome = self._outcome(job.id)
            if outcome is not None:
                counts["recorded"] += self._record(job, outcome, now)
            else:
                self._lost(job, "task no longer in the queue (broker restarted or emptied)", now, counts)

    def _lost(self, job: Job, why: str, now: float, counts: dict[str, int]) -> None:
        self._missing_since.pop(job.task_id or "", None)
        logger.warning("task lost; job requeued", extra={"job": job.id, "task": job.task_id, "why": why,
                                                         "submissions": job.submissions})
        self.ledger.requeue(job.id, why, now=now)
        counts["lost"] += 1

    def _report(self, job: Job, now: float, counts: dict[str, int]) -> None:
        """Status SR for a failed or not-analysed CT series, made by a worker in "report" mode."""
        base = dict(job.result or {})
        if job.superseded_by is not None or not self._wants_report(job):
            self.ledger.record_result(job.id, {**base, "files": []}, now=now)
            return
        outcome = self._outcome(job.id, mode="report")
        if outcome is not None:
            self.ledger.record_result(job.id, {**base, **outcome, "state": job.state.value}, now=now,
                                      detail=f"status report: {len(outcome.get('files', []))} file(s)")
            self._deliver(job.id, outcome, now)
            counts["reports"] += 1
            return
        try:
            manifest = json.loads((self.folder(job.id) / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        sent = manifest.get("mode") == "report"
        attempt = int((manifest.get("extra") or {}).get("attempt", 0)) if sent else 0
        if sent:
            age = self._heartbeat_age(job.id, now)
            task_id = (manifest.get("extra") or {}).get("task_id", "")
            if age is not None and age <= self.cfg.queue.heartbeat_timeout_s:
                return
            held = self._in_flight({task_id}, now)
            if held is None or task_id in held:
                return
            first = self._missing_since.setdefault(task_id, now)
            if now - first < MISSING_GRACE_S or self._outcome(job.id, mode="report") is not None:
                return
            self._missing_since.pop(task_id, None)
            if attempt >= self.cfg.queue.max_submissions:
                logger.error("status report could not be produced", extra={"job": job.id, "attempts": attempt})
                self.ledger.record_result(job.id, {**base, "files": [], "report_error": "status report task lost"},
                                          now=now, detail=f"status report lost {attempt} times; none sent")
                return
        task_id = f"job{job.id}-report{attempt + 1}-{uuid.uuid4().hex[:12]}"
        lane = job.lane if job.lane in LANES else LANES[0]
        try:
            rel = self._write_manifest(job, lane, "report", state=job.state.value,
                                       reason=job.reason or "not analysed", fail_stage=job.fail_stage,
                                       extra={"attempt": attempt + 1, "task_id": task_id})
        except ValueError as exc:
            self.ledger.record_result(job.id, {**base, "files": [], "report_error": str(exc)}, now=now,
                                      detail=f"no status report: {exc}")
            return
        try:
            self._send(job.id, rel, lane, task_id)
        except Exception as exc:
            logger.warning("queue unreachable; status report not sent yet", extra={"job": job.id,
                                                                                  "error": str(exc)[:200]})

    def _wants_report(self, job: Job) -> bool:
        if job.state == JobState.NOT_ANALYSED:
            # The assembler decides (CT images only; never our own results, which would loop).
            return needs_status_report(job)
        return any(h["sop_class_uid"] in CT_CLASSES for h in self.ledger.headers_for_job(job.id))


class EmbeddedSubmitter(_Submitter):
    """Runs jobs in this process, one at a time, on a background thread (no broker needed).

    Lanes are honoured: a stat job waiting behind a batch backlog runs next. Tasks live only in
    memory, so after a restart every queued or running job is found lost and resubmitted.
    """

    def __init__(self, cfg: Config, ledger: Ledger | None = None) -> None:
        super().__init__(cfg, ledger)
        self._queue: queue.PriorityQueue[tuple[int, int, str, int, str]] = queue.PriorityQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def _send(self, job_id: int, manifest_rel: str, lane: str, task_id: str) -> None:
        with self._lock:
            self._pending.add(task_id)
            self._seq += 1
            self._queue.put((LANES.index(lane), self._seq, task_id, job_id, manifest_rel))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="embedded-worker", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        from worker import model_cache
        from worker.pipeline import run_job

        while True:
            _, _, task_id, job_id, manifest_rel = self._queue.get()
            if job_id < 0:
                return
            try:
                run_job(manifest_rel, self.data_dir, self.cfg, lambda: model_cache.get_segmenter(self.cfg))
            except Exception:
                logger.exception("embedded job raised; it will be found lost", extra={"job": job_id})
            finally:
                with self._lock:
                    self._pending.discard(task_id)

    def _in_flight(self, task_ids: set[str], now: float, waiting_only: bool = False) -> set[str] | None:
        with self._lock:
            return task_ids & self._pending

    def idle(self) -> bool:
        """True when no job is waiting or running here."""
        with self._lock:
            return not self._pending

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put((-1, -1, "", -1, ""))
            self._thread.join(timeout=self.cfg.queue.time_limit_s)


class CelerySubmitter(_Submitter):
    """Sends tasks by name to Celery workers through Redis."""

    def __init__(self, cfg: Config, ledger: Ledger | None = None) -> None:
        super().__init__(cfg, ledger)
        import redis
        from celery import Celery
        from kombu import Queue

        opts = cfg.queue
        self.app = Celery("dural_node_submit", broker=opts.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options={"visibility_timeout": opts.visibility_timeout_s,
                                      "socket_connect_timeout": 5, "socket_timeout": 10},
            task_queues=[Queue(lane, routing_key=lane) for lane in LANES], task_default_queue=LANES[0],
            task_serializer="json", accept_content=["json"], task_ignore_result=True,
            broker_connection_retry_on_startup=True)
        self.redis = redis.Redis.from_url(opts.broker_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        except Exception:  # unreachable now, or CONFIG disabled (managed Redis): checked nowhere else
            policy = "noeviction"
        if policy != "noeviction":
            # An evicting Redis may drop queued tasks under memory pressure; the node would then
            # find them lost and resubmit, but it should not have to.
            logger.warning("Redis maxmemory-policy should be noeviction", extra={"policy": policy})
        self._in_lanes: set[str] = set()
        self._unacked: set[str] = set()
        self._checked_at = float("-inf")
        self._pinged_at = float("-inf")
        self.broker = Outage("queue broker", BROKER_ALERT_S)

    def _send(self, job_id: int, manifest_rel: str, lane: str, task_id: str) -> None:
        now = time.time()
        try:
            self.app.send_task(TASK_NAME, args=[job_id, manifest_rel], queue=lane, task_id=task_id, retry=True,
                               retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                             "interval_max": 1})
        except Exception as exc:
            self.broker.failed(now, exc)
            raise
        self.broker.ok(now)

    def _probe(self, now: float) -> None:
        if now - self._pinged_at < BROKER_PING_INTERVAL_S:
            return
        self._pinged_at = now
        try:
            self.redis.ping()
        except Exception as exc:
            self.broker.failed(now, exc)
        else:
            self.broker.ok(now)

    def health(self, now: float) -> list[str]:
        problem = self.broker.problem(now)
        return [problem] if problem else []

    def _in_flight(self, task_ids: set[str], now: float, waiting_only: bool = False) -> set[str] | None:
        """Task ids found in a lane list or in kombu's ``unacked`` hash (reserved by a worker)."""
        if now - self._checked_at >= BROKER_CHECK_INTERVAL_S:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for lane in LANES:
                    pipe.lrange(lane, 0, -1)
                pipe.hvals("unacked")
                *lanes, unacked = pipe.execute()
            except Exception as exc:
                logger.warning("broker unreachable; cannot check queued tasks", extra={"error": str(exc)[:200]})
                self.broker.failed(now, exc)
                return None
            self.broker.ok(now)
            self._in_lanes = {_task_id(raw, unacked=False) for lane in lanes for raw in lane}
            self._unacked = {_task_id(raw, unacked=True) for raw in unacked}
            self._checked_at = now
        return task_ids & (self._in_lanes if waiting_only else self._in_lanes | self._unacked)

    def close(self) -> None:
        self.redis.close()


def _task_id(raw: bytes, unacked: bool) -> str:
    try:
        message = json.loads(raw)
        return str((message[0] if unacked else message)["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def make_submitter(cfg: Config, ledger: Ledger | None = None) -> _Submitter:
    """The embedded runner for ``queue.broker_url: embedded``, else the Celery submitter."""
    if cfg.queue.broker_url == "embedded":
        return EmbeddedSubmitter(cfg, ledger)
    return CelerySubmitter(cfg, ledger)
