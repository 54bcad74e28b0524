"""One loaded ``Segmenter`` per worker process, loaded lazily and after any fork.

Loading at import would load the model in Celery's parent process and fork it into every child
(torch thread pools and CUDA contexts do not survive a fork), and would make importing the task
module slow. ``get_segmenter`` loads on first use in the calling process; ``warm`` does the same
from Celery's ``worker_process_init`` so that the first job does not pay for it.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from dicom_node.config import Config
from segmenter.findings import ModelInfo

__all__ = ["fallback_model_info", "get_segmenter", "warm"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
#: (pid, weights, device, threads, bf16) -> Segmenter. The pid makes a forked child load its own.
_cache: dict[tuple[int, str, str, int, bool | None], Any] = {}


def _key(cfg: Config) -> tuple[int, str, str, int, bool | None]:
    return (os.getpid(), str(cfg.model.weights or ""), cfg.model.device, cfg.model.threads, cfg.model.bf16)


def get_segmenter(cfg: Config) -> Any:
    """The process's ``segmenter.inference.Segmenter`` for ``cfg.model``, loading it once.

    Raises
    ------
    Exception
        Whatever ``Segmenter.load`` raises (missing weights, hash mismatch); nothing is cached
        then, so a fixed file is picked up by the next job.
    """
    key = _key(cfg)
    with _lock:
        if key not in _cache:
            from segmenter.inference import Segmenter

            logger.info("loading model", extra={"weights": key[1] or "shipped", "device": cfg.model.device})
            device = None if cfg.model.device == "auto" else cfg.model.device  # None: CUDA when present
            _cache[key] = Segmenter.load(cfg.model.weights, device=device, threads=cfg.model.threads,
                                         bf16=cfg.model.bf16)
        return _cache[key]


def warm(cfg: Config) -> None:
    """Load the model now; a failure is logged and left for the first job to report."""
    try:
        get_segmenter(cfg)
    except Exception:
        logger.exception("model could not be loaded; jobs will fail at stage load until it is fixed")


def fallback_model_info(cfg: Config) -> ModelInfo:
    """Identify the configured model without loading it, for status reports when loading failed.

    Uses the weights' manifest or file hash when they can be read; otherwise an all-zero hash,
    so a report still names the algorithm that was meant to run.
    """
    sha = "0" * 64
    version = "unknown"
    try:
        from segmenter import weights as weights_mod

        path = Path(cfg.model.weights) if cfg.model.weights else weights_mod.SHIPPED_WEIGHTS
        manifest_path = path.with_suffix(".json")
        if manifest_path.is_file():
            manifest = weights_mod.read_manifest(manifest_path)
            sha, version = str(manifest.get("sha256", sha)), str(manifest.get("version", version))
        elif path.is_file():
            sha = weights_mod.sha256_file(path)
    except Exception:  # the report must still go out when even this fails
        logger.warning("cannot identify the model weights for a status report", exc_info=True)
    return ModelInfo(name="CSR-UNet SDH/EDH", version=version, weights_sha256=sha)
