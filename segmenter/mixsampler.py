"""Training batches drawn from three sources: phantoms, real weakly labelled slices, and real
backgrounds with lesions drawn in.

Each batch element first picks its source by ``MixConfig`` weights; a source that is empty is
skipped.  Every crop gets the same intensity and flip augmentation, so the network cannot
tell the sources apart by their statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .data import SamplerConfig, SliceBank, sample_batch
from .findings import EDH, SDH
from .insertion import cavity_map, insert_lesions
from .preprocess import to_channels
from .pseudomask import IGNORE
from .realbank import BackgroundBank, RealBank


@dataclass(frozen=True)
class MixConfig:
    """Share of each source in a batch, and how the real sources are drawn."""

    phantom: float = 0.35
    real: float = 0.35
    inserted: float = 0.30
    real_dural_fraction: float = 0.6  # real draws that come from slices with an SDH/EDH box
    lesion_fraction: float = 0.8  # background draws that get a lesion (the rest stay negative)
    rim_fraction: float = 0.0  # negative crops centred on the inner table
    negative_backgrounds: bool = False  # keep background slices without room for a lesion

    def weights(self, available: Sequence[bool]) -> np.ndarray:
        w = np.array([self.phantom, self.real, self.inserted], float) * np.asarray(available, float)
        if w.sum() <= 0:
            raise ValueError("no training source has any slice: give phantoms or real data")
        return w / w.sum()


def _crop_at(size: int, c: int, centre: tuple[int, int] | None, rng: np.random.Generator) -> tuple[int, int]:
    if centre is None:
        cy, cx = (int(v) for v in rng.integers(c // 2, size - c // 2 + 1, size=2))
    else:
        cy = centre[0] + int(rng.integers(-c // 4, c // 4 + 1))
        cx = centre[1] + int(rng.integers(-c // 4, c // 4 + 1))
    return int(np.clip(cy - c // 2, 0, size - c)), int(np.clip(cx - c // 2, 0, size - c))


def _centre_on(labels: torch.Tensor, rng: np.random.Generator) -> tuple[int, int] | None:
    yy, xx = torch.nonzero((labels > 0), as_tuple=True)
    if len(yy) == 0:
        return None
    k = int(rng.integers(len(yy)))
    return int(yy[k]), int(xx[k])


def augment(hu: torch.Tensor, labels: torch.Tensor, windows: Sequence[str], cfg: SamplerConfig,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, c) HU and labels -> windowed (C, c, c) input and int64 labels, jittered and flipped."""
    hu = hu.float() * (1.0 + rng.uniform(-cfg.hu_scale, cfg.hu_scale)) + rng.uniform(-cfg.hu_shift, cfg.hu_shift)
    hu = hu + torch.from_numpy(rng.standard_normal(hu.shape).astype(np.float32)) * cfg.noise_hu * rng.random()
    x = to_channels(hu[None], windows, 0)[0]
    y = labels.long()
    if cfg.flip and rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if cfg.flip and rng.random() < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    return x, y


def _rim(cmap) -> np.ndarray:
    """Pixels of the cavity within 3 pixels of the inner table."""
    return cmap.cavity & (cmap.depth_px <= 3.0)


def _real_item(bank: RealBank, c: int, windows: Sequence[str], cfg: SamplerConfig, mix: MixConfig,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    dural = np.flatnonzero(bank.dural)
    other = np.flatnonzero(~bank.dural)
    use_dural = len(dural) > 0 and (len(other) == 0 or rng.random() < mix.real_dural_fraction)
    i = int(rng.choice(dural if use_dural else other))
    lab = bank.labels[i]
    if use_dural:
        centre = _centre_on(lab, rng) if rng.random() < cfg.centre_on_bleed else None
    elif mix.rim_fraction and rng.random() < mix.rim_fraction:
        centre = _centre_on(torch.from_numpy(_rim(cavity_map(bank.hu[i].numpy()))), rng)
    else:
        centre = None
    y0, x0 = _crop_at(lab.shape[-1], c, centre, rng)
    return augment(bank.hu[i, y0:y0 + c, x0:x0 + c], lab[y0:y0 + c, x0:x0 + c], windows, cfg, rng)


def _inserted_item(bank: BackgroundBank, c: int, windows: Sequence[str], cfg: SamplerConfig, mix: MixConfig,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    i = int(rng.integers(len(bank)))
    hu = bank.hu[i].numpy()
    if bank.maps[i].usable and rng.random() < mix.lesion_fraction:
        u = rng.random()
        kinds = (SDH,) if u < 0.4 else (EDH,) if u < 0.8 else (SDH, EDH)
        hu, lab = insert_lesions(hu, bank.maps[i], kinds, rng)
    else:
        lab = np.zeros(hu.shape, np.uint8)
    hu_t, lab_t = torch.from_numpy(np.asarray(hu, np.float32)), torch.from_numpy(lab)
    if lab_t.any():
        centre = _centre_on(lab_t, rng) if rng.random() < cfg.centre_on_bleed else None
    else:  # a negative: crops on the inner table, where false calls come from
        centre = _centre_on(torch.from_numpy(_rim(bank.maps[i])), rng) if rng.random() < mix.rim_fraction else None
    y0, x0 = _crop_at(hu.shape[-1], c, centre, rng)
    return augment(hu_t[y0:y0 + c, x0:x0 + c], lab_t[y0:y0 + c, x0:x0 + c], windows, cfg, rng)


def sample_mixed_batch(phantoms: SliceBank | None, real: RealBank | None, backgrounds: BackgroundBank | None,
                       batch: int, rng: np.random.Generator, windows: Sequence[str], cfg: SamplerConfig,
                       mix: MixConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: inputs (B, C, crop, crop) float32, labels (B, crop, crop) int64 (``IGNORE`` kept)."""
    weights = mix.weights([phantoms is not None and len(phantoms.hu) > 0,
                           real is not None and len(real) > 0,
                           backgrounds is not None and len(backgrounds) > 0])
    size = next(b.hu.shape[-1] for b in (phantoms, real, backgrounds) if b is not None and len(b.hu))
    c = min(cfg.crop, size)
    xs, ys = [], []
    for source in rng.choice(3, size=batch, p=weights):
        if source == 0:
            x, y = sample_batch(phantoms, 1, rng, windows, 0, cfg)
            x, y = x[0], y[0]
        elif source == 1:
            x, y = _real_item(real, c, windows, cfg, mix, rng)
        else:
            x, y = _inserted_item(backgrounds, c, windows, cfg, mix, rng)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


__all__ = ["MixConfig", "sample_mixed_batch", "augment", "IGNORE"]
