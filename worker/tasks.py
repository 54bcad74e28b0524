"""The Celery task: a thin, idempotent adapter around ``worker.pipeline.run_job``.

It takes a job id and the manifest's path relative to ``data_dir`` (never arrays), runs the
pipeline with the process's cached model and returns a short summary; the real result is the
``outcome.json`` the node reads from the shared ``data_dir``.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery import Celery, Task

from dicom_node.config import Config
from dicom_node.contract import TASK_NAME, count_start, job_dir, read_manifest
from dicom_node.heartbeats import redis_heartbeat
from worker import model_cache
from worker.pipeline import HeartbeatFactory, failed_outcome, run_job

__all__ = ["register_tasks"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def broker_heartbeat(cfg: Config) -> Iterator[HeartbeatFactory]:
    """The heartbeat of a Celery task: a key in the broker's Redis that lives
    ``queue.heartbeat_timeout_s`` after each beat, so the node (on any host) sees this worker
    alive while the key exists. The client is made in the process that runs the task (after
    any fork) and closed with it."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One quick retry (a pooled connection that a Redis restart closed), no backoff: a beat
    # that fails is tried again at the next beat, and a broker that is down must not hold up
    # the job for redis-py's default backoff of seconds per beat.
    client = redis.Redis.from_url(cfg.queue.broker_url, socket_timeout=5, socket_connect_timeout=5,
                                  retry=Retry(NoBackoff(), 1))
    try:
        yield lambda _folder, job_id: redis_heartbeat(client, job_id, cfg.queue.heartbeat_timeout_s)
    finally:
        client.close()


def segment(cfg: Config, job_id: int, manifest_path: str, *, redelivered: bool = False) -> dict[str, Any]:
    """Body of the task, callable without Celery (tests).

    Each start is counted in ``results/<job>/starts``. A series whose analysis keeps killing
    the worker (out of memory, a crash in native code) would otherwise be redelivered forever
    by ``task_reject_on_worker_lost``: past ``queue.max_submissions`` starts the job is failed
    with a status report instead of being run again.
    """
    manifest = read_manifest(cfg.data_dir / manifest_path)
    with broker_heartbeat(cfg) as beat:
        if manifest.mode == "report":  # quick and header-only: nothing to guard
            outcome = run_job(manifest_path, cfg.data_dir, cfg, None, beat)
            return {"job_id": job_id, "state": outcome["state"], "files": len(outcome["files"])}
        starts = count_start(job_dir(cfg.data_dir, job_id))
        if redelivered or starts > 1:
            logger.warning("job started again", extra={"job": job_id, "start": starts, "redelivered": redelivered})
        if starts > cfg.queue.max_submissions:
            reason = (f"the worker stopped {starts - 1} times while analysing this series (killed or crashed); "
                      "it is not retried")
            outcome = failed_outcome(manifest_path, cfg.data_dir, cfg, reason, "inference", beat)
        else:
            outcome = run_job(manifest_path, cfg.data_dir, cfg, lambda: model_cache.get_segmenter(cfg), beat)
    return {"job_id": job_id, "state": outcome["state"], "files": len(outcome["files"])}


def register_tasks(app: Celery, cfg: Config) -> Task:
    """Register ``worker.tasks.segment_series`` on ``app``, bound to ``cfg`` (no globals)."""

    # shared=False: Celery's default registers a task in every app created later, so a second
    # app (another config) would run the first app's closure over the first config.
    @app.task(name=TASK_NAME, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True)
    def segment_series(self: Task, job_id: int, manifest_path: str) -> dict[str, Any]:
        info = self.request.delivery_info or {}
        return segment(cfg, int(job_id), str(manifest_path), redelivered=bool(info.get("redelivered")))

    return segment_series
