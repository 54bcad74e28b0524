"""Slice geometry of a CT series from ImageOrientationPatient and ImagePositionPatient.

Pure numpy (no pydicom) so that the node's series assembly and the segmenter's reader share
one definition of "sorted", "spacing" and "usable stack".  All coordinates are in the DICOM
patient coordinate system (LPS, millimetres).

Every ``*_problem`` function returns ``None`` when the geometry is acceptable and otherwise a
short human-readable reason that can go straight into a log line or a failure record.

Notes
-----
The slice order is the order of positions projected on the slice normal
``row_direction x column_direction``; for an axial series with the usual orientation
``(1, 0, 0, 0, 1, 0)`` that is feet to head.  InstanceNumber, file names and SliceLocation
are never used: scanners and PACS disagree about them.  Spacing between slices comes from
positions only; SliceThickness is the reconstructed slab width, which differs from the
spacing for overlapping or gapped reconstructions.

What is analysed.  The model works slice by slice in the acquired planes, so a stack does not
have to be a regular grid:

- **Gantry tilt** (slices stacked at an angle to their normal, 10-20 degrees in routine head
  CT) is analysed as acquired.  Each slice is a true plane of the patient; the slab a slice
  stands for is measured along the normal (:func:`slice_slabs_mm`), which gives the volume of
  a sheared voxel.  Only a shear beyond any gantry's range (:data:`MAX_TILT_DEG`) is refused:
  such a stack is a reformat or carries wrong positions.
- **Uneven spacing** (e.g. thin slices through the posterior fossa, thicker ones above) is
  analysed; each slice stands for the slab half-way to its neighbours along the normal.
- Refused (:func:`contiguity_problem`, rules in :mod:`segmenter.spacing`): duplicate
  positions, and gaps where a volume would be guessed rather than measured.
- Mixed orientations are refused by :func:`orientation_problem`; mixed pixel spacing or matrix
  size by the callers, which see those attributes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from segmenter import spacing

#: Largest difference between any component of two slices' orientation that still counts as
#: "the same orientation".  Real scanners write IOP with rounding noise around 1e-6.
ORIENTATION_TOLERANCE = 1e-3
#: Default tolerance on slice positions, in millimetres.
POSITION_TOLERANCE_MM = 0.1
#: Default largest angle between the slice normal and the patient z axis for "axial".
MAX_AXIAL_ANGLE_DEG = 30.0
#: Largest angle between the stacking direction and the slice normal that is a gantry tilt.
#: Gantries tilt by at most 30 degrees; a stack sheared further is not a tilted acquisition.
MAX_TILT_DEG = 45.0
#: See :data:`segmenter.spacing.MAX_GAP_RATIO`.
MAX_GAP_RATIO = spacing.MAX_GAP_RATIO

ArrayLike = Sequence[float] | np.ndarray


def _as_iop(iop: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return unit row and column direction vectors, checking that ``iop`` is a valid IOP."""
    values = np.asarray(iop, dtype=np.float64).reshape(-1)
    if values.shape != (6,) or not np.all(np.isfinite(values)):
        raise ValueError(f"ImageOrientationPatient must be 6 finite numbers; got {list(values)}")
    row, col = values[:3], values[3:]
    for name, vec in (("row", row), ("column", col)):
        if abs(np.linalg.norm(vec) - 1.0) > ORIENTATION_TOLERANCE:
            raise ValueError(
                f"ImageOrientationPatient {name} direction must be a unit vector; "
                f"got {list(vec)} (norm {np.linalg.norm(vec):.4f})"
            )
    if abs(float(row @ col)) > ORIENTATION_TOLERANCE:
        raise ValueError(
            f"ImageOrientationPatient row and column directions must be orthogonal; "
            f"got dot product {float(row @ col):.4f}"
        )
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _as_positions(positions: ArrayLike) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or not np.all(np.isfinite(pos)):
        raise ValueError(f"positions must be an (n, 3) array of finite numbers; got shape {pos.shape}")
    return pos


