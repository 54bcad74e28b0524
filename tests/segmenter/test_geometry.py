"""Tables of good and ill slice stacks for segmenter.geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from segmenter import geometry as g

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def stack(n: int = 10, dz: float = 5.0, iop=AXIAL, tilt_deg: float = 0.0) -> np.ndarray:
    """Positions of an n-slice stack along the normal of ``iop``, optionally tilted."""
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    offsets = np.arange(n) * dz
    return (offsets[:, None] * normal + (np.tan(np.radians(tilt_deg)) * offsets)[:, None] * iop[3:]
            + np.array([-120.0, -110.0, 30.0]))


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
    assert g.tilt_problem(positions, AXIAL) is None


GOOD = {
    "axial": (stack(), [AXIAL] * 10),
    "reversed input": (stack()[::-1], [AXIAL] * 10),
    "rows flipped": (stack(iop=(1, 0, 0, 0, -1, 0)), [(1, 0, 0, 0, -1, 0)] * 10),
    "two slices": (stack(n=2), [AXIAL] * 2),
    "iop rounding noise": (stack(), [AXIAL] * 9 + [(1, 0, 1e-5, 0, 0.99999, 2e-4)]),
    "slight oblique": (stack(iop=(1, 0, 0, 0, math.cos(0.3), math.sin(0.3))),
                       [(1, 0, 0, 0, math.cos(0.3), math.sin(0.3))] * 10),
    "jitter below tolerance": (stack() + np.array([0, 0, 0.04]) * (np.arange(10) % 2)[:, None], [AXIAL] * 10),
}


@pytest.mark.parametrize("positions, iops", GOOD.values(), ids=GOOD.keys())
def test_geometry_good(positions, iops):
    assert g.geometry_problem(positions, iops) is None


def _with_gap() -> np.ndarray:
    return np.delete(stack(), 4, axis=0)


def _uneven() -> np.ndarray:
    positions = stack()
    positions[6:, 2] += 1.5
    return positions


ILL = {
    "one slice": (stack(n=1), [AXIAL], "at least 2 slices"),
    "gantry tilt": (stack(tilt_deg=15), [AXIAL] * 10, "gantry tilt"),
    "gap": (_with_gap(), [AXIAL] * 9, "gap: 1 slice"),
    "uneven": (_uneven(), [AXIAL] * 10, "uneven spacing"),
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
