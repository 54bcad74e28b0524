"""Model scores to a label map on the source grid, a few slices at a time.

The network's class scores are small (model scale); on the source grid they are not: three
float32 planes per 512x512 slice is 3 MB a slice, 1.9 GB for a 600-slice thin series, twice that
while resizing. Nothing needs them whole. The label map (one byte a voxel) is made slab by slab,
and the SDH and EDH probabilities are kept only for the voxels it calls bleed, the only voxels a
finding can hold (cleaning and the EDH rule remove voxels or swap their class, never add any), for
the findings' confidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from .findings import CLASS_NAMES
from .postprocess import label_map
from .preprocess import Crop, to_original_grid

#: Slices resized to the source grid at once: memory for this step is this many slices' worth.
GRID_CHUNK_SLICES = 8


@dataclass(frozen=True)
class BleedProbabilities:
    """Per class (``SDH``, ``EDH`` indices), the probability of each voxel a label map calls
    bleed; ``index`` holds those voxels' flat indices, ascending."""

    index: np.ndarray
    values: dict[int, np.ndarray]

    def mean(self, cls_index: int, mask: np.ndarray, z0: int = 0) -> float:
        """Mean probability of class ``cls_index`` over ``mask`` (which must lie within the bleed
        voxels); ``mask`` covers the slices from ``z0`` on."""
        wanted = np.flatnonzero(mask) + z0 * mask.shape[1] * mask.shape[2]
        if wanted.size == 0:
            return 0.0
        at = np.searchsorted(self.index, wanted)
        if at[-1] >= self.index.size or not np.array_equal(self.index[at], wanted):
            raise ValueError("mask holds voxels the label map did not call bleed")
        return float(self.values[cls_index][at].mean(dtype=np.float64))


def labels_and_probabilities(scores: torch.Tensor, crop: Crop, bleed_threshold: float | None = None,
                             chunk: int = GRID_CHUNK_SLICES) -> tuple[np.ndarray, BleedProbabilities]:
    """Scores (Z, C, S, S) at model scale -> uint8 labels (Z, rows, cols) on the source grid (see
    ``postprocess.label_map``) and the bleed voxels' probabilities."""
    z = scores.shape[0]
    return labels_from_score_chunks((scores[z0:z0 + chunk] for z0 in range(0, z, chunk)), crop, z,
                                    bleed_threshold)


def labels_from_score_chunks(chunks: Iterable[torch.Tensor], crop: Crop, z: int,
                             bleed_threshold: float | None = None) -> tuple[np.ndarray, BleedProbabilities]:
    """:func:`labels_and_probabilities` from the scores of successive runs of slices, which
    together cover all ``z`` slices in order: the scores need never exist whole."""
    labels = np.empty((z, crop.rows, crop.cols), np.uint8)
    index: list[np.ndarray] = []
    values: dict[int, list[np.ndarray]] = {c: [] for c in CLASS_NAMES}
    plane = crop.rows * crop.cols
    z0 = 0
    for scores in chunks:
        probs = to_original_grid(scores, crop).numpy()
        part = label_map(probs, bleed_threshold)
        labels[z0:z0 + part.shape[0]] = part
        found = np.flatnonzero(part)
        index.append(found + z0 * plane)
        for c in CLASS_NAMES:
            values[c].append(probs[:, c].reshape(-1)[found].astype(np.float32))
        z0 += part.shape[0]
    if z0 != z:
        raise ValueError(f"the score chunks cover {z0} slices; the volume has {z}")
    return labels, BleedProbabilities(np.concatenate(index) if index else np.empty(0, np.int64),
                                      {c: np.concatenate(v) if v else np.empty(0, np.float32)
                                       for c, v in values.items()})