def slice_normal(iop: ArrayLike) -> np.ndarray:
    """Unit normal of the image plane, ``row_direction x column_direction``.

    Parameters
    ----------
    iop:
        ImageOrientationPatient, 6 numbers (row direction, then column direction).

    Returns
    -------
    numpy.ndarray
        Shape (3,), unit length.

    Raises
    ------
    ValueError
        When ``iop`` is not 6 finite numbers forming two orthogonal unit vectors.
    """
    row, col = _as_iop(iop)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def positions_along_normal(positions: ArrayLike, iop: ArrayLike) -> np.ndarray:
    """Distance of each ImagePositionPatient along the slice normal, shape (n,), in mm."""
    return _as_positions(positions) @ slice_normal(iop)


def sort_order(positions: ArrayLike, iop: ArrayLike) -> np.ndarray:
    """Indices that sort slices by increasing position along the slice normal (stable)."""
    return np.argsort(positions_along_normal(positions, iop), kind="stable")


def slice_spacing(positions: ArrayLike, iop: ArrayLike) -> float:
    """Median distance between neighbouring slice centres along the normal, in mm.

    Raises
    ------
    ValueError
        With fewer than two slices, where no spacing exists.
    """
    along = np.sort(positions_along_normal(positions, iop))
    if along.size < 2:
        raise ValueError(f"spacing needs at least 2 slices; got {along.size}")
    return float(np.median(np.diff(along)))


def tilt_angle_deg(positions: ArrayLike, iop: ArrayLike) -> float:
    """Angle between the stacking direction and the slice normal, in degrees.

    The stacking direction is taken from the first to the last slice (after sorting) rather
    than per step: positions are written with limited decimals, and on thin slices the
    rounding alone would make single steps look tilted.
    """
    pos = _as_positions(positions)
    normal = slice_normal(iop)
    ordered = pos[sort_order(pos, iop)]
    if len(ordered) < 2:
        return 0.0
    step = ordered[-1] - ordered[0]
    along = float(step @ normal)
    across = float(np.linalg.norm(step - along * normal))
    if along <= 0.0:
        return 0.0 if across == 0.0 else 90.0
    return math.degrees(math.atan2(across, along))


def tilt_problem(positions: ArrayLike, iop: ArrayLike, max_tilt_deg: float = MAX_TILT_DEG) -> str | None:
    """Reason when the slices are sheared further than any gantry tilts, else None.

    A gantry tilt up to ``max_tilt_deg`` is analysed as acquired (see the module notes).
    """
    angle = tilt_angle_deg(positions, iop)
    if angle > max_tilt_deg:
        return (
            f"slices are stacked {angle:.1f} degrees off their normal, beyond any gantry tilt "
            f"(at most {max_tilt_deg:g} allowed): a reformat or wrong ImagePositionPatient"
        )
    return None


def contiguity_problem(
    positions: ArrayLike, iop: ArrayLike, tolerance_mm: float = POSITION_TOLERANCE_MM,
    thicknesses: ArrayLike | None = None, max_gap_ratio: float = MAX_GAP_RATIO,
) -> str | None:
    """Reason when the slices do not cover their range along the normal without holes, else None.

    Uneven spacing is allowed; duplicates and gaps are not (see
    :func:`segmenter.spacing.gap_problem`, which this applies to the positions along the normal).

    Parameters
    ----------
    positions, iop:
        ImagePositionPatient per slice (any order) and the series' orientation.
    tolerance_mm:
        Position tolerance, in mm.
    thicknesses:
        SliceThickness per slice in the order of ``positions``, ``None`` where unknown.
    max_gap_ratio:
        See :data:`segmenter.spacing.MAX_GAP_RATIO`.
    """
    return spacing.gap_problem(positions_along_normal(positions, iop), thicknesses, tolerance_mm, max_gap_ratio)


def slice_slabs_mm(positions: ArrayLike, iop: ArrayLike, tolerance_mm: float = POSITION_TOLERANCE_MM
                   ) -> np.ndarray:
    """Width along the normal of the slab each slice stands for, shape (n,), in mm.

    In the order of ``positions``; see :func:`segmenter.spacing.slabs_mm`.  Measured along the
    normal also when the stack is tilted: a sheared voxel's volume is its pixel area times its
    height along the normal.
    """
    return spacing.slabs_mm(positions_along_normal(positions, iop), tolerance_mm)


