"""Loaders for labelled real CT: PhysioNet CT-ICH v1.3.1 and DICOM series with NIfTI labels.

Both return :class:`segmenter.cases.Case` volumes in the same (z, y, x) layout as
:func:`segmenter.dicom_io.read_series` gives for an axial series with orientation
``(1, 0, 0, 0, 1, 0)``: z runs feet to head, y (rows) anterior to posterior, x (columns)
patient right to left.  NIfTI data (voxel axes i, j, k in RAS world space) are brought there
with nibabel's orientation tools: reorient so that i, j, k point to patient Left, Posterior,
Superior, then transpose to (k, j, i).  Spacing comes from the reoriented affine.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from segmenter.cases import Case
from segmenter.dicom_io import AIR_HU, OUT_OF_FIELD_HU, read_series
from segmenter.findings import BACKGROUND, EDH, SDH

logger = logging.getLogger(__name__)

#: Columns of ``hemorrhage_diagnosis_raw_ct.csv`` (CT-ICH v1.3.1); SliceNumber is 1-based
#: along the third voxel axis of the NIfTI files.
CTICH_FLAGS = (
    "Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural", "No_Hemorrhage",
)
CTICH_COLUMNS = ("PatientNumber", "SliceNumber", *CTICH_FLAGS, "Fracture_Yes_No")
OTHER_TYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid")
#: Voxel axes of a DICOM-like (x, y, z) array: columns to Left, rows to Posterior, slices up.
DICOM_AXCODES = ("L", "P", "S")
#: A NIfTI affine describes a regular, unsheared grid, so labels can be checked against (and
#: trusted on) only an untilted, evenly spaced series: a NIfTI file of a tilted or unevenly
#: spaced series is resampled or misdescribed, and labels drawn on it miss the acquired slices.
NIFTI_MAX_TILT_DEG = 0.5


@dataclass
class CtichStats:
    """What :func:`load_ctich` did with each kind of slice, for the training report.

    Slice counters are exclusive: each slice of a loaded case is counted in exactly one of
    ``normal``, ``sdh``, ``edh``, ``other_type_only``, ``ambiguous_sdh_edh``,
    ``ambiguous_mixed``, ``mask_without_flag``, ``flag_without_mask``, ``without_flags``.
    Only the last five are excluded through ``Case.slice_mask``.
    """

    cases: int = 0
    slices: int = 0
    normal: int = 0
    sdh: int = 0
    edh: int = 0
    other_type_only: int = 0
    other_type_voxels: int = 0
    ambiguous_sdh_edh: int = 0
    ambiguous_mixed: int = 0
    mask_without_flag: int = 0
    flag_without_mask: int = 0
    without_flags: int = 0
    skipped_cases: dict[str, str] = field(default_factory=dict)

    @property
    def excluded(self) -> int:
        return (self.ambiguous_sdh_edh + self.ambiguous_mixed + self.mask_without_flag
                + self.flag_without_mask + self.without_flags)


def nifti_to_zyx(
    img: nib.Nifti1Image, axcodes: tuple[str, str, str] = DICOM_AXCODES
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Reorient a NIfTI image to ``axcodes`` and return it as (z, y, x).

    Returns
    -------
    data:
        Scaled data (float64 from ``get_fdata``), shape (z, y, x).
    slice_index:
        For each output z, the index along the file's third voxel axis it came from.
    spacing_mm:
        ``(dz, dy, dx)`` from the reoriented affine.
    """
    transform = ornt.ornt_transform(ornt.io_orientation(img.affine), ornt.axcodes2ornt(axcodes))
    if transform[2, 0] != 2:
        raise ValueError(
            f"NIfTI slices (third voxel axis) must be axial; the file's axes are "
            f"{''.join(nib.aff2axcodes(img.affine))}"
        )
    reoriented = img.as_reoriented(transform)
    data = np.asarray(reoriented.get_fdata()).transpose(2, 1, 0)
    slices = np.arange(img.shape[2])
    slice_index = slices[::-1] if transform[2, 1] < 0 else slices
    dx, dy, dz = (float(z) for z in reoriented.header.get_zooms()[:3])
    return data, slice_index, (dz, dy, dx)


