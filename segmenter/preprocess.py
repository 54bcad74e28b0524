"""HU volume to model input, and model output back onto the original slice grid.

Every slice of a volume is cropped to one square box around the head (so the model sees the
head, not the air around it, at a finer in-plane scale), resized to ``input_size`` and
windowed. ``Crop`` remembers the box, so ``to_original_grid`` can upsample the class scores
(not the labels) back to exactly the source pixels before the argmax.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .csr_unet import WINDOWS

logger = logging.getLogger(__name__)

#: HU above which a pixel counts as part of the head when finding the crop box.
HEAD_HU = -300.0
#: Extra pixels kept around the head on each side, in source pixels.
MARGIN_PX = 6
#: Slices read at once while projecting the head for the crop box.
_CROP_SLAB = 16


@dataclass(frozen=True)
class Crop:
    """A square box (top, left, side) on the source grid; may extend past the image."""

    top: int
    left: int
    side: int
    rows: int
    cols: int


def window(hu: np.ndarray | torch.Tensor, level: float, width: float) -> np.ndarray | torch.Tensor:
    """Map HU to [0, 1] through a display window (level, width)."""
    lo = level - width / 2.0
    if isinstance(hu, torch.Tensor):
        return ((hu - lo) / width).clamp_(0.0, 1.0)
    return np.clip((hu - lo) / width, 0.0, 1.0).astype(np.float32)


def head_crop(volume_hu: Any) -> Crop:
    """Square box around the largest connected head region over all slices.

    ``volume_hu`` is a (z, y, x) array or anything sliced like one along z (``SlabVolume``).

    Falls back to the whole slice when no pixel is above ``HEAD_HU``.
    """
    depth, rows, cols = volume_hu.shape
    proj = np.zeros((rows, cols), bool)
    for z0 in range(0, depth, _CROP_SLAB):  # a slab at a time: the volume may be a SlabVolume
        proj |= (np.asarray(volume_hu[z0:z0 + _CROP_SLAB]) > HEAD_HU).any(axis=0)
    if not proj.any():
        side = max(rows, cols)
        return Crop((rows - side) // 2, (cols - side) // 2, side, rows, cols)
    lab, n = ndimage.label(proj)
    if n > 1:  # ignore the table, head holder and stray pixels
        sizes = ndimage.sum_labels(proj, lab, index=np.arange(1, n + 1))
        proj = lab == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(proj)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(y1 - y0, x1 - x0) + 2 * MARGIN_PX)
    top = int((y0 + y1) // 2 - side // 2)
    left = int((x0 + x1) // 2 - side // 2)
    return Crop(top, left, side, rows, cols)


def _crop_pad(volume: torch.Tensor, crop: Crop, fill: float) -> torch.Tensor:
    """(Z, H, W) -> (Z, side, side), padding with ``fill`` outside the image."""
    z = volume.shape[0]
    out = torch.full((z, crop.side, crop.side), fill, dtype=volume.dtype)
    y0, x0 = max(crop.top, 0), max(crop.left, 0)
    y1, x1 = min(crop.top + crop.side, crop.rows), min(crop.left + crop.side, crop.cols)
    if y1 > y0 and x1 > x0:
        out[:, y0 - crop.top:y1 - crop.top, x0 - crop.left:x1 - crop.left] = volume[:, y0:y1, x0:x1]
    return out


def resample_hu(volume_hu: np.ndarray, crop: Crop, size: int) -> torch.Tensor:
    """Crop and resize a HU volume: (Z, H, W) float -> (Z, size, size) float32 tensor."""
    vol = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32))
    box = _crop_pad(vol, crop, -1024.0)[:, None]
    out = F.interpolate(box, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=crop.side > size)
    return out[:, 0]


def resample_labels(labels: np.ndarray, crop: Crop, size: int, num_classes: int = 3) -> torch.Tensor:
    """Crop and resize a label volume by area-weighted vote (keeps thin collections)."""
    lab = _crop_pad(torch.from_numpy(np.ascontiguousarray(labels)).long(), crop, 0)
    onehot = F.one_hot(lab, num_classes).permute(0, 3, 1, 2).float()
    out = F.interpolate(onehot, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=crop.side > size)
    return out.argmax(1).to(torch.uint8)


def to_channels(hu_small: torch.Tensor, windows: Sequence[str], context_slices: int) -> torch.Tensor:
    """(Z, S, S) HU -> (Z, len(windows) * (2k+1), S, S) windowed input, neighbours as channels.

    Channel order is slice-major: for offsets -k..k, every window in ``windows`` order.
    Slices beyond the ends repeat the edge slice.
    """
    z = hu_small.shape[0]
    chans = []
    for off in range(-context_slices, context_slices + 1):
        idx = torch.clamp(torch.arange(z) + off, 0, z - 1)
        src = hu_small[idx]
        for name in windows:
            level, width = WINDOWS[name]
            chans.append(window(src, level, width))
    return torch.stack(chans, dim=1)


def to_original_grid(scores: torch.Tensor, crop: Crop) -> torch.Tensor:
    """Class scores (Z, C, S, S) -> probabilities (Z, C, rows, cols) on the source grid.

    Scores are bilinearly resized to the crop box and placed on the source grid; outside the
    box the background probability is 1.
    """
    z, c = scores.shape[:2]
    probs = torch.softmax(scores.float(), dim=1)
    up = F.interpolate(probs, size=(crop.side, crop.side), mode="bilinear", align_corners=False)
    out = torch.zeros((z, c, crop.rows, crop.cols), dtype=up.dtype)
    out[:, 0] = 1.0
    y0, x0 = max(crop.top, 0), max(crop.left, 0)
    y1, x1 = min(crop.top + crop.side, crop.rows), min(crop.left + crop.side, crop.cols)
    if y1 > y0 and x1 > x0:
        out[:, :, y0:y1, x0:x1] = up[:, :, y0 - crop.top:y1 - crop.top, x0 - crop.left:x1 - crop.left]
    return out
