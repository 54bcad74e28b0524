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
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Largest difference between any component of two slices' orientation that still counts as
#: "the same orientation".  Real scanners write IOP with rounding noise around 1e-6.
ORIENTATION_TOLERANCE = 1e-3
#: Default tolerance on slice positions, in millimetres.
POSITION_TOLERANCE_MM = 0.1
#: Default largest angle between the slice normal and the patient z axis for "axial".
MAX_AXIAL_ANGLE_DEG = 30.0
#: Default largest angle between the stacking direction and the slice normal (gantry tilt).
MAX_TILT_DEG = 0.5

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
    """Reason when the slices are stacked at an angle to their normal (gantry tilt), else None."""
    angle = tilt_angle_deg(positions, iop)
    if angle > max_tilt_deg:
        return (
            f"gantry tilt: slices are stacked {angle:.2f} degrees off their normal "
            f"(at most {max_tilt_deg} allowed)"
        )
    return None


def contiguity_problem(
    positions: ArrayLike, iop: ArrayLike, tolerance_mm: float = POSITION_TOLERANCE_MM
) -> str | None:
    """Reason when slices are not evenly spaced along the normal, else None.

    Detects fewer than two slices, duplicate positions, missing slices (a step close to a
    multiple of the usual spacing) and otherwise uneven spacing, each within ``tolerance_mm``.
    """
    along = np.sort(positions_along_normal(positions, iop))
    if along.size < 2:
        return f"need at least 2 slices to measure spacing; got {along.size}"
    steps = np.diff(along)
    duplicates = int(np.sum(steps <= tolerance_mm))
    if duplicates:
        return f"duplicate slice positions: {duplicates} slice(s) within {tolerance_mm} mm of another"
    spacing = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - spacing)))
    if abs(steps[worst] - spacing) <= tolerance_mm:
        return None
    ratio = steps[worst] / spacing
    if ratio > 1.5 and abs(ratio - round(ratio)) * spacing <= tolerance_mm:
        return (
            f"gap: {round(ratio) - 1} slice(s) missing between positions {along[worst]:.2f} and "
            f"{along[worst + 1]:.2f} mm (spacing {spacing:.2f} mm)"
        )
    return (
        f"uneven spacing: step of {steps[worst]:.2f} mm between positions {along[worst]:.2f} and "
        f"{along[worst + 1]:.2f} mm where the spacing is {spacing:.2f} mm (tolerance {tolerance_mm} mm)"
    )


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
) -> str | None:
    """First reason why a stack of slices is not one evenly spaced axial volume, or None.

    Checks, in order: orientation consistency, axial-ness (skipped when
    ``max_axial_angle_deg`` is None), gantry tilt, contiguity.

    Parameters
    ----------
    positions:
        ImagePositionPatient per slice, shape (n, 3), any order.
    iops:
        ImageOrientationPatient per slice, shape (n, 6), same order as ``positions``.
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
    return tilt_problem(pos, iop, max_tilt_deg) or contiguity_problem(pos, iop, tolerance_mm)
