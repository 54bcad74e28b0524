"""Real-data pieces of a training run: the real banks, checkpoint selection on real slices,
and starting from weights whose input layer had other channels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .csr_unet import WINDOWS, CSRUNet, CSRUNetConfig
from .findings import EDH, SDH
from .pseudomask import IGNORE
from .preprocess import to_channels
from .realbank import BackgroundBank, RealBank, build_background_bank, build_real_bank, dicom_slices
from .realslices import load_ich_boxes

logger = logging.getLogger(__name__)

#: Fewest model-scale pixels of a class for a slice to count as calling it during selection.
SELECT_MIN_PX = 12


def real_banks(real_root: str | None, backgrounds: tuple[str, ...], size: int, keep_negatives: bool = True
               ) -> tuple[RealBank | None, RealBank | None, BackgroundBank | None]:
    """(train, valid, backgrounds): ``real_root/train`` and ``/valid`` of ich-boxes; lesion-free
    backgrounds are the train slices without SDH/EDH boxes plus every slice of ``backgrounds``."""
    train = valid = None
    pairs: list[tuple[str, np.ndarray]] = []
    if real_root:
        train_slices = load_ich_boxes(real_root, "train")
        train = build_real_bank(train_slices, size)
        valid = build_real_bank(load_ich_boxes(real_root, "valid"), size)
        pairs += [(s.slice_id, s.hu()) for s in train_slices if not s.has_dural]
    for folder in backgrounds:
        pairs += dicom_slices(folder)
    return train, valid, (build_background_bank(pairs, size, keep_negatives) if pairs else None)


@torch.inference_mode()
def validate_real(model: CSRUNet, bank: RealBank, mcfg: CSRUNetConfig, device: torch.device) -> dict[str, float]:
    """Per-slice calls on real validation slices at model scale.

    A slice calls a class when at least ``SELECT_MIN_PX`` pixels are predicted as it; a call
    on a boxed slice counts as found when it overlaps the box's region (pseudo-mask or
    ``IGNORE`` pixels).  ``val_real_score`` is the mean of the SDH and EDH detection rates
    and one minus the false-call rate on slices without SDH/EDH boxes.
    """
    model.eval()
    found = {SDH: [], EDH: []}
    false_calls = []
    for i in range(0, len(bank), 8):
        x = to_channels(bank.hu[i:i + 8].float(), mcfg.windows, 0)
        pred = model(x.to(device)).argmax(1).cpu()
        for p, lab, dural in zip(pred, bank.labels[i:i + 8], bank.dural[i:i + 8]):
            calls = {c: int((p == c).sum()) >= SELECT_MIN_PX for c in (SDH, EDH)}
            if not dural:
                false_calls.append(calls[SDH] or calls[EDH])
                continue
            for c in (SDH, EDH):
                if (lab == c).any():
                    region = (lab == c) | (lab == IGNORE)
                    found[c].append(calls[c] and bool(((p == c) & region).any()))
    model.train()
    out = {"val_real_sdh_found": float(np.mean(found[SDH])) if found[SDH] else float("nan"),
           "val_real_edh_found": float(np.mean(found[EDH])) if found[EDH] else float("nan"),
           "val_real_false_call": float(np.mean(false_calls)) if false_calls else float("nan")}
    out["val_real_score"] = float(np.nanmean([out["val_real_sdh_found"], out["val_real_edh_found"],
                                              1.0 - out["val_real_false_call"]]))
    return out


def load_init(model: CSRUNet, path: str | Path, cfg: CSRUNetConfig, device: torch.device) -> None:
    """Start from another run's weights; an input layer for other channels is adapted.

    A first convolution trained on (context slices x windows) channels becomes one for the
    centre slice's windows of ``cfg``: each old window's kernels are summed over the context
    slices and rescaled from that window's width to the new one's, which keeps what the
    filters respond to in HU.
    """
    ckpt = torch.load(path, map_location=device, weights_only=True)
    state = ckpt["model"]
    own = model.state_dict()
    old_cfg = CSRUNetConfig.from_dict(ckpt["config"]) if "config" in ckpt else None
    for name, tensor in list(state.items()):
        if name in own and own[name].shape != tensor.shape and tensor.ndim == 4 and old_cfg is not None:
            old = tensor.reshape(tensor.shape[0], 2 * old_cfg.context_slices + 1, len(old_cfg.windows),
                                 *tensor.shape[2:]).sum(1)
            new = torch.zeros_like(own[name])
            for j, window in enumerate(cfg.windows):
                for k, old_window in enumerate(old_cfg.windows):
                    new[:, j] += old[:, k] * (WINDOWS[window][1] / WINDOWS[old_window][1]) / len(cfg.windows)
            state[name] = new
            logger.info("adapted %s from %s to %s input channels", name, tuple(tensor.shape), tuple(new.shape))
    model.load_state_dict(state)
    logger.info("initialised from %s (epoch %s)", path, ckpt.get("epoch"))


def selection_score(metrics: dict[str, Any]) -> float:
    """Checkpoint score: real validation when there is any, else phantom validation Dice."""
    if "val_real_score" in metrics:
        phantom = np.nanmean([metrics.get("val_dice_sdh", np.nan), metrics.get("val_dice_edh", np.nan)])
        parts = [metrics["val_real_score"]] + ([float(phantom)] if np.isfinite(phantom) else [])
        return float(np.mean(parts))
    return float(np.nanmean([metrics.get("val_dice_sdh", np.nan), metrics.get("val_dice_edh", np.nan)]))
