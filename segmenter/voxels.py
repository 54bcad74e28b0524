"""Voxel volumes on a stack of slices that may be unevenly spaced.

A voxel of slice ``z`` holds ``dy * dx * slab_mm[z]`` cubic millimetres, where ``slab_mm`` is
the width along the slice normal that the slice stands for (``segmenter.spacing.slabs_mm``).
For an evenly spaced stack every slab is ``dz`` and every function here returns exactly what
``count * dz * dy * dx`` gives, so ordinary series keep their numbers to the last bit; only
an unevenly spaced stack takes the per-slice path.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: mL per voxel: one number for an evenly spaced stack, else one per slice, shape (z,).
VoxelML = float | np.ndarray


def voxel_ml(spacing_mm: Sequence[float], slab_mm: Sequence[float] | np.ndarray | None = None) -> VoxelML:
    """Volume of one voxel in mL, per slice when the slabs differ.

    Parameters
    ----------
    spacing_mm:
        ``(dz, dy, dx)``; ``dz`` is used when ``slab_mm`` is None.
    slab_mm:
        Per slice, the slab width along the normal (mm), or None for an evenly spaced stack.

    Raises
    ------
    ValueError
        When a spacing or slab is not positive.
    """
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers (dz, dy, dx); got {spacing_mm}")
    if slab_mm is None:
        return float(np.prod(spacing_mm)) / 1000.0
    slab = np.asarray(slab_mm, dtype=np.float64).reshape(-1)
    if slab.size == 0 or not np.all(slab > 0):
        raise ValueError(f"slab_mm must be positive widths, one per slice; got {slab.tolist()}")
    if np.all(slab == slab[0]):
        return float(np.prod((slab[0], *spacing_mm[1:]))) / 1000.0
    return slab * float(spacing_mm[1]) * float(spacing_mm[2]) / 1000.0


def check_slices(vml: VoxelML, n_slices: int) -> None:
    """Raise ValueError when per-slice volumes do not match a stack of ``n_slices``."""
    if np.ndim(vml) and np.shape(vml) != (n_slices,):
        raise ValueError(f"slab_mm must have one value per slice ({n_slices}); got {np.shape(vml)[0]}")


def on_slices(vml: VoxelML, z: slice) -> VoxelML:
    """The per-slice volumes of the slices ``z`` (a bounding box's first axis)."""
    return vml if np.ndim(vml) == 0 else np.asarray(vml)[z]


def mask_ml(mask: np.ndarray, vml: VoxelML) -> float:
    """Volume of a (z, y, x) boolean mask in mL."""
    if np.ndim(vml) == 0:
        return int(np.count_nonzero(mask)) * float(vml)
    return float(np.count_nonzero(mask, axis=(1, 2)) @ vml)


def slice_ml(mask: np.ndarray, vml: VoxelML) -> np.ndarray:
    """Volume per slice of a (z, y, x) mask; voxel counts (not mL) for an evenly spaced stack.

    Meant for shares of a volume across slices, where a constant factor cancels.
    """
    counts = np.count_nonzero(mask, axis=(1, 2))
    return counts if np.ndim(vml) == 0 else counts * vml


def component_ml(comps: np.ndarray, n: int, vml: VoxelML, where: np.ndarray | None = None) -> np.ndarray:
    """Volume (mL) of each component ``0..n`` of a (z, y, x) map, counting only ``where``.

    Returns
    -------
    numpy.ndarray
        Shape (n + 1,); entry 0 is the background.
    """
    if np.ndim(vml) == 0:
        weights = None if where is None else where.ravel()
        return np.bincount(comps.ravel(), weights=weights, minlength=n + 1) * vml
    total = np.zeros(n + 1)
    for z in range(comps.shape[0]):
        weights = None if where is None else where[z].ravel()
        total += np.bincount(comps[z].ravel(), weights=weights, minlength=n + 1) * vml[z]
    return total
