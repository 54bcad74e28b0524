"""Shared fixtures for the segmenter tests: small phantoms and a tiny random-weight model.

Torch runs on one thread here: the suite shares a 2-core machine with other work.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

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
