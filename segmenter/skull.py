"""Skull and intracranial cavity of one axial slice, shared by pseudo-masks and lesion drawing.

The cavity is what the closed skull encloses.  When the skull is open on the slice (fracture,
craniectomy, skull base) the convex hull of the bone stands in for it.  Of the enclosed
regions, the one holding the most brain-like tissue is the cavity: the space between a head
holder and the scalp, the orbits and the sinuses are enclosed too, but hold no brain.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (a copy of the mask when it has no area)."""
    pts = np.argwhere(mask)
    if len(pts) < 3:
        return mask.copy()
    try:
        hull = Delaunay(pts[ConvexHull(pts).vertices])
    except QhullError:  # all pixels on a line
        return mask.copy()
    y0, x0 = pts.min(0)
    y1, x1 = pts.max(0) + 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = hull.find_simplex(np.stack([yy.ravel(), xx.ravel()], 1)) >= 0
    out = np.zeros_like(mask, bool)
    out[y0:y1, x0:x1] = inside.reshape(yy.shape)
    return out


def keep_large(mask: np.ndarray, min_px: int) -> np.ndarray:
    """The connected parts of ``mask`` with at least ``min_px`` pixels."""
    lab, n = ndimage.label(mask)
    if not n:
        return mask
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return np.isin(lab, 1 + np.flatnonzero(sizes >= min_px))


def intracranial_cavity(bone: np.ndarray, brain_like: np.ndarray, close_px: int = 2) -> np.ndarray:
    """Boolean cavity enclosed by ``bone`` (see the module docstring); may be empty."""
    size = 2 * close_px + 1
    closed = ndimage.binary_closing(bone, structure=np.ones((size, size), bool))
    cavity = ndimage.binary_fill_holes(closed) & ~closed
    if (cavity & brain_like).sum() < 0.3 * (convex_hull(bone) & brain_like).sum():
        cavity = convex_hull(bone) & ~closed
    lab, n = ndimage.label(cavity)
    if n > 1:
        brain = ndimage.sum_labels(brain_like, lab, index=np.arange(1, n + 1))
        cavity = lab == (1 + int(np.argmax(brain)))
    return cavity
