"""From class probabilities on the source grid to a cleaned label volume and findings.

Rules (also stated in the README's model card):

1. ``labels = argmax(probabilities)`` per voxel.
2. Foreground voxels (SDH or EDH) are grouped into 3D connected components (26-neighbourhood);
   components smaller than ``MIN_COMPONENT_ML`` are set to background.
3. Each remaining component gets one class, the majority of its voxels (ties go to SDH, the
   commoner lesion): a collection is one lesion, not a patchwork of SDH and EDH. Except: a
   connected part of the minority class that holds at least ``SPLIT_MIN_SHARE`` (30 %) of the
   component and at least ``SPLIT_MIN_ML`` (2 mL) keeps its class and becomes a component of
   its own. An SDH and an EDH that touch are two lesions; voting them into one class loses one.
4. An EDH component must lie against the skull: on the slices that hold at least
   ``EDH_MIN_ATTACHED_SHARE`` (half) of its volume it must come within ``EDH_MAX_BONE_GAP_MM``
   (2 mm, in-plane) of bone (``BONE_HU``, 300 HU, and above). Otherwise it is set to background
   and listed as excluded. An epidural hematoma lies between the inner table and the dura, so
   every slice through it meets the skull; a hyperdense blob with brain between it and the
   bone on most of its slices is intraparenchymal, which this model does not report. The rule
   is not applied to SDH, which may run along the falx or the tentorium away from bone.
5. A class is **present** when its total volume after steps 2-4 is at least
   ``MIN_PRESENT_ML`` (0.5 mL). Smaller remnants stay in the label volume but the finding
   reads absent.

Thickness is the largest in-plane thickness: twice the maximum of the in-plane Euclidean
distance transform of the class mask (in mm), over all slices. Laterality is the patient side
of each component's centroid relative to the head midline; LPS +x is patient left, so a column
step moves ``row_direction[0] * dx`` mm towards patient left.

Geometry. The slices are analysed as acquired, also when the gantry was tilted or the spacing
changes within the series. Volumes weight each slice's voxels by the slab it stands for along
the slice normal (``slab_mm``, see ``segmenter.voxels``), so a 7 mm slice counts 7/4 of a 4 mm
one. Thickness is measured within a slice, which is a true plane of the patient whatever the
tilt. Laterality uses the slices' positions, so a stack shifted sideways from slice to slice is
judged in patient coordinates. 3D connectivity joins neighbouring slices by index, as the model
sees them.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import numpy as np
from scipy import ndimage

from .findings import BACKGROUND, CLASS_NAMES, EDH, SDH, Finding
from .voxels import check_slices, component_ml, mask_ml, on_slices, slice_ml, voxel_ml

logger = logging.getLogger(__name__)

_NEIGHBOURS = np.ones((3, 3, 3), bool)  # 26-connectivity

#: Components below this volume are noise, not lesions (mL).
MIN_COMPONENT_ML = 0.05
#: A minority-class part of a component at least this large (mL) and this share of it is a
#: lesion of its own. Chosen on the development sets (seeds 2000 and 2500): any size from 1 to
#: 8 mL gave the same result; a share of 0.2 let wrong patches through, 0.3 did not.
SPLIT_MIN_ML = 2.0
SPLIT_MIN_SHARE = 0.3
#: A class is reported present at or above this total volume (mL).
MIN_PRESENT_ML = 0.5
#: Bone for the EDH rule: above any blood (at most ~100 HU), below the inner table even where
#: partial volume thins it.
BONE_HU = 300.0
#: On a slice, an EDH cross-section within this distance of bone (in-plane, mm) is attached.
EDH_MAX_BONE_GAP_MM = 2.0
#: Share of an EDH component's volume that must lie on attached slices. On the development sets
#: every true EDH was attached on all its slices (share 1.0); the IPH labelled EDH had 0-0.1.
EDH_MIN_ATTACHED_SHARE = 0.5
#: A side counts for laterality when it holds at least this share of the class volume.
MIN_SIDE_SHARE = 0.15


def clean_labels(labels: np.ndarray, spacing_mm: Sequence[float],
                 min_component_ml: float = MIN_COMPONENT_ML, *, slab_mm: Sequence[float] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop tiny components, give every component its majority class, split off large
    minority parts (rules 2 and 3).

    ``slab_mm`` (one width per slice, see ``segmenter.voxels``) makes the volumes follow an
    unevenly spaced stack; None means evenly spaced at ``spacing_mm[0]``.

    Returns
    -------
    cleaned, components, n
        The cleaned uint8 labels, the int32 component map (0 background; every component holds
        one class) and the largest component number.
    """
    vml = voxel_ml(spacing_mm, slab_mm)
    check_slices(vml, labels.shape[0])
    comps, n = ndimage.label(labels > 0, structure=_NEIGHBOURS)
    out = np.zeros_like(labels, dtype=np.uint8)
    if n == 0:
        return out, comps, 0
    sizes = component_ml(comps, n, vml)
    per_class = {c: component_ml(comps, n, vml, labels == c) for c in CLASS_NAMES}
    classes = sorted(CLASS_NAMES)
    votes = np.stack([per_class[c] for c in classes])  # argmax keeps the first class on ties
    winner = np.asarray(classes, np.uint8)[votes.argmax(0)]
    winner[sizes < min_component_ml] = 0
    winner[0] = 0
    out = winner[comps]
    floor = np.maximum(SPLIT_MIN_ML, SPLIT_MIN_SHARE * sizes)
    minority = votes.min(0)
    next_id = n + 1
    mixed = np.flatnonzero((winner > 0) & (minority >= floor))  # only these can split
    boxes = ndimage.find_objects(comps) if mixed.size else []  # a full-volume pass: only when needed
    for cid in mixed:
        box = boxes[cid - 1]
        other = SDH if winner[cid] == EDH else EDH
        parts, n_parts = ndimage.label((comps[box] == cid) & (labels[box] == other), structure=_NEIGHBOURS)
        part_ml = component_ml(parts, n_parts, on_slices(vml, box[0]))
        part_ml[0] = 0.0  # background of the box
        for pid in np.flatnonzero(part_ml >= floor[cid]):
            part = parts == pid
            out[box][part] = other
            comps[box][part] = next_id
            next_id += 1
    comps[out == 0] = 0
    return out, comps, next_id - 1


