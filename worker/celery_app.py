"""The Celery application, built from the typed config; no task code lives here.

Delivery guarantees come from the broker settings (``dicom_node.contract.broker_options``, shared
with the node's publisher) and the acknowledgement settings below, not from Celery's result
backend: a worker writes its outcome into ``results/<job id>/`` on the shared ``data_dir`` and the
node, which owns the ledger, reads it from there. So there is no result backend at all.
"""
from __future__ import annotations

from celery import Celery

from dicom_node.config import Config
from dicom_node.contract import broker_options

__all__ = ["make_celery"]


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
        # A pool process loads the model (worker_process_init) before it reports up. On a busy
        # host that takes longer than Celery's 4 s default, and Celery would kill and restart
        # pool processes in a loop while the queued job waits.
        worker_proc_alive_timeout=120,
    )
    if register:
        from worker.tasks import register_tasks

        register_tasks(app, cfg)
    return app