def _read_flags(csv_path: Path) -> dict[int, dict[int, dict[str, bool]]]:
    """PatientNumber -> SliceNumber -> flag name -> value; blank rows are ignored."""
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in CTICH_COLUMNS[:-1] if c not in header]
        if missing:
            raise ValueError(f"{csv_path.name} must have columns {list(CTICH_COLUMNS)}; missing {missing}")
        flags: dict[int, dict[int, dict[str, bool]]] = {}
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row["PatientNumber"]:
                continue
            values = {name: row[name] not in ("", "0", "0.0") for name in CTICH_FLAGS}
            flags.setdefault(int(float(row["PatientNumber"])), {})[int(float(row["SliceNumber"]))] = values
    return flags


def _label_slice(
    mask: np.ndarray, flags: dict[str, bool] | None, stats: CtichStats
) -> tuple[np.ndarray, bool]:
    """Per-type labels of one slice and whether the slice is usable; updates ``stats``."""
    labels = np.zeros(mask.shape, dtype=np.uint8)
    has_mask = bool(mask.any())
    if flags is None:
        stats.without_flags += 1
        return labels, False
    sdh, edh = flags["Subdural"], flags["Epidural"]
    other = any(flags[name] for name in OTHER_TYPES)
    if sdh and edh:
        stats.ambiguous_sdh_edh += 1
        return labels, False
    if (sdh or edh) and other and has_mask:
        # The binary mask cannot say which voxels are the extra-axial bleed.
        stats.ambiguous_mixed += 1
        return labels, False
    if (sdh or edh) and not has_mask:
        stats.flag_without_mask += 1
        return labels, False
    if sdh or edh:
        labels[mask] = SDH if sdh else EDH
        stats.sdh += int(sdh)
        stats.edh += int(edh)
        return labels, True
    if other:
        # IPH/IVH/SAH are not our classes: their voxels are background for this task.
        stats.other_type_only += 1
        stats.other_type_voxels += int(mask.sum())
        return labels, True
    if has_mask:
        stats.mask_without_flag += 1
        return labels, False
    stats.normal += 1
    return labels, True


def load_ctich(root: str | Path) -> tuple[list[Case], CtichStats]:
    """Load PhysioNet CT-ICH v1.3.1 with per-slice SDH/EDH labels from the binary masks.

    Parameters
    ----------
    root:
        Folder holding ``ct_scans/NNN.nii``, ``masks/NNN.nii`` (``.nii.gz`` accepted) and
        ``hemorrhage_diagnosis_raw_ct.csv``.

    Returns
    -------
    cases, stats
        One case per patient listed in the CSV with both files present; patients without
        files are listed in ``stats.skipped_cases``.  See :class:`CtichStats` and
        ``_label_slice`` for how each slice is labelled or excluded.

    Raises
    ------
    FileNotFoundError
        When the CSV is missing.
    ValueError
        When the CSV lacks a column, or a mask does not match its CT in shape.
    """
    root = Path(root)
    csv_path = root / "hemorrhage_diagnosis_raw_ct.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"CT-ICH root must contain hemorrhage_diagnosis_raw_ct.csv; not found in {root}"
        )
    flags = _read_flags(csv_path)
    stats = CtichStats()
    cases: list[Case] = []
    for number in sorted(flags):
        name = f"{number:03d}"
        ct_path, mask_path = (_nifti_path(root / folder, name) for folder in ("ct_scans", "masks"))
        if ct_path is None or mask_path is None:
            stats.skipped_cases[name] = "missing " + ("ct_scans" if ct_path is None else "masks") + " file"
            continue
        ct_img, mask_img = nib.load(ct_path), nib.load(mask_path)
        if ct_img.shape != mask_img.shape:
            raise ValueError(
                f"mask {mask_path.name} must have the CT's shape {ct_img.shape}; got {mask_img.shape}"
            )
        hu, slice_index, spacing = nifti_to_zyx(ct_img)
        mask, _, _ = nifti_to_zyx(nib.Nifti1Image(np.asarray(mask_img.dataobj), ct_img.affine))
        hu[hu < OUT_OF_FIELD_HU] = AIR_HU
        labels = np.zeros(hu.shape, dtype=np.uint8)
        usable = np.zeros(hu.shape[0], dtype=bool)
        for z, source in enumerate(slice_index):
            labels[z], usable[z] = _label_slice(mask[z] > 0.5, flags[number].get(int(source) + 1), stats)
        stats.cases += 1
        stats.slices += hu.shape[0]
        case_id = f"ctich-{name}"  # one scan per patient in CT-ICH
        cases.append(Case(case_id, case_id, hu.astype(np.float32), labels, spacing, usable))
    logger.info("CT-ICH: %d cases, %d slices, %d excluded", stats.cases, stats.slices, stats.excluded)
    return cases, stats