def drop_detached_edh(labels: np.ndarray, comps: np.ndarray, volume_hu: np.ndarray,
                      spacing_mm: Sequence[float], bone_hu: float = BONE_HU,
                      max_gap_mm: float = EDH_MAX_BONE_GAP_MM,
                      min_attached_share: float = EDH_MIN_ATTACHED_SHARE, *,
                      slab_mm: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Set EDH components that do not lie against bone to background, in ``labels`` and ``comps``.

    ``slab_mm`` as in :func:`clean_labels`: the attached share is a share of volume.

    Returns
    -------
    list of dict
        One entry per dropped component: ``label``, ``volume_ml``, ``attached_share`` (the share
        of its volume on slices where it reaches bone) and ``reason``.
    """
    vml = voxel_ml(spacing_mm, slab_mm)
    check_slices(vml, labels.shape[0])
    margin = [0] + [int(np.ceil(max_gap_mm / s)) + 1 for s in spacing_mm[1:]]  # in-plane only
    dropped = []
    for cid, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - m), b.stop + m) for b, m in zip(box, margin))
        mine = comps[box] == cid
        if labels[box][mine][0] != EDH:
            continue
        bone = volume_hu[box] >= bone_hu
        box_vml = on_slices(vml, box[0])
        per_slice = slice_ml(mine, box_vml)
        attached = 0.0
        for z in np.flatnonzero(per_slice):
            here, bone_z = mine[z], bone[z]
            if not bone_z.any():
                continue
            # Overlap is the common case (the blurred inner table); only otherwise measure the gap.
            if (here & bone_z).any() or ndimage.distance_transform_edt(
                    ~here, sampling=spacing_mm[1:])[bone_z].min() <= max_gap_mm:
                attached += per_slice[z]
        share = attached / per_slice.sum()
        if share >= min_attached_share:
            continue
        labels[box][mine] = 0
        comps[box][mine] = 0
        volume = mask_ml(mine, box_vml)
        dropped.append({"label": CLASS_NAMES[EDH], "volume_ml": round(volume, 3), "attached_share": round(share, 3),
                        "reason": f"not against the skull (within {max_gap_mm:g} mm of bone on slices holding "
                                  f"{share:.0%} of it): not epidural"})
        logger.info("excluded an EDH-labelled component of %.2f mL: against bone on slices holding %.0f%% of it",
                    volume, 100 * share)
    return dropped


def max_thickness_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Twice the largest in-plane distance to the mask border, over slices (mm)."""
    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        sl = ndimage.find_objects(mask[z].astype(np.uint8))[0]
        sub = np.pad(mask[z][sl], 1)
        best = max(best, float(ndimage.distance_transform_edt(sub, sampling=spacing_mm[1:]).max()))
    return 2.0 * best


def laterality(mask: np.ndarray, comps: np.ndarray, spacing_mm: Sequence[float], midline_col: float,
               row_direction: Sequence[float], *, slab_mm: Sequence[float] | None = None,
               positions: np.ndarray | None = None) -> str | None:
    """``"left"``, ``"right"``, ``"bilateral"`` (patient side) or None for an empty mask.

    Each component's side is the sign of its volume-weighted mean distance from the midline
    towards patient left (LPS +x), in mm. ``midline_col`` comes from a box around the head over
    all slices; with ``positions`` (ImagePositionPatient per slice), a slice shifted sideways
    against the others is measured in patient coordinates from the midline at the middle of
    the shifts, where that box puts it.
    """
    if not mask.any():
        return None
    zs, rs, cs = np.nonzero(mask)
    cid = comps[zs, rs, cs]
    vml = voxel_ml(spacing_mm, slab_mm)
    weight = np.ones(zs.size) if np.ndim(vml) == 0 else np.asarray(vml)[zs]
    left_mm = (cs - midline_col) * spacing_mm[2] * row_direction[0]
    if positions is not None:
        x = np.asarray(positions, dtype=np.float64)[:, 0]
        left_mm = left_mm + (x - (x.min() + x.max()) / 2.0)[zs]
    ids, index = np.unique(cid, return_inverse=True)
    volume = np.bincount(index, weights=weight)
    mean_left = np.bincount(index, weights=weight * left_mm) / volume
    left = float(volume[mean_left > 0].sum())
    share = left / float(volume.sum())
    if MIN_SIDE_SHARE <= share <= 1 - MIN_SIDE_SHARE:
        return "bilateral"
    return "left" if share > 0.5 else "right"


def label_map(probs: np.ndarray, bleed_threshold: float | None = None) -> np.ndarray:
    """uint8 labels from (Z, C, rows, cols) probabilities.

    ``bleed_threshold`` None: the argmax.  Otherwise a pixel is a bleed when the SDH and EDH
    probabilities together reach the threshold, and takes the more probable of the two; a
    threshold above 0.5 trades small, uncertain calls for fewer false ones.
    """
    if bleed_threshold is None:
        return probs.argmax(1).astype(np.uint8)
    if not 0.0 < bleed_threshold < 1.0:
        raise ValueError(f"bleed_threshold must be between 0 and 1; got {bleed_threshold}")
    labels = np.where(probs[:, SDH] >= probs[:, EDH], SDH, EDH).astype(np.uint8)
    labels[probs[:, SDH] + probs[:, EDH] < bleed_threshold] = BACKGROUND
    return labels


def findings_from_probabilities(probs: np.ndarray, spacing_mm: Sequence[float], midline_col: float,
                                row_direction: Sequence[float] = (1.0, 0.0, 0.0),
                                min_present_ml: float = MIN_PRESENT_ML, volume_hu: np.ndarray | None = None,
                                *, slab_mm: Sequence[float] | None = None, positions: np.ndarray | None = None,
                                bleed_threshold: float | None = None,
                                ) -> tuple[np.ndarray, dict[str, Finding], list[dict[str, Any]]]:
    """Labels, findings and excluded components from (Z, C, rows, cols) probabilities.

    Parameters
    ----------
    probs:
        Softmax probabilities per class; class order 0 background, 1 SDH, 2 EDH.
    spacing_mm:
        ``(dz, dy, dx)`` of the source grid.
    midline_col:
        Column of the head's midline, for laterality.
    row_direction:
        Direction cosines (LPS) of increasing column index.
    volume_hu:
        The source volume in HU, for the EDH-against-the-skull rule; without it the rule cannot
        locate bone and is skipped.
    slab_mm:
        Per slice, the width along the slice normal it stands for (an unevenly spaced series);
        None: every slice stands for ``spacing_mm[0]``.
    positions:
        ImagePositionPatient per slice, shape (Z, 3), for laterality in patient coordinates.
    bleed_threshold:
        See :func:`label_map`; None is the argmax.

    Returns
    -------
    labels, findings, excluded
        uint8 labels (Z, rows, cols), a ``Finding`` per class name, and the components removed
        by the EDH rule (see ``drop_detached_edh``).
    """
    return findings_from_label_map(label_map(probs, bleed_threshold), _DenseProbabilities(probs), spacing_mm,
                                   midline_col, row_direction, min_present_ml, volume_hu, slab_mm=slab_mm,
                                   positions=positions)


class Confidence(Protocol):
    def mean(self, cls_index: int, mask: np.ndarray, z0: int = 0) -> float:
        """Mean probability of class ``cls_index`` over the voxels of ``mask``, which covers
        the volume's slices from ``z0`` on."""


class _DenseProbabilities:
    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def mean(self, cls_index: int, mask: np.ndarray, z0: int = 0) -> float:
        return float(self.probs[z0:z0 + mask.shape[0], cls_index][mask].mean())


class _FromSlice:
    """A ``Confidence`` for masks that cover the slices from ``z0`` on."""

    def __init__(self, whole: Confidence, z0: int) -> None:
        self.whole, self.z0 = whole, z0

    def mean(self, cls_index: int, mask: np.ndarray, z0: int = 0) -> float:
        return self.whole.mean(cls_index, mask, self.z0 + z0)


def findings_from_label_map(raw_labels: np.ndarray, confidence: Confidence | None, spacing_mm: Sequence[float],
                            midline_col: float, row_direction: Sequence[float] = (1.0, 0.0, 0.0),
                            min_present_ml: float = MIN_PRESENT_ML, volume_hu: np.ndarray | None = None, *,
                            slab_mm: Sequence[float] | None = None, positions: np.ndarray | None = None,
                            ) -> tuple[np.ndarray, dict[str, Finding], list[dict[str, Any]]]:
    """:func:`findings_from_probabilities` from its label map (``label_map``) and the class
    probabilities' means (``segmenter.probabilities.BleedProbabilities``).

    Every step works on the run of slices that holds bleed voxels (components, distances and
    the EDH rule never reach past it), so its memory follows the bleed's extent, not the
    series' length; ``volume_hu`` may be anything sliced like an array along z (``SlabVolume``).
    """
    vml = voxel_ml(spacing_mm, slab_mm)
    check_slices(vml, raw_labels.shape[0])
    on = np.flatnonzero(raw_labels.reshape(raw_labels.shape[0], -1).any(axis=1))
    # No bleed: one empty slice stands for the volume (the steps need at least one).
    z0, z1 = (int(on[0]), int(on[-1]) + 1) if on.size else (0, min(1, raw_labels.shape[0]))
    part = slice(z0, z1)
    sub_slab = None if slab_mm is None else np.asarray(slab_mm)[part]
    sub_positions = None if positions is None else np.asarray(positions)[part]
    sub_conf = None if confidence is None else _FromSlice(confidence, z0)
    labels, comps, _ = clean_labels(raw_labels[part], spacing_mm, slab_mm=sub_slab)
    excluded = [] if volume_hu is None else drop_detached_edh(
        labels, comps, np.asarray(volume_hu[part]), spacing_mm, slab_mm=sub_slab)
    findings = findings_from_labels(labels, comps, sub_conf, spacing_mm, midline_col, row_direction, min_present_ml,
                                    slab_mm=sub_slab, positions=sub_positions)
    whole = np.zeros(raw_labels.shape, np.uint8)
    whole[part] = labels
    return whole, findings, excluded


def findings_from_labels(labels: np.ndarray, comps: np.ndarray, confidence: Confidence | None,
                         spacing_mm: Sequence[float], midline_col: float,
                         row_direction: Sequence[float] = (1.0, 0.0, 0.0),
                         min_present_ml: float = MIN_PRESENT_ML, *, slab_mm: Sequence[float] | None = None,
                         positions: np.ndarray | None = None) -> dict[str, Finding]:
    """One ``Finding`` per class from cleaned labels (``confidence`` None gives confidence 1).

    ``slab_mm`` and ``positions`` as in :func:`findings_from_probabilities`.
    """
    vml = voxel_ml(spacing_mm, slab_mm)
    check_slices(vml, labels.shape[0])
    findings = {}
    for c, name in CLASS_NAMES.items():
        mask = labels == c
        n = int(mask.sum())
        vol = mask_ml(mask, vml)
        if n == 0:
            findings[name] = Finding(name, c, False, 0.0, 0.0, None, 0.0, 0)
            continue
        conf = confidence.mean(c, mask) if confidence is not None else 1.0
        side = laterality(mask, comps, spacing_mm, midline_col, row_direction, slab_mm=slab_mm, positions=positions)
        findings[name] = Finding(name, c, vol >= min_present_ml, float(vol),
                                 round(max_thickness_mm(mask, spacing_mm), 2), side, round(conf, 4), n)
    return findings
