"""The scratch-file HU volume, reading a series into it, and analysis that streams through it."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.dicom_io import SeriesError, read_series, write_ct_series
from segmenter.inference import Segmenter
from segmenter.postprocess import (
    _DenseProbabilities, clean_labels, drop_detached_edh, findings_from_label_map, findings_from_labels,
)
from segmenter.preprocess import head_crop, resample_hu, to_channels
from segmenter.probabilities import labels_and_probabilities
from segmenter.slab_volume import SlabVolume
from segmenter.synthetic import PhantomRanges, make_phantom
from segmenter.weights import sha256_file

from .test_dicom_io import SPACING, WRITER_CASES, volume


def test_slices_and_slabs_read_back_what_was_written(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)
    with SlabVolume(data.shape, tmp_path) as vol:
        for k in range(7):
            vol.write_slice(k, data[k])
        assert list(tmp_path.iterdir()) == []  # the scratch file has no name
        assert vol.shape == (7, 5, 6) and len(vol) == 7 and vol.nbytes == data.nbytes
        np.testing.assert_array_equal(vol[3], data[3])
        np.testing.assert_array_equal(vol[-1], data[-1])
        np.testing.assert_array_equal(vol[2:5], data[2:5])
        np.testing.assert_array_equal(vol[5:99], data[5:])
        np.testing.assert_array_equal(vol[1:4, 2:4, ::2], data[1:4, 2:4, ::2])
        np.testing.assert_array_equal(vol[2, 1:3], data[2, 1:3])
        np.testing.assert_array_equal(np.asarray(vol), data)
        assert vol[4:4].shape == (0, 5, 6)


def test_misuse_is_refused(tmp_path: Path) -> None:
    with SlabVolume((3, 4, 4), tmp_path) as vol:
        with pytest.raises(IndexError, match="outside"):
            vol[3]
        with pytest.raises(IndexError, match="step 1"):
            vol[::2]
        with pytest.raises(TypeError, match="int or a slice"):
            vol[[0, 1]]
        with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
            vol.write_slice(0, np.zeros((4, 5)))
        with pytest.raises(IndexError, match="outside"):
            vol.write_slice(3, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="three positive sizes"):
        SlabVolume((0, 4, 4), tmp_path)


@pytest.mark.parametrize("kw", WRITER_CASES.values(), ids=WRITER_CASES.keys())
def test_series_read_into_scratch_equals_series_read_into_memory(tmp_path: Path, kw) -> None:
    vol = volume()
    write_ct_series(vol, SPACING, tmp_path / "in", **kw)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    in_memory = read_series(tmp_path / "in")
    streamed = read_series(tmp_path / "in", scratch_dir=scratch)
    assert isinstance(streamed.volume_hu, SlabVolume)
    np.testing.assert_array_equal(np.asarray(streamed.volume_hu), in_memory.volume_hu)
    assert streamed.sop_instance_uids == in_memory.sop_instance_uids
    assert streamed.spacing_mm == in_memory.spacing_mm
    # The scratch volume is the only copy of the pixels: none are left on the data sets.
    assert all("PixelData" not in ds for ds in streamed.datasets)
    assert all("PixelData" in ds for ds in in_memory.datasets)
    streamed.close()
    assert list(scratch.iterdir()) == []


def test_refused_series_gives_the_same_reason_and_frees_its_scratch(tmp_path: Path) -> None:
    broken = np.full((4, 32, 32), 40.0, np.float32)  # nothing but brain: no air, no bone
    write_ct_series(broken, SPACING, tmp_path / "in")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(SeriesError) as in_memory:
        read_series(tmp_path / "in")
    with pytest.raises(SeriesError) as streamed:
        read_series(tmp_path / "in", scratch_dir=scratch)
    assert streamed.value.reason == in_memory.value.reason
    assert "almost constant" in streamed.value.reason
    assert list(scratch.iterdir()) == []


@pytest.fixture(scope="module")
def context_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with 2.5D context (one neighbour each side) and two windows."""
    cfg = CSRUNetConfig(base_width=4, input_size=64, windows=("brain", "subdural"), context_slices=1)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "context.pt"
    torch.save({"model": CSRUNet.from_config(cfg).state_dict(), "config": cfg.to_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(path), "version": "ctx-0"}))
    return path