def axial_angle_deg(iop: ArrayLike) -> float:
    """Angle between the slice normal and the patient z (feet-head) axis, 0 to 90 degrees."""
    cos = min(1.0, abs(float(slice_normal(iop)[2])))
    return math.degrees(math.acos(cos))


def is_axialish(iop: ArrayLike, max_angle_deg: float = MAX_AXIAL_ANGLE_DEG) -> bool:
    """Whether the slice normal lies within ``max_angle_deg`` of the patient z axis."""
    return axial_angle_deg(iop) <= max_angle_deg


def axial_problem(iop: ArrayLike, max_angle_deg: float = MAX_AXIAL_ANGLE_DEG) -> str | None:
    """Reason when the slices are not axial-ish (e.g. coronal or sagittal), else None."""
    angle = axial_angle_deg(iop)
    if angle > max_angle_deg:
        return (
            f"not axial: slice normal is {angle:.1f} degrees from the patient z axis "
            f"(at most {max_angle_deg} allowed)"
        )
    return None


def orientation_problem(iops: ArrayLike, tolerance: float = ORIENTATION_TOLERANCE) -> str | None:
    """Reason when any slice's IOP is invalid or differs from the first by more than ``tolerance``."""
    values = np.asarray(iops, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 6 or len(values) == 0:
        return f"orientations must be an (n, 6) array with n >= 1; got shape {values.shape}"
    for index, iop in enumerate(values):
        try:
            _as_iop(iop)
        except ValueError as exc:
            return f"slice {index}: {exc}"
    deviation = np.abs(values - values[0]).max(axis=1)
    worst = int(np.argmax(deviation))
    if deviation[worst] > tolerance:
        return (
            f"inconsistent orientation: slice {worst} differs from slice 0 by {deviation[worst]:.4f} "
            f"(at most {tolerance} allowed)"
        )
    return None


def mean_orientation(iops: ArrayLike) -> np.ndarray:
    """One orthonormal IOP (6 floats) for slices whose orientations differ by rounding only.

    Writers such as highdicom refuse series with tiny IOP differences between slices, so the
    reader replaces them with this average.
    """
    values = np.asarray(iops, dtype=np.float64).reshape(-1, 6).mean(axis=0)
    row = values[:3] / np.linalg.norm(values[:3])
    col = values[3:] - (values[3:] @ row) * row
    return np.concatenate([row, col / np.linalg.norm(col)])


def geometry_problem(
    positions: ArrayLike,
    iops: ArrayLike,
    *,
    tolerance_mm: float = POSITION_TOLERANCE_MM,
    max_tilt_deg: float = MAX_TILT_DEG,
    max_axial_angle_deg: float | None = MAX_AXIAL_ANGLE_DEG,
    thicknesses: ArrayLike | None = None,
) -> str | None:
    """First reason why a stack of slices cannot be analysed as one axial series, or None.

    Checks, in order: orientation consistency, axial-ness (skipped when
    ``max_axial_angle_deg`` is None), a shear beyond any gantry tilt, contiguity (duplicates
    and gaps; tilt and uneven spacing are accepted).

    Parameters
    ----------
    positions:
        ImagePositionPatient per slice, shape (n, 3), any order.
    iops:
        ImageOrientationPatient per slice, shape (n, 6), same order as ``positions``.
    thicknesses:
        SliceThickness per slice, same order, ``None`` where unknown (see
        :func:`contiguity_problem`).
    """
    pos = _as_positions(positions)
    values = np.asarray(iops, dtype=np.float64)
    if values.ndim != 2 or len(values) != len(pos):
        return f"need one orientation per position; got {len(values)} for {len(pos)} positions"
    reason = orientation_problem(values)
    if reason:
        return reason
    iop = mean_orientation(values)
    if max_axial_angle_deg is not None:
        reason = axial_problem(iop, max_axial_angle_deg)
        if reason:
            return reason
    return tilt_problem(pos, iop, max_tilt_deg) or contiguity_problem(pos, iop, tolerance_mm, thicknesses)
