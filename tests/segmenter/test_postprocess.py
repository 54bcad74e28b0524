"""Post-processing tables: component cleaning, majority vote, thickness, laterality, presence."""
from __future__ import annotations

import numpy as np
import pytest

from segmenter.findings import EDH, SDH
from segmenter.postprocess import (
    MIN_PRESENT_ML,
    clean_labels,
    findings_from_labels,
    findings_from_probabilities,
    laterality,
    max_thickness_mm,
)

SPACING = (5.0, 0.5, 0.5)  # voxel = 1.25 mm^3, 800 voxels = 1 mL


def vol(*boxes: tuple[int, slice, slice, slice]) -> np.ndarray:
    out = np.zeros((6, 64, 64), np.uint8)
    for label, z, y, x in boxes:
        out[z, y, x] = label
    return out


@pytest.mark.parametrize("boxes,expected_counts", [
    # a 2-voxel speck is dropped, a 240-voxel block kept
    ([(SDH, slice(0, 1), slice(0, 1), slice(0, 2)), (SDH, slice(2, 5), slice(10, 18), slice(10, 20))],
     {SDH: 240, EDH: 0}),
    # one component, 60 % EDH: all of it becomes EDH
    ([(EDH, slice(1, 4), slice(10, 20), slice(10, 16)), (SDH, slice(1, 4), slice(10, 20), slice(16, 20))],
     {SDH: 0, EDH: 300}),
    # a tie goes to SDH
    ([(EDH, slice(1, 3), slice(10, 20), slice(10, 15)), (SDH, slice(1, 3), slice(10, 20), slice(15, 20))],
     {SDH: 200, EDH: 0}),
    # two separate components keep their own classes
    ([(EDH, slice(1, 3), slice(5, 15), slice(5, 15)), (SDH, slice(1, 3), slice(40, 50), slice(40, 50))],
     {SDH: 200, EDH: 200}),
])
def test_clean_labels(boxes, expected_counts) -> None:
    cleaned, comps, _ = clean_labels(vol(*boxes), SPACING)
    for label, count in expected_counts.items():
        assert int((cleaned == label).sum()) == count
    assert ((comps > 0) == (cleaned > 0)).all()


@pytest.mark.parametrize("width_px,spacing,expected_mm", [(10, 0.5, 5.0), (20, 0.5, 10.0), (8, 1.0, 8.0)])
def test_max_thickness(width_px: int, spacing: float, expected_mm: float) -> None:
    mask = np.zeros((3, 80, 80), bool)
    mask[1, 10:10 + width_px, 5:75] = True
    got = max_thickness_mm(mask, (5.0, spacing, spacing))
    assert abs(got - expected_mm) <= 2 * spacing


@pytest.mark.parametrize("cols,row_dir,expected", [
    ((40, 50), (1, 0, 0), "left"),    # LPS +x is patient left: right of image centre = left
    ((40, 50), (-1, 0, 0), "right"),  # flipped rows
    ((5, 15), (1, 0, 0), "right"),
    (None, (1, 0, 0), "bilateral"),
])
def test_laterality(cols, row_dir, expected: str) -> None:
    labels = np.zeros((4, 64, 64), np.uint8)
    if cols is None:
        labels[1:3, 20:30, 5:15] = SDH
        labels[1:3, 20:30, 50:60] = SDH
    else:
        labels[1:3, 20:30, cols[0]:cols[1]] = SDH
    cleaned, comps, _ = clean_labels(labels, SPACING)
    assert laterality(cleaned == SDH, comps, SPACING, 31.5, row_dir) == expected


@pytest.mark.parametrize("voxels,present", [(399, False), (400, True), (2000, True)])
def test_presence_rule_is_minimum_volume(voxels: int, present: bool) -> None:
    labels = np.zeros((2, 100, 100), np.uint8)
    labels.reshape(-1)[:voxels] = EDH  # contiguous run, one component
    voxel_ml = float(np.prod(SPACING)) / 1000
    cleaned, comps, _ = clean_labels(labels, SPACING)
    f = findings_from_labels(cleaned, comps, None, SPACING, 50.0)
    assert f["EDH"].present is present
    assert f["EDH"].volume_ml == pytest.approx(voxels * voxel_ml, rel=1e-6)
    assert bool(voxels * voxel_ml >= MIN_PRESENT_ML) is present
    assert f["SDH"].present is False and f["SDH"].laterality is None and f["SDH"].voxel_count == 0


def test_findings_from_probabilities_confidence_and_argmax() -> None:
    probs = np.zeros((3, 3, 40, 40), np.float32)
    probs[:, 0] = 1.0
    probs[0:2, :, 10:30, 22:30] = np.array([0.1, 0.7, 0.2])[:, None, None]
    labels, f = findings_from_probabilities(probs, (5.0, 1.0, 1.0), 19.5)
    assert labels.shape == (3, 40, 40) and labels.dtype == np.uint8
    assert f["SDH"].voxel_count == 2 * 20 * 8 and f["SDH"].confidence == pytest.approx(0.7)
    assert f["SDH"].volume_ml == pytest.approx(1.6) and f["SDH"].present
    assert f["SDH"].laterality == "left" and f["SDH"].max_thickness_mm == pytest.approx(8.0, abs=1.0)
    assert not f["EDH"].present
