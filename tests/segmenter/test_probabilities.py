"""The slab-by-slab label map and its bleed probabilities equal the whole-volume computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmenter.findings import EDH, SDH
from segmenter.postprocess import findings_from_probabilities, label_map
from segmenter.preprocess import Crop, to_original_grid
from segmenter.probabilities import BleedProbabilities, labels_and_probabilities

SPACING = (1.0, 0.5, 0.5)


def _scores(z: int = 13, size: int = 24, seed: int = 3) -> torch.Tensor:
    """Model-scale scores with an SDH slab and an EDH lens, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(z, 3, size, size, generator=gen)
    scores[:, 0] += 2.0
    scores[2:9, SDH, 4:9, 3:20] += 6.0
    scores[5:12, EDH, 14:20, 16:22] += 6.0
    return scores


@pytest.mark.parametrize("threshold", [None, 0.6])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_slabs_equal_the_whole_volume(chunk: int, threshold: float | None) -> None:
    crop = Crop(top=-6, left=10, side=50, rows=48, cols=64)  # past the top edge: background there
    scores = _scores()
    dense = to_original_grid(scores, crop).numpy()
    labels, confidence = labels_and_probabilities(scores, crop, threshold, chunk=chunk)
    assert labels.dtype == np.uint8 and labels.shape == (13, 48, 64)
    np.testing.assert_array_equal(labels, label_map(dense, threshold))
    assert np.array_equal(confidence.index, np.flatnonzero(labels))
    for c in (SDH, EDH):
        mask = labels == c
        assert mask.any()
        assert confidence.mean(c, mask) == pytest.approx(float(dense[:, c][mask].mean()), rel=1e-5)
    # The findings from the label map are those of the whole-volume probabilities.
    from segmenter.postprocess import findings_from_label_map

    whole = findings_from_probabilities(dense, SPACING, 40.0, bleed_threshold=threshold)
    slabs = findings_from_label_map(labels, confidence, SPACING, 40.0)
    np.testing.assert_array_equal(whole[0], slabs[0])
    for name in ("SDH", "EDH"):
        a, b = whole[1][name], slabs[1][name]
        assert (a.present, a.volume_ml, a.voxel_count, a.laterality) == (b.present, b.volume_ml, b.voxel_count, b.laterality)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_a_mask_outside_the_bleed_voxels_is_refused() -> None:
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1] = SDH
    probs = np.zeros((2, 3, 4, 4), np.float32)
    probs[:, 0] = 1.0
    probs[0, :, 1, 1] = (0.2, 0.7, 0.1)
    index = np.flatnonzero(labels)
    confidence = BleedProbabilities(index, {c: probs[:, c].reshape(-1)[index] for c in (SDH, EDH)})
    assert confidence.mean(SDH, labels == SDH) == pytest.approx(0.7)
    wider = labels == SDH
    wider[1, 2, 2] = True
    with pytest.raises(ValueError, match="did not call bleed"):
        confidence.mean(SDH, wider)
