"""The Celery transport: tasks go by name to Celery workers through Redis.

Besides publishing, it answers "is this task still in flight?" from kombu's Redis layout: a
waiting message is in the list named after its lane, a reserved one in the ``unacked`` hash;
and "is the worker running this job alive?" from the heartbeat keys workers keep in the same
Redis (:func:`dicom_node.heartbeats.redis_heartbeat`), whichever host they run on.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from dicom_node.config import Config
from dicom_node.contract import LANES, TASK_NAME, broker_options
from dicom_node.heartbeats import HEARTBEAT_INTERVAL_S, heartbeat_key
from dicom_node.ledger import Job, JobState, Ledger
from dicom_node.outage import Outage
from dicom_node.submit.core import Beat
from dicom_node.submit.scheduler import Submitter

logger = logging.getLogger(__name__)

#: Broker look-ups at most this often; each reads the lane lists and the unacked hash.
BROKER_CHECK_INTERVAL_S = 2.0
#: An idle node pings the broker this often, so an outage is noticed before a study arrives.
BROKER_PING_INTERVAL_S = 10.0
#: A broker unreachable for this long is reported (ERROR log, /healthz, status).
BROKER_ALERT_S = 60.0
#: A running job's heartbeat key must stay missing this long before the job counts as lost:
#: longer than two beats, so that a Redis restarted empty gets the keys back from the workers
#: still running before anyone is judged dead.
KEY_MISSING_GRACE_S = 2 * HEARTBEAT_INTERVAL_S + 1


class CelerySubmitter(Submitter):
    """Sends tasks by name to Celery workers through Redis."""

    def __init__(self, cfg: Config, ledger: Ledger | None = None) -> None:
        super().__init__(cfg, ledger)
        import redis
        from celery import Celery

        self.app = Celery("dural_node_submit", set_as_current=False)
        self.app.conf.update(broker_options(cfg))
        self.redis = redis.Redis.from_url(cfg.queue.broker_url, socket_timeout=5, socket_connect_timeout=5)
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
        #: job id -> when its running job's heartbeat key was first found missing
        self._key_missing_since: dict[int, float] = {}

    def _send(self, job_id: int, manifest_rel: str, lane: str, task_id: str) -> None:
        now = time.time()
        try:
            # retry=True follows broker_options' task_publish_retry_policy: a few quick tries.
            self.app.send_task(TASK_NAME, args=[job_id, manifest_rel], queue=lane, task_id=task_id, retry=True)
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

    def _beats(self, jobs: Sequence[Job], now: float) -> dict[int, Beat | None] | None:
        """Heartbeats from the workers' Redis keys: present means alive. A key that expired
        says nothing about when the worker last beat, only that it stopped for longer than
        ``queue.heartbeat_timeout_s`` (the key's time to live), judged by Redis alone."""
        try:
            values = self.redis.mget([heartbeat_key(job.id) for job in jobs])
        except Exception as exc:
            logger.warning("broker unreachable; cannot read worker heartbeats", extra={"error": str(exc)[:200]})
            self.broker.failed(now, exc)
            return None
        out: dict[int, Beat | None] = {}
        for job, value in zip(jobs, values):
            if value is not None:
                self._key_missing_since.pop(job.id, None)
                out[job.id] = Beat(True, True)
            elif job.state != JobState.RUNNING:
                self._key_missing_since.pop(job.id, None)
                out[job.id] = Beat(False, False, "worker heartbeat missing")
            elif now - self._key_missing_since.setdefault(job.id, now) < KEY_MISSING_GRACE_S:
                out[job.id] = None
            else:
                out[job.id] = Beat(False, False, f"worker heartbeat stale: its Redis key expired (no beat for "
                                                 f"queue.heartbeat_timeout_s, {self.cfg.queue.heartbeat_timeout_s:g} s)")
        return out

    def close(self) -> None:
        self.redis.close()


def _task_id(raw: bytes, unacked: bool) -> str:
    try:
        message = json.loads(raw)
        return str((message[0] if unacked else message)["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
