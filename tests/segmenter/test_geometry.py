"""Tables of good and ill slice stacks for segmenter.geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from segmenter import geometry as g

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def stack(n: int = 10, dz: float = 5.0, iop=AXIAL, tilt_deg: float = 0.0, offsets=None) -> np.ndarray:
    """Positions of an n-slice stack along the normal of ``iop`` (at ``offsets`` when given),
    optionally tilted: each slice shifted along the column direction as a tilted gantry does."""
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    offsets = np.arange(n) * dz if offsets is None else np.asarray(offsets, float)
    return (offsets[:, None] * normal + (np.tan(np.radians(tilt_deg)) * offsets)[:, None] * iop[3:]
            + np.array([-120.0, -110.0, 30.0]))


#: Two spacings as a GE head protocol writes them: 4 mm through the posterior fossa, then 7 mm,
#: the runs overlapping where they meet (positions along the normal of the real series).
TWO_RUNS = [*(4.0 * np.arange(14)), 53.1, *(53.1 + 7.0 * np.arange(1, 14))]
TWO_RUNS_THICKNESS = [4.0] * 14 + [7.0] * 14
#: The tilted plane of that series: IOP (1, 0, 0, 0, 0.948, -0.317), 18.5 degrees.
TILTED_PLANE = (1.0, 0.0, 0.0, 0.0, math.cos(math.radians(18.5)), -math.sin(math.radians(18.5)))


@pytest.mark.parametrize(
    "iop, expected",
    [
        (AXIAL, (0, 0, 1)),
        ((1, 0, 0, 0, -1, 0), (0, 0, -1)),
        (CORONAL, (0, 1, 0)),
        ((0, 1, 0, 0, 0, -1), (-1, 0, 0)),
    ],
)
def test_slice_normal(iop, expected):
    np.testing.assert_allclose(g.slice_normal(iop), expected, atol=1e-12)


@pytest.mark.parametrize(
    "iop, match",
    [
        ((1, 0, 0, 0, 1), "6 finite numbers"),
        ((1, 0, 0, 0, 1, float("nan")), "6 finite numbers"),
        ((2, 0, 0, 0, 1, 0), "unit vector"),
        ((1, 0, 0, 0.6, 0.8, 0), "orthogonal"),
    ],
)
def test_slice_normal_rejects_bad_iop(iop, match):
    with pytest.raises(ValueError, match=match):
        g.slice_normal(iop)


@pytest.mark.parametrize("iop", [AXIAL, (1, 0, 0, 0, -1, 0), CORONAL])
def test_sort_order_follows_normal_not_input_order(iop):
    positions = stack(iop=iop)
    shuffled = np.random.default_rng(1).permutation(len(positions))
    order = g.sort_order(positions[shuffled], iop)
    np.testing.assert_array_equal(shuffled[order], np.arange(len(positions)))
    along = g.positions_along_normal(positions[shuffled][order], iop)
    assert np.all(np.diff(along) > 0)


@pytest.mark.parametrize("dz", [0.625, 2.5, 5.0])
def test_slice_spacing_from_positions(dz):
    assert g.slice_spacing(stack(dz=dz)[::-1], AXIAL) == pytest.approx(dz)


def test_slice_spacing_needs_two_slices():
    with pytest.raises(ValueError, match="at least 2"):
        g.slice_spacing(stack(n=1), AXIAL)


@pytest.mark.parametrize("tilt", [0.0, 0.3, 12.0, 25.0])
def test_tilt_angle(tilt):
    assert g.tilt_angle_deg(stack(tilt_deg=tilt), AXIAL) == pytest.approx(tilt, abs=1e-6)


def test_tilt_ignores_position_rounding_on_thin_slices():
    positions = np.round(stack(n=200, dz=0.625), 2)
    assert g.tilt_angle_deg(positions, AXIAL) < 0.5


@pytest.mark.parametrize("tilt, refused", [(0.0, False), (18.5, False), (30.0, False), (44.0, False), (50.0, True)])
def test_only_a_shear_beyond_any_gantry_tilt_is_refused(tilt, refused):
    problem = g.tilt_problem(stack(tilt_deg=tilt), AXIAL)
    assert (problem is not None) is refused
    if refused:
        assert "beyond any gantry tilt" in problem


def test_slabs_of_an_even_stack_are_the_spacing_exactly():
    positions = np.round(stack(n=30, dz=5.0, tilt_deg=18.5), 3)  # DS rounding, tilted
    slabs = g.slice_slabs_mm(positions, AXIAL)
    assert np.all(slabs == g.slice_spacing(positions, AXIAL))


@pytest.mark.parametrize("tilt", [0.0, 18.5])
def test_slabs_are_measured_along_the_normal_half_way_to_each_neighbour(tilt):
    positions = stack(offsets=[0, 4, 8, 15, 22], tilt_deg=tilt)
    np.testing.assert_allclose(g.slice_slabs_mm(positions, AXIAL), [4, 4, 5.5, 7, 7])
    shuffled = [3, 0, 4, 1, 2]
    np.testing.assert_allclose(g.slice_slabs_mm(positions[shuffled], AXIAL), np.array([4, 4, 5.5, 7, 7])[shuffled])


def test_slabs_tile_a_series_with_overlapping_runs():
    positions = stack(offsets=TWO_RUNS, iop=TILTED_PLANE, tilt_deg=18.5)
    slabs = g.slice_slabs_mm(positions, TILTED_PLANE)
    along = np.sort(g.positions_along_normal(positions, TILTED_PLANE))
    # From half a step below the first slice to half a step above the last, nothing twice.
    assert slabs.sum() == pytest.approx(along[-1] - along[0] + 4.0 / 2 + 7.0 / 2)
    assert slabs[13] == pytest.approx((4.0 + 53.1 - 52.0) / 2) and slabs[14] == pytest.approx((1.1 + 7.0) / 2)


GOOD = {
    "axial": (stack(), [AXIAL] * 10),
    "reversed input": (stack()[::-1], [AXIAL] * 10),
    "rows flipped": (stack(iop=(1, 0, 0, 0, -1, 0)), [(1, 0, 0, 0, -1, 0)] * 10),
    "two slices": (stack(n=2), [AXIAL] * 2),
    "iop rounding noise": (stack(), [AXIAL] * 9 + [(1, 0, 1e-5, 0, 0.99999, 2e-4)]),
    "slight oblique": (stack(iop=(1, 0, 0, 0, math.cos(0.3), math.sin(0.3))),
                       [(1, 0, 0, 0, math.cos(0.3), math.sin(0.3))] * 10),
    "jitter below tolerance": (stack() + np.array([0, 0, 0.04]) * (np.arange(10) % 2)[:, None], [AXIAL] * 10),
    "gantry tilt 18.5 degrees": (stack(tilt_deg=18.5), [AXIAL] * 10),
    "gantry tilt 30 degrees, reversed": (stack(tilt_deg=-30)[::-1], [AXIAL] * 10),
    "one longer step": (stack(offsets=[0, 5, 10, 17, 22]), [AXIAL] * 5),
    "two spacings, tilted plane and stack": (stack(offsets=TWO_RUNS, iop=TILTED_PLANE, tilt_deg=18.5),
                                              [TILTED_PLANE] * 28),
}


@pytest.mark.parametrize("positions, iops", GOOD.values(), ids=GOOD.keys())
def test_geometry_good(positions, iops):
    assert g.geometry_problem(positions, iops) is None


def test_two_spacings_with_their_thicknesses_are_good():
    positions = stack(offsets=TWO_RUNS, iop=TILTED_PLANE, tilt_deg=18.5)
    assert g.geometry_problem(positions, [TILTED_PLANE] * 28, thicknesses=TWO_RUNS_THICKNESS) is None


def _with_gap() -> np.ndarray:
    return np.delete(stack(), 4, axis=0)


ILL = {
    "one slice": (stack(n=1), [AXIAL], "at least 2 slices"),
    "sheared beyond a gantry tilt": (stack(tilt_deg=60), [AXIAL] * 10, "beyond any gantry tilt"),
    "gap": (_with_gap(), [AXIAL] * 9, "gap: 1 slice"),
    "gap in a tilted stack": (np.delete(stack(tilt_deg=18.5), 4, axis=0), [AXIAL] * 9, "gap: 1 slice"),
    "slice missing from the thin run": (stack(offsets=np.delete(TWO_RUNS, 5), iop=TILTED_PLANE, tilt_deg=18.5),
                                        [TILTED_PLANE] * 27, "gap: 1 slice"),
    "duplicate": (np.vstack([stack(), stack()[3:4]]), [AXIAL] * 11, "duplicate slice positions"),
    "coronal": (stack(iop=CORONAL), [CORONAL] * 10, "not axial"),
    "orientation differs": (stack(), [AXIAL] * 9 + [(1, 0, 0, 0, 0.995, 0.0998)], "inconsistent orientation"),
    "invalid iop": (stack(), [AXIAL] * 9 + [(1, 0, 0, 1, 0, 0)], "slice 9"),
    "count mismatch": (stack(), [AXIAL] * 9, "one orientation per position"),
}


@pytest.mark.parametrize("positions, iops, reason", ILL.values(), ids=ILL.keys())
def test_geometry_ill(positions, iops, reason):
    problem = g.geometry_problem(positions, iops)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    "iop, max_angle, axial",
    [
        (AXIAL, 30.0, True),
        ((1, 0, 0, 0, math.cos(math.radians(25)), math.sin(math.radians(25))), 30.0, True),
        ((1, 0, 0, 0, math.cos(math.radians(35)), math.sin(math.radians(35))), 30.0, False),
        ((1, 0, 0, 0, math.cos(math.radians(35)), math.sin(math.radians(35))), 40.0, True),
        (CORONAL, 30.0, False),
        ((0, 1, 0, 0, 0, -1), 89.0, False),
    ],
)
def test_is_axialish(iop, max_angle, axial):
    assert g.is_axialish(iop, max_angle) is axial
    assert (g.axial_problem(iop, max_angle) is None) is axial


def test_axial_check_can_be_disabled():
    assert g.geometry_problem(stack(iop=CORONAL), [CORONAL] * 10, max_axial_angle_deg=None) is None


def test_mean_orientation_is_orthonormal():
    iop = g.mean_orientation([AXIAL, (1, 0, 1e-4, 0, 0.99999, 3e-4)])
    assert np.linalg.norm(iop[:3]) == pytest.approx(1.0)
    assert np.linalg.norm(iop[3:]) == pytest.approx(1.0)
    assert float(iop[:3] @ iop[3:]) == pytest.approx(0.0, abs=1e-12)
