"""Slices along their normal: which stacks have holes, and the slab each slice stands for.

Everything here works on one number per slice, its position along the slice normal in mm
(``segmenter.geometry.positions_along_normal``), so it holds for tilted stacks as well: a
gantry tilt shifts slices within their planes, not along the normal.

Rules
-----
- Uneven spacing is analysed.  Head CT routinely has two spacings in one series (thin through
  the posterior fossa, thicker above), and scanners may overlap the two runs where they meet.
- Duplicate positions are refused: two images of one plane make the volume ambiguous.
- Gaps are refused.  A step is a gap when it is more than :data:`MAX_GAP_RATIO` times the
  larger of its neighbouring steps (a missing slice, usually an incomplete transfer) or more
  than :data:`MAX_GAP_RATIO` times the larger SliceThickness of its two slices (tissue that was
  never imaged, as in a gapped sequential protocol).  Across a gap a volume is guessed, not
  measured.
- Each slice stands for the slab from half-way to its lower neighbour to half-way to its upper
  neighbour (:func:`slabs_mm`); the slabs tile the stack without overlap or holes, so volumes
  neither count overlapping reconstructions twice nor leave the space between runs out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: A step longer than this many times its neighbouring steps, or than its slices' thickness, is
#: a gap: at least a third of the tissue there was not imaged (or a slice is missing).  Two
#: spacings in one series are no gap: a 4 mm run followed by a 7 mm run has a step of 7 mm
#: next to another 7 mm step, and the 7 mm slices are 7 mm thick.
MAX_GAP_RATIO = 1.5

ArrayLike = Sequence[float | None] | np.ndarray


def _thicknesses(thicknesses: ArrayLike | None, n: int) -> np.ndarray | None:
    if thicknesses is None:
        return None
    values = np.array([np.nan if t is None else float(t) for t in thicknesses], dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"thicknesses must have one value per slice ({n}); got {values.size}")
    values[~(values > 0)] = np.nan  # zero, negative or NaN: unknown
    return values


def gap_problem(along_mm: ArrayLike, thicknesses: ArrayLike | None = None, tolerance_mm: float = 0.1,
                max_gap_ratio: float = MAX_GAP_RATIO) -> str | None:
    """Reason when the slices do not cover their range without holes, else None.

    Parameters
    ----------
    along_mm:
        Position of each slice along the normal, any order.
    thicknesses:
        SliceThickness per slice in the same order; ``None``, NaN or a value <= 0 where unknown
        (then only the neighbouring steps are used).
    tolerance_mm:
        Positions closer than this are duplicates; steps may exceed the limits by this much.
    max_gap_ratio:
        See :data:`MAX_GAP_RATIO`.
    """
    along = np.asarray(along_mm, dtype=np.float64).reshape(-1)
    thick = _thicknesses(thicknesses, along.size)
    if along.size < 2:
        return f"need at least 2 slices to measure spacing; got {along.size}"
    order = np.argsort(along, kind="stable")
    along = along[order]
    thick = None if thick is None else thick[order]
    steps = np.diff(along)
    duplicates = int(np.sum(steps <= tolerance_mm))
    if duplicates:
        return f"duplicate slice positions: {duplicates} slice(s) within {tolerance_mm} mm of another"
    for k, step in enumerate(steps):
        where = f"between positions {along[k]:.2f} and {along[k + 1]:.2f} mm"
        nearby = [float(steps[j]) for j in (k - 1, k + 1) if 0 <= j < steps.size]
        usual = max(nearby, default=step)
        if step > max_gap_ratio * usual + tolerance_mm:
            ratio = step / usual
            if abs(ratio - round(ratio)) * usual <= tolerance_mm:
                return f"gap: {round(ratio) - 1} slice(s) missing {where} (spacing {usual:.2f} mm)"
            return f"gap: step of {step:.2f} mm {where}, where the neighbouring steps are at most {usual:.2f} mm"
        if thick is not None and np.all(np.isfinite(thick[k:k + 2])):
            slab = float(thick[k:k + 2].max())
            if step > max_gap_ratio * slab + tolerance_mm:
                return (f"gap: slices {slab:.2f} mm thick are {step:.2f} mm apart {where}; "
                        f"the tissue between them was not imaged")
    return None


def slabs_mm(along_mm: ArrayLike, tolerance_mm: float = 0.1) -> np.ndarray:
    """Width of the slab each slice stands for, in the order of ``along_mm`` (mm).

    Half-way to each neighbour; the end slices reach as far outwards as inwards.  An evenly
    spaced stack (every step within ``tolerance_mm`` of the median) gets the median spacing for
    every slice, so its volumes are exactly those of a regular grid.

    Raises
    ------
    ValueError
        With fewer than two slices, where no spacing exists.
    """
    along = np.asarray(along_mm, dtype=np.float64).reshape(-1)
    if along.size < 2:
        raise ValueError(f"slabs need at least 2 slices; got {along.size}")
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    median = float(np.median(steps))
    if np.all(np.abs(steps - median) <= tolerance_mm):
        return np.full(along.size, median)
    below = np.concatenate([steps[:1], steps])
    above = np.concatenate([steps, steps[-1:]])
    out = np.empty(along.size)
    out[order] = (below + above) / 2.0
    return out
