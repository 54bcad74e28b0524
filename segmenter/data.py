"""Training data: cases resampled once into a slice bank, and a sampler of 2D training crops.

The bank holds every slice of every case at the model's input scale (head crop resized to
``input_size``) as int16 HU, so sampling an epoch costs no resampling. The sampler
oversamples slices that contain a bleed and centres most of those crops on the bleed; a
share of crops is centred on *unlabelled* hyperdense tissue (IPH, calcification, bone edges,
the "hard negatives" that random crops would rarely show), and the rest are random crops of
any slice. That is what teaches the model what not to call SDH/EDH.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .preprocess import head_crop, resample_hu, resample_labels, to_channels

logger = logging.getLogger(__name__)


@dataclass
class SliceBank:
    """All slices of a list of cases at model scale.

    Attributes
    ----------
    hu:
        int16 tensor (N, S, S): HU of every slice of every case, concatenated.
    labels:
        uint8 tensor (N, S, S).
    first, last:
        int arrays (N,): index range [first, last] of the slice's own case (for 2.5D context).
    usable:
        bool array (N,): slice may be used (the case's ``slice_mask``).
    case_ids:
        Case id of each case, in order; ``case_of`` maps slice -> case position.
    hard:
        int32 array (M, 3) of (slice, y, x): unlabelled hyperdense pixels (hard negatives).
    """

    hu: torch.Tensor
    labels: torch.Tensor
    first: np.ndarray
    last: np.ndarray
    usable: np.ndarray
    case_of: np.ndarray
    case_ids: list[str]
    hard: np.ndarray

    @property
    def positive(self) -> np.ndarray:
        return (self.labels.flatten(1).amax(1) > 0).numpy() & self.usable


#: HU range of unlabelled "looks like blood" tissue used for hard-negative crops.
HARD_HU = (50.0, 100.0)


def hard_negatives(hu: torch.Tensor, labels: torch.Tensor, offset: int, keep_every: int = 4) -> np.ndarray:
    """(slice, y, x) of unlabelled pixels in ``HARD_HU`` that survive a 3x3 erosion."""
    h = hu.numpy()
    cand = (h > HARD_HU[0]) & (h < HARD_HU[1]) & (labels.numpy() == 0)
    cand = ndimage.binary_erosion(cand, structure=np.ones((1, 3, 3), bool))
    idx = np.argwhere(cand)[::keep_every].astype(np.int32)
    idx[:, 0] += offset
    return idx


def build_bank(cases: Iterable[Any], input_size: int) -> SliceBank:
    """Resample cases (objects with ``hu``, ``labels``, ``case_id``, optional ``slice_mask``)."""
    hus, labs, first, last, usable, case_of, ids, hard = [], [], [], [], [], [], [], []
    n = 0
    for i, case in enumerate(cases):
        crop = head_crop(case.hu)
        hus.append(resample_hu(case.hu, crop, input_size).round().clamp(-1024, 3071).to(torch.int16))
        labs.append(resample_labels(case.labels, crop, input_size))
        hard.append(hard_negatives(hus[-1], labs[-1], n))
        z = case.hu.shape[0]
        first.append(np.full(z, n))
        last.append(np.full(z, n + z - 1))
        mask = getattr(case, "slice_mask", None)
        usable.append(np.ones(z, bool) if mask is None else np.asarray(mask, bool))
        case_of.append(np.full(z, i))
        ids.append(case.case_id)
        n += z
    return SliceBank(torch.cat(hus), torch.cat(labs), np.concatenate(first), np.concatenate(last),
                     np.concatenate(usable), np.concatenate(case_of), ids,
                     np.concatenate(hard) if hard else np.zeros((0, 3), np.int32))


def patient_split(cases: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Split cases by ``patient_id`` (never by slice); deterministic for a seed."""
    patients = sorted({str(c.patient_id) for c in cases})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_val = max(1, int(round(val_fraction * len(patients)))) if len(patients) > 1 else 0
    val = set(patients[:n_val])
    return [c for c in cases if str(c.patient_id) not in val], [c for c in cases if str(c.patient_id) in val]


@dataclass(frozen=True)
class SamplerConfig:
    """How training crops are drawn."""

    crop: int = 128
    positive_fraction: float = 0.55
    centre_on_bleed: float = 0.8
    hard_fraction: float = 0.2
    flip: bool = True
    hu_shift: float = 6.0
    hu_scale: float = 0.05
    noise_hu: float = 3.0


def sample_batch(bank: SliceBank, batch: int, rng: np.random.Generator, windows: Sequence[str],
                 context_slices: int, cfg: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one augmented batch: inputs (B, C, crop, crop) float32, targets (B, crop, crop) int64."""
    pos = np.flatnonzero(bank.positive)
    anyslice = np.flatnonzero(bank.usable)
    size = bank.hu.shape[-1]
    c = min(cfg.crop, size)
    xs, ys = [], []
    hard = bank.hard[bank.usable[bank.hard[:, 0]]] if len(bank.hard) else bank.hard
    for _ in range(batch):
        u = rng.random()
        take_pos = len(pos) > 0 and u < cfg.positive_fraction
        take_hard = not take_pos and len(hard) > 0 and u < cfg.positive_fraction + cfg.hard_fraction
        if take_hard:
            i, hy, hx = (int(v) for v in hard[int(rng.integers(len(hard)))])
        else:
            i = int(rng.choice(pos if take_pos else anyslice))
        lab = bank.labels[i]
        if take_hard:
            cy = hy + int(rng.integers(-c // 4, c // 4 + 1))
            cx = hx + int(rng.integers(-c // 4, c // 4 + 1))
        elif take_pos and rng.random() < cfg.centre_on_bleed:
            yy, xx = torch.nonzero(lab, as_tuple=True)
            k = int(rng.integers(len(yy)))
            cy = int(yy[k]) + int(rng.integers(-c // 4, c // 4 + 1))
            cx = int(xx[k]) + int(rng.integers(-c // 4, c // 4 + 1))
        else:
            cy, cx = (int(v) for v in rng.integers(c // 2, size - c // 2 + 1, size=2))
        y0 = int(np.clip(cy - c // 2, 0, size - c))
        x0 = int(np.clip(cx - c // 2, 0, size - c))
        idx = np.clip(np.arange(i - context_slices, i + context_slices + 1), bank.first[i], bank.last[i])
        hu = bank.hu[idx, y0:y0 + c, x0:x0 + c].float()
        # Intensity jitter in HU, as between scanners and reconstruction kernels.
        hu = hu * (1.0 + rng.uniform(-cfg.hu_scale, cfg.hu_scale)) + rng.uniform(-cfg.hu_shift, cfg.hu_shift)
        hu = hu + torch.from_numpy(rng.standard_normal(hu.shape).astype(np.float32)) * cfg.noise_hu * rng.random()
        x = to_channels(hu, windows, 0).reshape(-1, c, c)
        y = lab[y0:y0 + c, x0:x0 + c].long()
        if cfg.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if cfg.flip and rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)
