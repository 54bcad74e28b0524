"""CT-like phantoms: deterministic, labels only inside the inner table, EDH bounded by sutures,
SDH crescents vs EDH lenses, dense tables around diploe, no black CSF ring."""
from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from segmenter.findings import EDH, SDH
from segmenter.phantom_ct import (CtPhantomRanges, generate_ct_phantom, iter_ct_phantoms, make_ct_phantom,
                                  save_montage)
from segmenter.phantom_ct_lesions import crescent_profile, lens_profile

INTRACRANIAL, BONE = 3, 2


@pytest.fixture(scope="module")
def small() -> CtPhantomRanges:
    """Coarse pixels, few slices: fast, same anatomy."""
    return replace(CtPhantomRanges.training(), size=(160, 160), pixel_spacing_mm=(1.4, 1.5),
                   n_slices=(10, 12), slice_spacing_mm=(5.0, 5.0))


@pytest.fixture(scope="module")
def lesion_cases(small: CtPhantomRanges) -> list:
    return [make_ct_phantom((5, i), kind, small, keep_fields=True)
            for i, kind in enumerate(["sdh", "edh", "both", "sdh", "edh", "both"])]


def _crop(p, volume: np.ndarray) -> np.ndarray:
    rows, cols = p.meta["crop"]
    return volume[:, rows, cols]


def test_deterministic_per_seed_and_index(small: CtPhantomRanges) -> None:
    a, b = generate_ct_phantom(3, 11, ranges=small), generate_ct_phantom(3, 11, ranges=small)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels) and a.spacing_mm == b.spacing_mm
    c = generate_ct_phantom(4, 11, ranges=small)
    assert c.hu.shape != a.hu.shape or not np.array_equal(c.hu, a.hu)
    listed = list(iter_ct_phantoms([3], 11, ranges=small))
    assert np.array_equal(listed[0].hu, a.hu)
    assert a.hu.dtype == np.float32 and a.labels.dtype == np.uint8


def test_kinds_get_their_labels(lesion_cases: list, small: CtPhantomRanges) -> None:
    for p in lesion_cases:
        present = set(np.unique(p.labels)) - {0}
        assert present == {"sdh": {SDH}, "edh": {EDH}, "both": {SDH, EDH}}[p.kind], p.meta["lesions"]
    for i, kind in enumerate(["negative", "iph"]):
        assert not make_ct_phantom((6, i), kind, small).labels.any()


def test_labels_only_inside_the_inner_table(lesion_cases: list) -> None:
    for p in lesion_cases:
        lab = _crop(p, p.labels)
        assert (p.labels > 0).sum() == (lab > 0).sum()
        assert np.all(p.meta["tissue"][lab > 0] == INTRACRANIAL)
        assert np.all(p.meta["below_table"][lab > 0] >= 0)
        assert np.median(p.hu[p.labels > 0]) > 25  # blood, not bone or air


def test_scalp_hematoma_is_never_labelled(small: CtPhantomRanges) -> None:
    ranges = replace(small, scalp_hematoma_fraction=1.0, scalp_swelling_fraction=1.0)
    for i, kind in enumerate(["edh", "negative"]):
        p = make_ct_phantom((8, i), kind, ranges, keep_fields=True)
        swell = p.meta["scalp_hematoma"]
        assert swell.size > 0
        assert not _crop(p, p.labels).flat[swell].any()
        assert np.all(p.meta["tissue"].flat[swell] == 1)  # scalp, outside the skull


def test_edh_stays_on_one_bone_plate(lesion_cases: list) -> None:
    for p in lesion_cases:
        edh = _crop(p, p.labels) == EDH
        if edh.any():
            assert np.unique(p.meta["suture_code"][edh]).size == 1


def test_sdh_is_a_crescent_and_edh_a_lens() -> None:
    r = np.linspace(0.0, 1.0, 101)
    sdh, edh = crescent_profile(r), lens_profile(r, 0.9)
    # Flat over the middle of the arc: the inner margin runs parallel to the inner table.
    assert sdh[50] > 0.9 * sdh[0] and np.all(np.diff(sdh) <= 1e-6)
    # Parabolic: the lens bulges toward the brain.
    assert edh[50] < 0.8 * edh[0]
    assert sdh.mean() > edh.mean() + 0.1


def test_tables_dense_and_diploe_lighter() -> None:
    ranges = replace(CtPhantomRanges.training(), size=(420, 420), pixel_spacing_mm=(0.45, 0.45),
                     n_slices=(14, 14), skull_mm=(7.0, 7.5), blur_px=(0.6, 0.6))
    p = make_ct_phantom((9, 0), "negative", ranges, keep_fields=True)
    head = p.meta["head"]
    hu = _crop(p, p.hu)
    bone = p.meta["tissue"] == BONE
    rel = (head.depth - head.scalp) / head.skull
    thick = bone & (head.skull > 6.0) & (head.nh > 0.7)  # cut squarely, not obliquely
    outer = hu[thick & (rel > 0.05) & (rel < 0.15)]
    middle = hu[thick & (rel > 0.45) & (rel < 0.55)]
    assert outer.size > 50 and middle.size > 50
    assert 1000 < np.median(outer) < 1900
    assert 250 < np.median(middle) < 800


@pytest.mark.parametrize("seed", range(3))
def test_no_black_ring_under_the_inner_table(seed: int, small: CtPhantomRanges) -> None:
    ranges = replace(small, atrophy_fraction=0.0, size=(320, 320), pixel_spacing_mm=(0.7, 0.7), n_slices=(6, 6))
    p = make_ct_phantom((10, seed), "negative", ranges, keep_fields=True)
    head = p.meta["head"]
    b = p.meta["below_table"]
    band = (b > 0.5) & (b < 2.0) & (head.base == 0)
    assert np.mean(_crop(p, p.hu)[band]) > 20.0  # brain or brighter, not CSF (0-10 HU)


def test_evaluation_ranges_are_wider() -> None:
    train, wide = CtPhantomRanges.training(), CtPhantomRanges.evaluation()
    for f in fields(CtPhantomRanges):
        a, b = getattr(train, f.name), getattr(wide, f.name)
        if isinstance(a, tuple) and f.name != "size":
            assert b[0] <= a[0] and b[1] >= a[1], f.name


def test_montage_is_small(tmp_path, small: CtPhantomRanges) -> None:
    cases = [generate_ct_phantom(i, 1, kind, small) for i, kind in enumerate(["sdh", "edh"])]
    out = save_montage(cases, tmp_path / "m.png", tile=128)
    assert out.stat().st_size < 300_000
