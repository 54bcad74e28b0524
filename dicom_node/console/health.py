"""``/readyz``: whether the node can take work now (ledger, queue and model usable)."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from dicom_node.config import Config
from dicom_node.ledger import Ledger

#: File name of the shipped weights inside the ``segmenter`` package (segmenter.weights).
SHIPPED_WEIGHTS = ("weights", "csr_unet.pt")


def weights_path(cfg: Config) -> Path | None:
    """The weights the model runs with: ``model.weights``, else the shipped file (found without
    importing the segmenter, which the node process never loads with a real broker)."""
    if cfg.model.weights is not None:
        return cfg.model.weights
    spec = importlib.util.find_spec("segmenter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*SHIPPED_WEIGHTS)


def model_problems(cfg: Config, ledger: Ledger) -> list[str]:
    """Why the model is not usable: its weights file is missing where this process runs it
    (embedded queue), or the newest analysis could not load it and none succeeded since."""
    problems = []
    if cfg.queue.broker_url == "embedded":
        path = weights_path(cfg)
        if path is None or not path.is_file():
            problems.append(f"model weights not found at {path} (model.weights)")
    [failed] = ledger.recent_outcomes(["failed"], 1) or [None]
    [done] = ledger.recent_outcomes(["done"], 1) or [None]
    if failed is not None and failed.fail_stage == "load" and (done is None or done.updated_at < failed.updated_at):
        problems.append(f"the model could not be loaded for job {failed.id}: {failed.reason}")
    return problems


def readiness_problems(cfg: Config, ledger: Ledger, queue_problems: Callable[[], list[str]]) -> list[str]:
    """Empty when the ledger answers, the queue is reachable and the model is usable."""
    try:
        ledger.counts()
    except Exception as exc:  # noqa: BLE001 - any ledger error makes the node unready
        return [f"ledger unusable: {type(exc).__name__}: {exc}"]
    return [f"queue: {p}" for p in queue_problems()] + model_problems(cfg, ledger)
