"""Hands complete jobs to workers and records what they produced.

The node and its workers share only ``data_dir`` (on worker hosts: the same folder mounted at
each worker's own ``node.data_dir``) and the job contract (``dicom_node.contract``). For each job
the node writes ``results/<job id>/job.json`` and submits the task by name with
``(job_id, "results/<job id>/job.json")``; the worker keeps a heartbeat while it runs (a Redis
key with a time to live, or with the embedded queue a file: :mod:`dicom_node.heartbeats`) and
writes ``outcome.json`` last. The ledger stays the record of every job. Each ``run_once`` pass:

- collects outcomes (ledger transition plus one delivery per destination) and marks jobs running
  when their heartbeat appears (:mod:`.outcomes`);
- detects lost tasks and puts their jobs back to ``complete`` (:mod:`.lost`);
- submits ``complete`` jobs, up to ``queue.max_submissions`` times, then fails the job visibly
  at stage ``queue`` (:mod:`.scheduler`);
- requests a status SR for a ``not_analysed`` or ``failed`` CT series, so nobody reads silence
  as negative (:mod:`.reports`).

Tasks travel through Celery and Redis (:mod:`.celery_transport`) or, with
``queue.broker_url: embedded``, through a thread of this process (:mod:`.embedded`) that calls
the job runner handed in by the command starting the node: this package never imports
``worker``.
"""
from __future__ import annotations

from dicom_node.config import Config
from dicom_node.ledger import Ledger
from dicom_node.submit.celery_transport import BROKER_ALERT_S, CelerySubmitter
from dicom_node.submit.embedded import EmbeddedSubmitter, JobRunner
from dicom_node.submit.scheduler import Submitter

__all__ = ["BROKER_ALERT_S", "CelerySubmitter", "EmbeddedSubmitter", "JobRunner", "Submitter", "make_submitter"]


def make_submitter(cfg: Config, ledger: Ledger | None = None, runner: JobRunner | None = None) -> Submitter:
    """The embedded submitter for ``queue.broker_url: embedded``, else the Celery submitter.

    Raises
    ------
    ValueError
        When the queue is embedded and no ``runner`` was given.
    """
    if cfg.queue.broker_url == "embedded":
        if runner is None:
            raise ValueError("queue.broker_url 'embedded' runs jobs inside the node: a job runner must be given "
                             "(worker.embedded.make_runner); got None")
        return EmbeddedSubmitter(cfg, ledger, runner=runner)
    return CelerySubmitter(cfg, ledger)
