"""The Celery application, built from the typed config; no task code lives here.

Delivery guarantees come from the broker settings below, not from Celery's result backend: a
worker writes its outcome into ``results/<job id>/`` on the shared ``data_dir`` and the node,
which owns the ledger, reads it from there. So there is no result backend at all.
"""
from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from dicom_node.config import Config

__all__ = ["LANES", "TASK_NAME", "broker_options", "make_celery"]

#: Queue lanes, most urgent first. A worker consumes them in this order (strictly: see
#: ``queue_order_strategy`` below), which is more predictable than Redis message priorities.
LANES = ("stat", "routine", "batch")
#: The node submits by this name and never imports the worker package.
TASK_NAME = "worker.tasks.segment_series"


def broker_options(cfg: Config) -> dict[str, Any]:
    """Celery settings shared by the node's publisher and the workers.

    ``visibility_timeout`` must exceed the worst-case wait plus run time: with ``acks_late`` an
    unacknowledged message older than this is handed to a second worker. ``priority`` keeps the
    lane order on every poll; kombu's default ``round_robin`` would rotate it for fairness and
    let a batch backlog delay a stat series.
    """
    return {
        "broker_url": cfg.queue.broker_url,
        "broker_transport_options": {
            "visibility_timeout": cfg.queue.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(lane, routing_key=lane) for lane in LANES],
        "task_default_queue": LANES[0],
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # The node's loop must not hang on a dead broker: fail the publish fast and retry the
        # submission on its next pass instead.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 1},
    }


def make_celery(cfg: Config, *, register: bool = True) -> Celery:
    """Create the Celery app for ``cfg.queue.broker_url``.

    Parameters
    ----------
    cfg:
        The node configuration; its ``data_dir`` must be the shared spool on worker hosts.
    register:
        Register the tasks (``worker.tasks``) on the app; the node's publisher does not need them.

    Returns
    -------
    celery.Celery
        Not set as the current app, so several apps (tests, node and worker) can coexist.

    Raises
    ------
    ValueError
        When the broker is ``embedded`` (there is no broker to connect a worker to).
    """
    if cfg.queue.broker_url == "embedded":
        raise ValueError("queue.broker_url must be a redis:// URL to run Celery workers; got 'embedded' "
                         "(the embedded queue runs jobs inside `dicom-node serve`)")
    app = Celery("dural_node", set_as_current=False)
    app.conf.update(
        broker_options(cfg),
        # A job is acknowledged only after its outcome is on disk; a worker that dies mid-job
        # hands it back instead of losing it (the task is idempotent, so a re-run is harmless).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=cfg.queue.soft_time_limit_s,
        task_time_limit=cfg.queue.time_limit_s,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=True,
        # Long model runs: do not let a broker blip cancel a job that is about to finish.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if register:
        from worker.tasks import register_tasks

        register_tasks(app, cfg)
    return app
