"""segmenter.voxels: voxel volumes per slice, exact on evenly spaced stacks."""
from __future__ import annotations

import numpy as np
import pytest

from segmenter.voxels import component_ml, mask_ml, on_slices, slice_ml, voxel_ml

SPACING = (5.0, 0.5, 0.5)  # 1.25 mm^3 per voxel


def test_even_stack_is_one_number_exactly_as_before():
    assert voxel_ml(SPACING) == float(np.prod(SPACING)) / 1000.0
    assert voxel_ml(SPACING, [5.0] * 6) == voxel_ml(SPACING)
    assert voxel_ml((4.001925788644007, 0.4882812, 0.4882812), [4.001925788644007] * 3) == \
        float(np.prod((4.001925788644007, 0.4882812, 0.4882812))) / 1000.0


def test_uneven_stack_is_one_number_per_slice():
    np.testing.assert_allclose(voxel_ml(SPACING, [4.0, 5.5, 7.0]), [1e-3, 1.375e-3, 1.75e-3])


@pytest.mark.parametrize("spacing, slabs, message", [
    ((5.0, 0.5), None, "spacing_mm must be three positive numbers"),
    ((5.0, 0.0, 0.5), None, "spacing_mm must be three positive numbers"),
    (SPACING, [4.0, 0.0], "slab_mm must be positive widths"),
    (SPACING, [], "slab_mm must be positive widths"),
])
def test_ill_inputs(spacing, slabs, message):
    with pytest.raises(ValueError, match=message):
        voxel_ml(spacing, slabs)


def test_volumes_weight_each_slice_by_its_slab():
    mask = np.zeros((3, 8, 8), bool)
    mask[:, :4, :4] = True  # 16 voxels per slice
    vml = voxel_ml(SPACING, [4.0, 5.5, 7.0])
    assert mask_ml(mask, vml) == pytest.approx(16 * 0.25 * (4.0 + 5.5 + 7.0) / 1000)
    assert mask_ml(mask, voxel_ml(SPACING)) == 48 * 1.25e-3
    np.testing.assert_allclose(slice_ml(mask, vml), 16 * np.asarray(vml))
    np.testing.assert_array_equal(slice_ml(mask, voxel_ml(SPACING)), [16, 16, 16])  # counts: shares only
    np.testing.assert_allclose(on_slices(vml, slice(1, 3)), np.asarray(vml)[1:])


@pytest.mark.parametrize("slabs", [None, [4.0, 5.5, 7.0]])
def test_component_volumes_add_up(slabs):
    comps = np.zeros((3, 8, 8), np.int32)
    comps[0:2, :2, :2] = 1
    comps[1:3, 5:, 5:] = 2
    vml = voxel_ml(SPACING, slabs)
    sizes = component_ml(comps, 2, vml)
    assert sizes[1] == pytest.approx(mask_ml(comps == 1, vml)) and sizes[2] == pytest.approx(mask_ml(comps == 2, vml))
    where = np.zeros_like(comps, bool)
    where[1] = True
    expected = [mask_ml((comps == c) & where, vml) for c in range(3)]
    np.testing.assert_allclose(component_ml(comps, 2, vml, where), expected)
