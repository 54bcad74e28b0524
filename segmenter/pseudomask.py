"""Per-type pseudo-masks from haemorrhage boxes on real 8-bit slices.

A box around a subdural or epidural haematoma is not a mask: it also holds brain, bone and
often scalp.  Inside a box the haematoma is the hyperdense tissue inside the skull that lies
against the inner table, so the pseudo-mask keeps exactly that:

1. the skull is the saturated bone (closed over sutures and small gaps), and the intracranial
   cavity is what it encloses;
2. candidate pixels are in the cavity, inside the box, and denser than the slice's own brain
   by ``BLOOD_ABOVE_BRAIN_HU`` (the brain level is the mode of the cavity's grey levels, so a
   slice windowed a little differently still works);
3. an opening removes the thin partial-volume band along the bone, which real CT
   shows everywhere and which is not blood;
4. only connected parts that reach the inner table (within ``TABLE_CONTACT_PX``) are kept.

Every other pixel of a dural box inside the cavity is ``IGNORE``: the box says blood is
somewhere there, not that the rest is normal.  Pixels outside dural boxes, including inside
boxes of intraparenchymal, intraventricular and subarachnoid blood, are background: those are
real bleeds that the model must not call SDH or EDH.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .findings import BACKGROUND, EDH, SDH
from .realslices import ASSUMED_WINDOW, RealSlice, brain_grey, skull_and_cavity

#: Label of pixels that carry no supervision (the loss skips them).
IGNORE = 255
#: How much denser than the slice's brain a pixel must be to count as blood (HU).
BLOOD_ABOVE_BRAIN_HU = 14.0
#: Largest gap between a kept part and the saturated bone, in pixels.
TABLE_CONTACT_PX = 3
#: 3x3 opening steps: parts thinner than 2 * steps + 1 pixels are dropped (partial-volume rim).
OPENING_STEPS = 2
#: Pixels a box is grown by on each side (boxes are drawn by hand and may clip a crescent).
BOX_MARGIN_PX = 3

_TYPE_LABEL = {"SDH": SDH, "EDH": EDH}


def pseudo_mask(item: RealSlice) -> np.ndarray:
    """uint8 label map (rows, cols): SDH/EDH pseudo-masks, ``IGNORE`` elsewhere in their boxes."""
    grey = item.grey
    labels = np.full(grey.shape, BACKGROUND, np.uint8)
    dural = [b for b in item.boxes if b.kind in _TYPE_LABEL]
    if not dural:
        return labels
    bone, cavity = skull_and_cavity(grey)
    grey_per_hu = 255.0 / ASSUMED_WINDOW[1]
    threshold = brain_grey(grey, cavity) + BLOOD_ABOVE_BRAIN_HU * grey_per_hu
    dense = cavity & (grey >= threshold)
    dense = ndimage.binary_opening(dense, structure=np.ones((3, 3), bool), iterations=OPENING_STEPS)
    near_table = ndimage.binary_dilation(bone, structure=_disk(TABLE_CONTACT_PX))
    claims = np.zeros((3,) + grey.shape, bool)  # per label: pixels some box of it claims
    for box in dural:
        inside = np.zeros(grey.shape, bool)
        inside[max(0, box.y0 - BOX_MARGIN_PX):box.y1 + BOX_MARGIN_PX,
               max(0, box.x0 - BOX_MARGIN_PX):box.x1 + BOX_MARGIN_PX] = True
        label = _TYPE_LABEL[box.kind]
        labels[inside & cavity] = IGNORE
        lab, n = ndimage.label(dense & inside)
        if n:
            touching = np.unique(lab[near_table & (lab > 0)])
            claims[label] |= np.isin(lab, touching[touching > 0])
    both = claims[SDH] & claims[EDH]
    labels[claims[SDH] & ~both] = SDH
    labels[claims[EDH] & ~both] = EDH
    return labels


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius
