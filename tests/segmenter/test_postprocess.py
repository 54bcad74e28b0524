"""Post-processing tables: component cleaning, majority vote, thickness, laterality, presence."""
from __future__ import annotations

import numpy as np
import pytest

from segmenter.findings import EDH, SDH
from segmenter.postprocess import (
    BONE_HU,
    EDH_MAX_BONE_GAP_MM,
    EDH_MIN_ATTACHED_SHARE,
    MIN_PRESENT_ML,
    clean_labels,
    drop_detached_edh,
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


@pytest.mark.parametrize("edh_cols", [
    16,  # EDH 4x20x16 = 1280 voxels = 1.6 mL: under SPLIT_MIN_ML, voted into the SDH
    20,  # 2.0 mL and 45 % of the component: a lesion of its own
    40,  # 4 mL, so SDH is the minority at 2.4 mL / 37.5 %: split the other way
])
def test_touching_sdh_and_edh_stay_two_lesions(edh_cols: int) -> None:
    labels = np.zeros((6, 64, 64), np.uint8)
    labels[1:5, 10:30, 0:24] = SDH                   # 1920 voxels = 2.4 mL
    labels[1:5, 10:30, 24:24 + edh_cols] = EDH       # touching it
    cleaned, comps, n = clean_labels(labels, SPACING)
    sdh_ml, edh_ml = ((cleaned == c).sum() * 1.25e-3 for c in (SDH, EDH))
    if edh_cols == 16:
        assert (sdh_ml, edh_ml) == pytest.approx((4.0, 0.0))
        assert n == 1
    else:
        assert (sdh_ml, edh_ml) == pytest.approx((2.4, edh_cols * 0.1))
        assert n == 2 and len(np.unique(comps[cleaned > 0])) == 2
        for cid in np.unique(comps[comps > 0]):  # one class per component
            assert len(np.unique(cleaned[comps == cid])) == 1


def test_small_minority_patches_are_still_voted_away() -> None:
    """Two 1 mL EDH patches inside a 12 mL SDH: each under the size and share floors."""
    labels = np.zeros((6, 64, 64), np.uint8)
    labels[0:6, 0:40, 0:40] = SDH
    labels[0:2, 0:20, 0:20] = EDH
    labels[4:6, 20:40, 20:40] = EDH
    cleaned, _, _ = clean_labels(labels, SPACING)
    assert (cleaned[labels > 0] == SDH).all()


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
    labels, f, excluded = findings_from_probabilities(probs, (5.0, 1.0, 1.0), 19.5)
    assert excluded == []
    assert labels.shape == (3, 40, 40) and labels.dtype == np.uint8
    assert f["SDH"].voxel_count == 2 * 20 * 8 and f["SDH"].confidence == pytest.approx(0.7)
    assert f["SDH"].volume_ml == pytest.approx(1.6) and f["SDH"].present
    assert f["SDH"].laterality == "left" and f["SDH"].max_thickness_mm == pytest.approx(8.0, abs=1.0)
    assert not f["EDH"].present


def skull_and_blob(gap_px: int, label: int = EDH) -> tuple[np.ndarray, np.ndarray]:
    """HU volume with a bone slab in columns 0-9 and a label block starting ``gap_px`` after it."""
    hu = np.full((6, 64, 64), 30.0, np.float32)
    hu[:, :, :10] = 1500.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[1:4, 20:40, 10 + gap_px:10 + gap_px + 12] = label
    return hu, labels


@pytest.mark.parametrize("gap_px,label,dropped", [
    (0, EDH, False),   # against the inner table: epidural
    (3, EDH, False),   # 2 mm of partial volume or under-segmentation at 0.5 mm pixels: kept
    (4, EDH, True),    # 2.5 mm of brain between it and the bone: not epidural
    (12, EDH, True),
    (12, SDH, False),  # the rule is for EDH only (SDH can follow the falx, away from bone)
])
def test_edh_must_reach_bone(gap_px: int, label: int, dropped: bool) -> None:
    hu, labels = skull_and_blob(gap_px, label)
    cleaned, comps, _ = clean_labels(labels, SPACING)
    before = int((cleaned > 0).sum())
    out = drop_detached_edh(cleaned, comps, hu, SPACING)
    assert bool(out) is dropped
    assert int((cleaned > 0).sum()) == (0 if dropped else before)
    assert ((comps > 0) == (cleaned > 0)).all()
    if dropped:
        (entry,) = out
        assert entry["label"] == "EDH" and entry["attached_share"] == 0.0
        assert entry["volume_ml"] == pytest.approx(before * 1.25e-3, abs=1e-3)
        assert entry["reason"].endswith("not epidural") and f"within {EDH_MAX_BONE_GAP_MM:g} mm" in entry["reason"]


@pytest.mark.parametrize("attached_slices,dropped", [(0, True), (1, True), (2, False), (3, False)])
def test_edh_must_be_against_bone_on_half_its_volume(attached_slices: int, dropped: bool) -> None:
    """A blob on slices 1-3, 6 mm from bone, except for a spur reaching the skull on some slices."""
    hu, labels = skull_and_blob(12)
    labels[1:1 + attached_slices, 30, 10:22] = EDH  # the spur: 12 voxels a slice, attached
    cleaned, comps, _ = clean_labels(labels, SPACING)
    out = drop_detached_edh(cleaned, comps, hu, SPACING)
    assert bool(out) is dropped
    if dropped:
        share = attached_slices * (240 + 12) / (3 * 240 + attached_slices * 12)
        assert out[0]["attached_share"] == pytest.approx(share, abs=1e-3)
        assert f"holding {share:.0%} of it" in out[0]["reason"]
    assert EDH_MIN_ATTACHED_SHARE == 0.5


def test_edh_rule_ignores_dense_tissue_below_bone_hu() -> None:
    """Dense tissue under ``BONE_HU`` beside the blob (a calcification) does not anchor it."""
    hu, labels = skull_and_blob(12)
    hu[1:4, 30, 20] = BONE_HU - 1
    cleaned, comps, _ = clean_labels(labels, SPACING)
    assert len(drop_detached_edh(cleaned, comps, hu, SPACING)) == 1
    hu[1:4, 30, 20] = BONE_HU
    cleaned, comps, _ = clean_labels(labels, SPACING)
    assert drop_detached_edh(cleaned, comps, hu, SPACING) == []


def test_findings_from_probabilities_applies_the_edh_rule_with_hu() -> None:
    hu, labels = skull_and_blob(12)
    probs = np.stack([labels == c for c in range(3)], axis=1).astype(np.float32)
    _, kept, excluded = findings_from_probabilities(probs, SPACING, 31.5)
    assert kept["EDH"].present and excluded == []
    cleaned, f, excluded = findings_from_probabilities(probs, SPACING, 31.5, volume_hu=hu)
    assert not f["EDH"].present and f["EDH"].voxel_count == 0 and not cleaned.any()
    assert [e["label"] for e in excluded] == ["EDH"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_edh_rule_keeps_every_true_epidural_phantom(seed: int) -> None:
    """Ground-truth EDH of held-out-range phantoms all reach bone."""
    from segmenter.synthetic import PhantomRanges, make_phantom

    ph = make_phantom(seed, "edh", PhantomRanges.evaluation())
    cleaned, comps, _ = clean_labels(ph.labels, ph.spacing_mm)
    assert (cleaned == EDH).any()
    assert drop_detached_edh(cleaned, comps, ph.hu, ph.spacing_mm) == []


# -- true geometry: uneven slabs and slices shifted sideways ---------------------------------------
SLABS = [4.0, 4.0, 4.0, 5.5, 7.0, 7.0]  # a 4 mm run, then a 7 mm run


def test_even_slabs_give_exactly_the_numbers_of_a_regular_grid() -> None:
    hu, labels = skull_and_blob(0)
    labels[2:5, 40:50, 30:40] = SDH
    probs = np.stack([labels == c for c in range(3)], axis=1).astype(np.float32)
    plain = findings_from_probabilities(probs, SPACING, 31.5, volume_hu=hu)
    slabs = findings_from_probabilities(probs, SPACING, 31.5, volume_hu=hu, slab_mm=[5.0] * 6,
                                        positions=np.zeros((6, 3)))
    np.testing.assert_array_equal(plain[0], slabs[0])
    assert plain[1] == slabs[1] and plain[2] == slabs[2]


def test_volume_weights_each_slice_by_its_slab() -> None:
    labels = vol((SDH, slice(1, 6), slice(10, 30), slice(10, 30)))  # 400 voxels a slice
    cleaned, comps, _ = clean_labels(labels, SPACING, slab_mm=SLABS)
    f = findings_from_labels(cleaned, comps, None, SPACING, 31.5, slab_mm=SLABS)
    assert f["SDH"].volume_ml == pytest.approx(400 * 0.25 * sum(SLABS[1:6]) / 1000)
    assert f["SDH"].voxel_count == 2000
    even = findings_from_labels(cleaned, comps, None, SPACING, 31.5)["SDH"]
    assert f["SDH"].max_thickness_mm == even.max_thickness_mm  # within a slice: the slab plays no part


@pytest.mark.parametrize("slab,kept", [(5.0, False), (7.0, True)])
def test_minimum_component_volume_uses_the_slab(slab: float, kept: bool) -> None:
    labels = vol((SDH, slice(4, 5), slice(10, 16), slice(10, 16)))  # 36 voxels: 45 mm3 at 5 mm, 63 at 7
    cleaned, _, _ = clean_labels(labels, SPACING, slab_mm=[5.0] * 4 + [slab, 5.0])
    assert bool(cleaned.any()) is kept


def test_edh_attached_share_is_a_share_of_volume() -> None:
    """Half the voxels of the blob lie against bone, on the thin slice: less than half its volume."""
    hu, labels = skull_and_blob(12)
    labels[:] = 0
    labels[3:5, 20:40, 22:34] = EDH
    labels[3, 30, 10:22] = EDH  # the spur, on the 4 mm slice only
    labels[4, 40, 22:34] = EDH  # the same number of voxels on the 7 mm slice
    slabs = [4.0, 4.0, 4.0, 4.0, 7.0, 7.0]
    cleaned, comps, _ = clean_labels(labels, SPACING)
    assert drop_detached_edh(cleaned, comps, hu, SPACING) == []  # by voxel count: 0.5
    cleaned, comps, _ = clean_labels(labels, SPACING, slab_mm=slabs)
    (out,) = drop_detached_edh(cleaned, comps, hu, SPACING, slab_mm=slabs)
    assert out["attached_share"] == pytest.approx(4 / 11, abs=1e-3)
    assert out["volume_ml"] == pytest.approx(252 * 0.25 * (4 + 7) / 1000, abs=1e-3)


@pytest.mark.parametrize("shift_mm,expected", [(0.0, "left"), (-10.0, "right"), (10.0, "left")])
def test_laterality_in_patient_coordinates(shift_mm: float, expected: str) -> None:
    """The lesion lies 4 mm left of the midline column; its slices sit ``shift_mm`` along patient x
    from the middle of the stack's sideways shifts."""
    labels = vol((SDH, slice(2, 4), slice(20, 30), slice(36, 44)))
    positions = np.zeros((6, 3))
    positions[2:4, 0] = shift_mm
    positions[[0, 5], 0] = -shift_mm
    cleaned, comps, _ = clean_labels(labels, SPACING)
    assert laterality(cleaned == SDH, comps, SPACING, 31.5, (1, 0, 0), positions=positions) == expected


def test_bleed_threshold_trades_uncertain_pixels_for_fewer_false_calls():
    from segmenter.postprocess import label_map

    probs = np.zeros((1, 3, 1, 4), np.float32)
    probs[0, :, 0, 0] = (0.4, 0.35, 0.25)  # bleed 0.60, SDH more likely than EDH
    probs[0, :, 0, 1] = (0.3, 0.2, 0.5)  # bleed 0.70, EDH
    probs[0, :, 0, 2] = (0.9, 0.05, 0.05)
    probs[0, :, 0, 3] = (0.1, 0.0, 0.9)
    assert label_map(probs).tolist() == [[[0, 2, 0, 2]]]  # argmax
    assert label_map(probs, 0.55).tolist() == [[[1, 2, 0, 2]]]
    assert label_map(probs, 0.8).tolist() == [[[0, 0, 0, 2]]]
    with pytest.raises(ValueError, match="bleed_threshold must be between 0 and 1"):
        label_map(probs, 1.0)
