"""Shared fixtures for the segmenter tests: small phantoms and a tiny random-weight model.

Torch runs on one thread here: the suite shares a 2-core machine with other work.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.synthetic import PhantomRanges
from segmenter.weights import sha256_file

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_ranges() -> PhantomRanges:
    """Training ranges on a 160 x 160 grid with coarse pixels and few slices (fast)."""
    return replace(PhantomRanges.training(), size=(160, 160), pixel_spacing_mm=(1.4, 1.5),
                   n_slices=(10, 12), slice_thickness_mm=(5.0, 5.0))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init base-width-4 model saved with a manifest, as the shipped weights are."""
    cfg = CSRUNetConfig(base_width=4, input_size=64, windows=("brain", "subdural"))
    torch.manual_seed(0)
    model = CSRUNet.from_config(cfg)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(path), "version": "test-0"}))
    return path


def draw_grey_head(lesion: str | None = None, size: int = 320, brain_grey: int = 110,
                   seed: int = 0) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """An 8-bit brain-windowed axial slice in the layout of real exports, with YOLO boxes.

    Scalp, a saturated skull ring, brain at ``brain_grey`` with noise, and optionally a lesion:
    ``"edh"`` (lens against the right inner table), ``"sdh"`` (thin crescent along the left
    one) or ``"iph"`` (blob in the brain). Boxes are ``(class, cx, cy, w, h)`` normalised.
    """

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    cy = cx = size / 2
    rho = np.hypot((yy - cy) / (0.42 * size), (xx - cx) / (0.36 * size))
    theta = np.arctan2(cy - yy, xx - cx)
    grey = np.zeros((size, size), float)
    grey[rho < 1.0] = 120
    grey[rho < 0.95] = 255
    grey[rho < 0.88] = brain_grey + rng.normal(0, 4, (size, size))[rho < 0.88]
    lesion_mask = np.zeros((size, size), bool)
    if lesion == "edh":
        t = 0.14 * np.sqrt(np.clip(1 - (theta / 0.4) ** 2, 0, 1))
        lesion_mask = (rho < 0.88) & (rho > 0.88 - t) & (np.abs(theta) < 0.4)
    elif lesion == "sdh":
        a = np.abs(np.abs(theta) - np.pi)
        t = 0.05 * np.clip(1 - (a / 1.0) ** 6, 0, 1) ** 0.5
        lesion_mask = (rho < 0.88) & (rho > 0.88 - t) & (a < 1.0)
    elif lesion == "iph":
        lesion_mask = np.hypot(yy - cy, xx - (cx + 0.1 * size)) < 0.05 * size
    grey[lesion_mask] = 190 + rng.normal(0, 4, (size, size))[lesion_mask]
    boxes = []
    if lesion_mask.any():
        ys, xs = np.nonzero(lesion_mask)
        cls = {"edh": 0, "iph": 1, "sdh": 4}[lesion]
        boxes.append((cls, (xs.min() + xs.max() + 1) / 2 / size, (ys.min() + ys.max() + 1) / 2 / size,
                      (xs.max() - xs.min() + 5) / size, (ys.max() - ys.min() + 5) / size))
    return np.clip(grey, 0, 255).astype(np.uint8), boxes


@pytest.fixture(scope="session")
def realdata_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder in the layout of real-data exports: ``ich-boxes/{train,valid,test}``
    (JPEG slices, YOLO labels, augmented copies in train) and ``sich-negatives/images``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("realdata")
    plan = {"train": ["edh", "sdh", "iph", None, "edh", None], "valid": ["edh", "sdh", None, "iph"],
            "test": ["edh", "sdh", None, "iph"]}
    for split, lesions in plan.items():
        (root / "ich-boxes" / split / "images").mkdir(parents=True)
        (root / "ich-boxes" / split / "labels").mkdir(parents=True)
        for i, lesion in enumerate(lesions):
            grey, boxes = draw_grey_head(lesion, seed=i)
            copies = 2 if split == "train" else 1
            for c in range(copies):
                stem = f"{split}{i:03d}_{10 + i}_jpg.rf.{c:032x}"
                Image.fromarray(grey).convert("RGB").save(root / "ich-boxes" / split / "images" / f"{stem}.jpg",
                                                          quality=95)
                (root / "ich-boxes" / split / "labels" / f"{stem}.txt").write_text(
                    "".join(f"{b[0]} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}\n" for b in boxes))
    neg = root / "sich-negatives" / "images"
    neg.mkdir(parents=True)
    for i, lesion in enumerate([None, "iph", None]):
        Image.fromarray(draw_grey_head(lesion, size=256, seed=10 + i)[0]).save(neg / f"{i + 1:04d}_{i:02d}.png")
    return root
