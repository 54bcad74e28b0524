"""The job runner of the embedded queue (``queue.broker_url: embedded``).

``dicom-node serve`` and ``dicom-node demo`` hand the runner that :func:`make_runner` builds to
the node; its embedded submitter calls it on its own thread for each job: the same ``run_job`` a
Celery task calls, with the process's cached model. The node itself never imports this package.
"""
from __future__ import annotations

from typing import Callable

from dicom_node.config import Config

__all__ = ["make_runner"]


def make_runner(cfg: Config) -> Callable[[str], object]:
    """A callable that runs the job whose manifest is at the given path (relative to ``data_dir``).

    The model loads on the first job, not here, so a node that never gets a CT starts fast.
    """
    from worker import model_cache
    from worker.pipeline import run_job

    def run(manifest_ref: str) -> object:
        return run_job(manifest_ref, cfg.data_dir, cfg, lambda: model_cache.get_segmenter(cfg))

    return run
