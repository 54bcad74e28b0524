"""Lesions drawn into real backgrounds, the mixed sampler, ignore-aware loss and a mixed run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.data import SamplerConfig
from segmenter.findings import EDH, SDH
from segmenter.insertion import cavity_map, insert_lesions, lesion_mask
from segmenter.mixsampler import MixConfig, sample_mixed_batch
from segmenter.pseudomask import IGNORE
from segmenter.realbank import build_background_bank, build_real_bank, to_model_scale
from segmenter.realslices import grey_to_hu, load_ich_boxes
from segmenter.train import TrainConfig, segmentation_loss, train
from segmenter.trainsources import load_init

from .conftest import draw_grey_head


@pytest.fixture(scope="module")
def background() -> tuple[np.ndarray, object]:
    hu = to_model_scale(grey_to_hu(draw_grey_head(None)[0]), None, 128)[0].numpy()
    return hu, cavity_map(hu)


def _thickness_profile(occ: np.ndarray, cmap) -> np.ndarray:
    """Lesion depth (pixels) per 5-degree angular bin where the lesion is."""
    inside = occ >= 0.5
    bins = np.round(np.degrees(cmap.angle[inside]) / 5).astype(int)
    depth = cmap.depth_px[inside]
    return np.array([depth[bins == b].max() for b in np.unique(bins)])


def test_lesions_lie_in_the_cavity_against_the_table(background) -> None:
    hu, cmap = background
    assert cmap.usable
    rng = np.random.default_rng(0)
    for kind in (SDH, EDH) * 5:
        occ = lesion_mask(cmap, kind, rng)
        assert occ.any()
        assert not (occ[~cmap.cavity] > 0).any()
        assert cmap.depth_px[occ >= 0.5].min() <= 1.5, "lesion must touch the inner table"


def test_sdh_is_flat_edh_is_a_lens(background) -> None:
    _, cmap = background
    rng = np.random.default_rng(3)
    flat, peaked = [], []
    for _ in range(8):
        sdh = _thickness_profile(lesion_mask(cmap, SDH, rng), cmap)
        edh = _thickness_profile(lesion_mask(cmap, EDH, rng), cmap)
        # Share of the arc at least 70 % as thick as the thickest point.
        flat.append(np.mean(sdh >= 0.7 * sdh.max()))
        peaked.append(np.mean(edh >= 0.7 * edh.max()))
    assert np.mean(flat) > np.mean(peaked) + 0.1


def test_insert_lesions_labels_match_blood(background) -> None:
    hu, cmap = background
    out, labels = insert_lesions(hu, cmap, (SDH, EDH), np.random.default_rng(1))
    assert {SDH, EDH} <= set(np.unique(labels))
    assert 45 < float(np.median(out[labels > 0])) < 95
    assert np.array_equal(out[~cmap.cavity], hu[~cmap.cavity])


def test_model_scale_keeps_ignore_and_thin_labels(realdata_root: Path) -> None:
    bank = build_real_bank(load_ich_boxes(realdata_root / "ich-boxes", "train"), 128)
    assert bank.hu.shape == (6, 128, 128) and bank.dural.tolist() == [True, True, False, False, True, False]
    for i, label in ((0, EDH), (1, SDH)):
        assert (bank.labels[i] == label).any() and (bank.labels[i] == IGNORE).any()
    assert not (bank.labels[2] > 0).any()


def test_mixed_batch_draws_every_source(realdata_root: Path, small_ranges) -> None:
    from segmenter.data import build_bank
    from segmenter.synthetic import make_phantom

    slices = load_ich_boxes(realdata_root / "ich-boxes", "train")
    real = build_real_bank(slices, 128)
    bg = build_background_bank([(s.slice_id, s.hu()) for s in slices if not s.has_dural], 128)
    phantoms = build_bank([make_phantom(5, "sdh", small_ranges)], 128)
    rng = np.random.default_rng(0)
    x, y = sample_mixed_batch(phantoms, real, bg, 24, rng, ("brain",), SamplerConfig(crop=96), MixConfig())
    assert x.shape == (24, 1, 96, 96) and y.shape == (24, 96, 96) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert (y == IGNORE).any() and (y == SDH).any() and (y == EDH).any()
    with pytest.raises(ValueError, match="no training source"):
        sample_mixed_batch(None, None, None, 2, rng, ("brain",), SamplerConfig(), MixConfig())


def test_loss_ignores_pixels_without_an_answer() -> None:
    target = torch.zeros((1, 8, 8), dtype=torch.long)
    target[0, :4] = IGNORE
    target[0, 6, 6] = SDH
    logits = torch.randn(1, 3, 8, 8)
    changed = logits.clone()
    changed[0, :, :4] = torch.randn(3, 4, 8) * 10
    assert torch.isclose(segmentation_loss(logits, target), segmentation_loss(changed, target))
    changed[0, :, 6] = torch.randn(3, 8) * 10
    assert not torch.isclose(segmentation_loss(logits, target), segmentation_loss(changed, target))


def test_init_adapts_a_multi_window_2p5d_input_layer(tmp_path: Path) -> None:
    old_cfg = CSRUNetConfig(base_width=4, input_size=64, windows=("brain", "subdural"), context_slices=1)
    old = CSRUNet.from_config(old_cfg)
    torch.save({"model": old.state_dict(), "config": old_cfg.to_dict()}, tmp_path / "old.pt")
    new_cfg = CSRUNetConfig(base_width=4, input_size=64, windows=("brain",))
    new = CSRUNet.from_config(new_cfg)
    load_init(new, tmp_path / "old.pt", new_cfg, torch.device("cpu"))
    w_old = old.state_dict()["encoders.0.conv1.0.weight"].reshape(4, 3, 2, 3, 3)
    expected = w_old[:, :, 0].sum(1) + w_old[:, :, 1].sum(1) * (80.0 / 215.0)
    assert torch.allclose(new.state_dict()["encoders.0.conv1.0.weight"][:, 0], expected, atol=1e-6)
    assert torch.equal(new.state_dict()["head.weight"], old.state_dict()["head.weight"])


def test_mixed_training_run_selects_on_real_validation(realdata_root: Path, tmp_path: Path, small_ranges) -> None:
    from segmenter.synthetic import make_phantom

    cfg = TrainConfig(epochs=2, iters_per_epoch=2, batch=4, lr=1e-3, threads=1, val_fraction=0.5,
                      model=CSRUNetConfig(base_width=4, input_size=64, windows=("brain",)),
                      sampler=SamplerConfig(crop=64), real_root=str(realdata_root / "ich-boxes"))
    cases = [make_phantom(i, k, small_ranges) for i, k in enumerate(("sdh", "edh"))]
    result = train(cfg, tmp_path, cases=cases)
    last = result["history"][-1]
    for key in ("val_real_sdh_found", "val_real_edh_found", "val_real_false_call", "val_real_score"):
        assert key in last and 0.0 <= last[key] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["config"]["real_root"].endswith("ich-boxes")
    assert (tmp_path / "best.pt").exists()


def test_context_slices_are_refused_with_real_slices(realdata_root: Path, tmp_path: Path, small_ranges) -> None:
    from segmenter.synthetic import make_phantom

    cfg = TrainConfig(epochs=1, iters_per_epoch=1, batch=2, threads=1, val_fraction=0.5,
                      model=CSRUNetConfig(base_width=4, input_size=64, windows=("brain",), context_slices=1),
                      real_root=str(realdata_root / "ich-boxes"))
    with pytest.raises(ValueError, match="context_slices must be 0"):
        train(cfg, tmp_path, cases=[make_phantom(i, "sdh", small_ranges) for i in range(2)])


def test_negative_backgrounds_and_rim_crops_are_options(realdata_root: Path) -> None:
    from segmenter.insertion import cavity_map as cmap_of

    slices = load_ich_boxes(realdata_root / "ich-boxes", "train")
    pairs = [(s.slice_id, s.hu()) for s in slices if not s.has_dural]
    small = np.full((256, 256), -1000.0, np.float32)  # a vertex-like slice: skull ring, small cavity
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 128, xx - 128)
    small[r < 60] = 1000.0
    small[r < 35] = 30.0
    pairs.append(("vertex", small))
    assert not cmap_of(small).usable
    assert "vertex" not in build_background_bank(pairs, 128, keep_negatives=False).slice_ids
    bank = build_background_bank(pairs, 128, keep_negatives=True)
    assert "vertex" in bank.slice_ids
    only_vertex = type(bank)(bank.hu[-1:], bank.maps[-1:], bank.slice_ids[-1:])
    rng = np.random.default_rng(0)
    _, y = sample_mixed_batch(None, None, only_vertex, 6, rng, ("brain",), SamplerConfig(crop=64),
                              MixConfig(rim_fraction=1.0))
    assert not (y > 0).any()  # no room for a lesion: always a negative
