"""Tables of stacks along the normal for segmenter.spacing: which have holes, and the slabs."""
from __future__ import annotations

import numpy as np
import pytest

from segmenter.spacing import MAX_GAP_RATIO, gap_problem, slabs_mm

EVEN = np.arange(10) * 5.0
#: 4 mm through the posterior fossa, then 7 mm, the runs overlapping where they meet.
TWO_RUNS = np.array([*(4.0 * np.arange(14)), 53.1, *(53.1 + 7.0 * np.arange(1, 14))])
TWO_RUNS_THICKNESS = [4.0] * 14 + [7.0] * 14

GOOD = {
    "even": (EVEN, None),
    "even, thickness known": (EVEN, [5.0] * 10),
    "overlapping reconstruction": (np.arange(10) * 2.5, [5.0] * 10),
    "two slices": (np.array([0.0, 5.0]), None),
    "two runs": (TWO_RUNS, None),
    "two runs with thicknesses": (TWO_RUNS, TWO_RUNS_THICKNESS),
    "two runs, shuffled": (TWO_RUNS[::-1], TWO_RUNS_THICKNESS[::-1]),
    "4 then 7 mm without overlap": (np.array([0, 4, 8, 12, 19, 26, 33.0]), [4] * 4 + [7] * 3),
    "one step 1.4 times the others": (np.array([0, 5, 10, 17, 22.0]), None),
    "thin slices 1.5 times apart": (EVEN * 1.5, [5.0] * 10),
    "thickness unknown on some slices": (EVEN * 2, [5.0, None, 0.0, float("nan"), *[None] * 6]),
}


@pytest.mark.parametrize("along, thick", GOOD.values(), ids=GOOD.keys())
def test_good(along, thick):
    assert gap_problem(along, thick) is None


ILL = {
    "one slice": (np.array([0.0]), None, "at least 2 slices"),
    "duplicate": (np.array([0, 5, 5.05, 10.0]), None, "duplicate slice positions: 1 slice(s)"),
    "one slice missing": (np.delete(EVEN, 4), None, "gap: 1 slice(s) missing between positions 15.00 and 25.00"),
    "three missing": (np.delete(EVEN, [3, 4, 5]), None, "gap: 3 slice(s) missing"),
    "first slice of the series missing": (np.array([0, 10, 15, 20.0]), None, "gap: 1 slice(s) missing"),
    "missing from the thin run": (np.delete(TWO_RUNS, 5), TWO_RUNS_THICKNESS[1:], "gap: 1 slice(s) missing"),
    "missing from the thick run": (np.delete(TWO_RUNS, 20), TWO_RUNS_THICKNESS[1:], "gap: 1 slice(s) missing"),
    "odd step": (np.array([0, 5, 10, 19, 24.0]), None, "gap: step of 9.00 mm"),
    "gapped protocol": (EVEN * 2, [5.0] * 10, "gap: slices 5.00 mm thick are 10.00 mm apart"),
}


@pytest.mark.parametrize("along, thick, reason", ILL.values(), ids=ILL.keys())
def test_ill(along, thick, reason):
    problem = gap_problem(along, thick)
    assert problem is not None and reason in problem


def test_the_limit_is_the_ratio_plus_tolerance():
    limit = 5.0 * MAX_GAP_RATIO
    assert gap_problem([0, 5, 10, 10 + limit + 0.09, 15 + limit + 0.09]) is None
    assert gap_problem([0, 5, 10, 10 + limit + 0.11, 15 + limit + 0.11]) is not None


def test_thicknesses_must_match_the_slices():
    with pytest.raises(ValueError, match=r"thicknesses must have one value per slice \(10\); got 9"):
        gap_problem(EVEN, [5.0] * 9)


@pytest.mark.parametrize("along, expected", [
    (EVEN, [5.0] * 10),
    (np.array([0, 4, 8, 15, 22.0]), [4, 4, 5.5, 7, 7]),
    (np.array([22, 0, 15, 4, 8.0]), [7, 4, 7, 4, 5.5]),  # in the caller's order
    (np.array([0, 5.0]), [5.0, 5.0]),
])
def test_slabs(along, expected):
    np.testing.assert_allclose(slabs_mm(along), expected)


def test_slabs_of_two_runs_tile_the_stack():
    slabs = slabs_mm(TWO_RUNS)
    assert slabs.sum() == pytest.approx(TWO_RUNS[-1] - TWO_RUNS[0] + 4.0 / 2 + 7.0 / 2)
    assert slabs[:13] == pytest.approx([4.0] * 13) and slabs[15:] == pytest.approx([7.0] * 13)


def test_slabs_need_two_slices():
    with pytest.raises(ValueError, match="slabs need at least 2 slices; got 1"):
        slabs_mm([3.0])