@pytest.fixture(scope="module")
def phantom():
    ranges = replace(PhantomRanges.training(), size=(96, 88), n_slices=(21, 21), pixel_spacing_mm=(2.2, 2.2))
    return make_phantom(5, "both", ranges)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_scores_by_runs_of_slices_equal_scores_of_the_whole_volume(context_weights: Path, phantom,
                                                                   batch_size: int) -> None:
    seg = Segmenter.load(context_weights, device="cpu", bf16=False, batch_size=batch_size)
    crop = head_crop(phantom.hu)
    with torch.inference_mode():
        x = to_channels(resample_hu(phantom.hu, crop, 64), seg.config.windows, 1)
        whole = torch.cat([seg.model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    chunks = list(seg.score_chunks(phantom.hu, crop))
    assert len(chunks) > 1 and sum(c.shape[0] for c in chunks) == phantom.hu.shape[0]
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=1e-5, atol=1e-5)


def test_prediction_from_a_scratch_volume_equals_prediction_from_memory(context_weights: Path, phantom,
                                                                        tmp_path: Path) -> None:
    seg = Segmenter.load(context_weights, device="cpu", bf16=False, bleed_threshold=0.2)
    with SlabVolume(phantom.hu.shape, tmp_path) as vol:
        for k, plane in enumerate(phantom.hu):
            vol.write_slice(k, plane)
        from_scratch = seg.predict(vol, phantom.spacing_mm)
    from_memory = seg.predict(phantom.hu, phantom.spacing_mm)
    np.testing.assert_array_equal(from_scratch.labels, from_memory.labels)
    assert from_scratch.findings == from_memory.findings
    assert from_scratch.excluded == from_memory.excluded
    # The same label map as the scores of the whole volume give.
    logits, crop = seg.scores(phantom.hu)
    raw, _ = labels_and_probabilities(logits, crop, 0.2)
    assert raw.any(), "the random model must call some bleed for this comparison to mean anything"


def _whole_volume_findings(raw, probs, spacing, midline, hu, slab, positions):
    """The clean-up run on every slice, as reference for the run on the bleed's slices."""
    labels, comps, _ = clean_labels(raw, spacing, slab_mm=slab)
    excluded = drop_detached_edh(labels, comps, hu, spacing, slab_mm=slab)

    class Dense:
        def mean(self, c, mask, z0=0):
            return float(probs[:, c][mask].mean())

    findings = findings_from_labels(labels, comps, Dense(), spacing, midline, slab_mm=slab, positions=positions)
    return labels, findings, excluded


@pytest.mark.parametrize("where", ["middle", "first slices", "last slices", "none"])
def test_clean_up_on_the_bleed_slices_equals_clean_up_on_the_whole_volume(where: str) -> None:
    ranges = replace(PhantomRanges.training(), size=(80, 80), n_slices=(24, 24), pixel_spacing_mm=(2.5, 2.5))
    ph = make_phantom(3, "both", ranges)
    raw = ph.labels.copy()
    keep = {"middle": slice(6, 15), "first slices": slice(0, 9), "last slices": slice(15, 24),
            "none": slice(0, 0)}[where]
    outside = np.ones(raw.shape[0], bool)
    outside[keep] = False
    raw[outside] = 0
    probs = np.random.default_rng(2).dirichlet((1, 1, 1), size=raw.shape).astype(np.float32).transpose(0, 3, 1, 2)
    slab = np.linspace(2.0, 4.0, raw.shape[0])
    positions = np.column_stack([np.zeros(raw.shape[0]), np.zeros(raw.shape[0]), np.cumsum(slab)])
    expected = _whole_volume_findings(raw, probs, ph.spacing_mm, 40.0, ph.hu, slab, positions)

    got = findings_from_label_map(raw, _DenseProbabilities(probs), ph.spacing_mm, 40.0, volume_hu=ph.hu,
                                  slab_mm=slab, positions=positions)
    np.testing.assert_array_equal(got[0], expected[0])
    for name, finding in expected[1].items():  # volumes summed over fewer slices: last-digit differences
        assert got[1][name] == replace(finding, volume_ml=pytest.approx(finding.volume_ml, rel=1e-12))
    assert got[2] == expected[2]
    if where != "none":
        assert any(f.voxel_count for f in got[1].values())