def _nifti_path(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / f"{name}.nii", folder / f"{name}.nii.gz") if p.exists()), None)


def _series_affine_ras(
    positions: np.ndarray, orientation: tuple[float, ...], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Affine from (column, row, slice) voxel indices of a sorted series to RAS millimetres."""
    iop = np.asarray(orientation)
    normal = np.cross(iop[:3], iop[3:])
    dz, dy, dx = spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * dx, iop[3:] * dy, normal * dz, positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_dicom_nifti(root: str | Path, *, tolerance_mm: float = 1.0) -> list[Case]:
    """Load ``root/<case>/dicom/`` CT series with ``root/<case>/labels.nii.gz`` (0/1/2).

    The labels must carry an affine consistent with the DICOM series (as dcm2niix writes it);
    they are reoriented onto the sorted series' voxel axes and checked against it.

    Raises
    ------
    segmenter.dicom_io.SeriesError
        When a series is not usable (see :func:`segmenter.dicom_io.read_series`).
    ValueError
        When labels are missing, hold values other than 0/1/2, or are not on the series grid,
        or the series is gantry-tilted or unevenly spaced (see :data:`NIFTI_MAX_TILT_DEG`).
    """
    cases: list[Case] = []
    for case_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        label_path = case_dir / "labels.nii.gz"
        if not label_path.is_file():
            raise ValueError(f"case {case_dir.name} must contain labels.nii.gz")
        series = read_series(case_dir / "dicom")
        if series.tilt_deg > NIFTI_MAX_TILT_DEG:
            raise ValueError(f"{case_dir.name}/dicom must not be gantry-tilted for NIfTI labels; "
                             f"got {series.tilt_deg:.1f} degrees")
        if series.slab_mm is not None and np.ptp(series.slab_mm) > 0:
            raise ValueError(f"{case_dir.name}/dicom must be evenly spaced for NIfTI labels; got slabs of "
                             f"{series.slab_mm.min():.2f} to {series.slab_mm.max():.2f} mm")
        target = _series_affine_ras(series.positions, series.orientation, series.spacing_mm)
        img = nib.load(label_path)
        transform = ornt.ornt_transform(ornt.io_orientation(img.affine), ornt.io_orientation(target))
        reoriented = img.as_reoriented(transform)
        labels = np.rint(np.asarray(reoriented.dataobj)).transpose(2, 1, 0)
        if labels.shape != series.volume_hu.shape:
            raise ValueError(
                f"{case_dir.name}/labels.nii.gz must match the sorted series shape (z, y, x) "
                f"{series.volume_hu.shape}; got {labels.shape} after reorientation"
            )
        offset = float(np.abs(reoriented.affine[:3, 3] - target[:3, 3]).max())
        if offset > tolerance_mm or not np.allclose(reoriented.affine[:3, :3], target[:3, :3], atol=1e-2):
            raise ValueError(
                f"{case_dir.name}/labels.nii.gz must lie on the DICOM grid; its affine differs "
                f"(origin off by {offset:.2f} mm)"
            )
        values = set(np.unique(labels).tolist())
        if not values <= {BACKGROUND, SDH, EDH}:
            raise ValueError(f"{case_dir.name}/labels.nii.gz must hold only 0, 1, 2; got {sorted(values)}")
        patient = str(series.datasets[0].get("PatientID", "") or case_dir.name)
        cases.append(
            Case(case_dir.name, patient, series.volume_hu, labels.astype(np.uint8), series.spacing_mm)
        )
    return cases
