"""Synthetic SDH and EDH laid along the real inner table of real slices.

Phantoms teach the network what a haematoma is; only real slices teach it what a real skull
rim looks like (partial-volume brightening, thin CSF, bone edges).  This module draws a
haematoma into a real, bleed-free slice at model scale, so the same real rim is seen with
and without blood.

Geometry works on the slice's intracranial cavity: ``depth`` is each pixel's distance from the
inner table, ``angle`` its direction from the cavity's centre.  A lesion fills the depths
``0 <= depth < t(angle)`` over an arc, so its outer margin is the real inner table:

* SDH: a crescent.  ``t`` is flat over most of the arc and tapers at the tips, so the inner
  margin runs parallel to the brain surface (concave towards the brain).  Thin for its
  length; arcs from short (small SDH) to a whole hemisphere; stopped at the midline (falx).
* EDH: a biconvex lens.  ``t`` is elliptical, peaking in the middle, so the inner margin
  bulges into the brain.  Thick for its length.

Arc lengths and densities of the two overlap on purpose: only the shape separates them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .findings import SDH
from .skull import intracranial_cavity, keep_large

#: HU at or above which a pixel is bone, on both real HU and mapped 8-bit slices.
BONE_HU = 300.0
#: Model-scale pixel size assumed for drawing lesions: the head crop puts a ~150 mm head
#: across ~230 of 256 pixels.
MM_PER_PX = 0.65


@dataclass(frozen=True)
class CavityMap:
    """Where lesions can go on one slice: cavity, depth from the table, angle, midline."""

    cavity: np.ndarray  # bool (S, S)
    depth_px: np.ndarray  # float32 (S, S), 0 outside the cavity
    angle: np.ndarray  # float32 (S, S), radians in (-pi, pi], 0 = patient left (image right)
    centre: tuple[float, float]

    head_px: int = 0

    @property
    def usable(self) -> bool:
        """Room for a lesion: a large cavity that fills most of the head (not the skull base)."""
        return bool(self.cavity.sum() > 4000 and self.cavity.sum() > 0.45 * self.head_px)


def cavity_map(hu: np.ndarray) -> CavityMap:
    """The cavity geometry of a model-scale HU slice (see the module docstring)."""
    bone = keep_large(hu >= BONE_HU, 40)
    soft = (hu > -200) & (hu < BONE_HU)
    cavity = intracranial_cavity(bone, soft & (hu > 15) & (hu < 60)) & soft
    # Depth is measured from the skull only: bright spots inside (calcifications) are not a table.
    depth = ndimage.distance_transform_edt(ndimage.binary_fill_holes(cavity)).astype(np.float32) * cavity
    if cavity.any():
        cy, cx = (float(v) for v in np.argwhere(cavity).mean(0))
    else:
        cy = cx = hu.shape[0] / 2.0
    yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
    angle = np.arctan2(cy - yy, xx - cx).astype(np.float32)
    return CavityMap(cavity, depth, angle, (cy, cx), int((hu > -200).sum()))


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (a + np.pi) % (2 * np.pi) - np.pi


def lesion_mask(cmap: CavityMap, kind: int, rng: np.random.Generator) -> np.ndarray:
    """A float (S, S) occupancy in [0, 1] of one SDH or EDH drawn on ``cmap``."""
    # Directions whose table is in the cavity; start from a random pixel at the table.
    rim = np.argwhere(cmap.cavity & (cmap.depth_px <= 1.5))
    if len(rim) == 0:
        return np.zeros(cmap.cavity.shape, np.float32)
    y, x = rim[int(rng.integers(len(rim)))]
    centre = float(cmap.angle[y, x])
    if kind == SDH:
        half_arc = np.radians(rng.uniform(12.0, 80.0))
        thick_mm = rng.uniform(2.0, 16.0) * min(1.0, 0.35 + half_arc / np.radians(60.0))
        power = rng.uniform(3.0, 8.0)  # flat middle, tapering tips
    else:
        half_arc = np.radians(rng.uniform(10.0, 38.0))
        thick_mm = rng.uniform(5.0, 26.0) * min(1.0, 0.45 + half_arc / np.radians(40.0))
        power = 2.0  # elliptical: thickest in the middle
    u = _wrap(cmap.angle - centre) / half_arc
    inside_arc = np.abs(u) < 1.0
    if kind == SDH:  # the falx stops a subdural collection at the midline
        side = np.sign(np.cos(centre)) or 1.0
        inside_arc &= np.sign(np.cos(cmap.angle)) == side
    profile = np.where(inside_arc, np.clip(1.0 - np.abs(u) ** power, 0.0, 1.0) ** 0.5, 0.0)
    thick_px = thick_mm / MM_PER_PX * profile
    # A soft edge of about one pixel, as partial volume gives at the lesion margin.
    occ = np.clip(thick_px - cmap.depth_px + 0.5, 0.0, 1.0) * cmap.cavity
    occ[thick_px < 1.0] = 0.0
    return occ.astype(np.float32)


def insert_lesions(hu: np.ndarray, cmap: CavityMap, kinds: tuple[int, ...],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels) of ``hu`` with one lesion of each of ``kinds`` drawn in."""
    out = hu.astype(np.float32).copy()
    labels = np.zeros(hu.shape, np.uint8)
    for kind in kinds:
        occ = lesion_mask(cmap, kind, rng)
        if not occ.any():
            continue
        density = rng.uniform(30.0, 55.0) if kind == SDH and rng.random() < 0.15 else rng.uniform(52.0, 88.0)
        texture = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 1.0)
        blood = density + texture * rng.uniform(2.0, 6.0) * 2.5
        out = out * (1.0 - occ) + blood * occ
        labels[(occ >= 0.5) & (labels == 0)] = kind
    return out, labels
