"""Checkpoints, the shipped weights and their manifest (hash, provenance, held-out numbers).

A checkpoint is a ``torch.save`` dict with at least ``model`` (state dict) and ``config``
(``CSRUNetConfig.to_dict()``); training checkpoints also carry the optimizer and history.
Loading always checks the file's SHA-256 first when one is given, before unpickling.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .csr_unet import CSRUNet, CSRUNetConfig

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "csr_unet.pt"
SHIPPED_MANIFEST = WEIGHTS_DIR / "csr_unet.json"


class WeightsError(ValueError):
    """A weights file is missing, does not match its hash, or does not fit the model."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked_load(path: str | Path, sha256: str | None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file must exist; got {path}")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise WeightsError(f"weights sha256 must be {sha256}; got {actual} for {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"weights file must hold a dict with a 'model' state dict; got {path}")
    return ckpt


def load_weights(model: nn.Module, path: str | Path, sha256: str | None) -> dict[str, Any]:
    """Check the file hash, then load its state dict into ``model`` (strict).

    Returns
    -------
    dict
        The whole checkpoint (config, metadata).

    Raises
    ------
    WeightsError
        The file is missing, its SHA-256 differs from ``sha256``, or the keys do not fit.
    """
    ckpt = _checked_load(path, sha256)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise WeightsError(f"weights in {path} must fit the model: {exc}") from exc
    return ckpt


def load_model(path: str | Path, sha256: str | None = None) -> tuple[CSRUNet, CSRUNetConfig, dict[str, Any]]:
    """Build the network described by a checkpoint and load its weights."""
    ckpt = _checked_load(path, sha256)
    cfg = CSRUNetConfig.from_dict(ckpt["config"])
    model = CSRUNet.from_config(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise WeightsError(f"weights in {path} must fit their config: {exc}") from exc
    return model, cfg, ckpt


def read_manifest(path: str | Path = SHIPPED_MANIFEST) -> dict[str, Any]:
    """The manifest JSON of shipped weights (``sha256``, ``version``, ``command``...)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def export_weights(checkpoint: str | Path, out_path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write a weights-only copy of a training checkpoint and its manifest next to it.

    The manifest gets ``sha256``, ``config`` and ``file``; the caller supplies provenance
    (``version``, ``command``, held-out numbers).
    """
    ckpt = _checked_load(checkpoint, None)
    slim = {"model": ckpt["model"], "config": ckpt["config"], "epoch": ckpt.get("epoch"),
            "train_args": ckpt.get("train_args", {})}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out_path)
    full = dict(manifest)
    full.update(file=out_path.name, sha256=sha256_file(out_path), config=ckpt["config"])
    out_path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s (sha256 %s)", out_path, full["sha256"][:12])
    return full
