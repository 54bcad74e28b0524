"""CT-ICH and DICOM+NIfTI loaders on small fixtures written with nibabel in tmp_path."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmenter.dicom_io import make_test_series
from segmenter.findings import EDH, SDH
from segmenter.realdata import CTICH_COLUMNS, load_ctich, load_dicom_nifti

NZ, NY, NX = 10, 12, 14
DZ, DY, DX = 5.0, 0.5, 0.45


def dicom_like_volume(seed: int = 0) -> np.ndarray:
    """(z, y, x) HU, every voxel distinct enough that a flip or transpose shows."""
    return np.random.default_rng(seed).integers(-1024, 2000, size=(NZ, NY, NX)).astype(np.float32)


def to_nifti(zyx: np.ndarray, layout: str) -> nib.Nifti1Image:
    """Store a DICOM-like (z, y, x) array the way converters do, by hand.

    ``LAS``: rows flipped to anterior (dcm2niix style); ``LPS``: DICOM order;
    ``LPI``: slices stored head to feet; ``RAS``: columns and rows flipped.
    """
    xyz = zyx.transpose(2, 1, 0)
    nx, ny, nz = xyz.shape
    flips = {"LPS": (False, False, False), "LAS": (False, True, False),
             "LPI": (False, False, True), "RAS": (True, True, False)}[layout]
    affine = np.diag([-DX, -DY, DZ, 1.0])
    for axis, flip in enumerate(flips):
        if flip:
            xyz = np.flip(xyz, axis)
            extent = (xyz.shape[axis] - 1) * affine[axis, axis]
            affine[axis, 3] += extent
            affine[axis, axis] *= -1
    return nib.Nifti1Image(np.ascontiguousarray(xyz), affine)


FLAG_NAMES = CTICH_COLUMNS[2:]
#: Per DICOM-like slice z: (flags set, mask present, expected label or None when excluded).
SLICES = [
    ({"No_Hemorrhage"}, False, 0),
    ({"Subdural"}, True, SDH),
    ({"Epidural"}, True, EDH),
    ({"Subdural", "Epidural"}, True, None),
    ({"Intraparenchymal"}, True, 0),
    ({"Subdural", "Subarachnoid"}, True, None),
    ({"Subdural"}, False, None),
    (set(), True, None),
    ({"Epidural", "Intraventricular", "Fracture_Yes_No"}, False, None),
    (None, False, None),  # no CSV row: excluded
]


def write_ctich(root: Path, patients: dict[int, str], *, missing: tuple[int, ...] = ()) -> np.ndarray:
    """Write the v1.3.1 layout; returns the DICOM-like mask used for every patient."""
    (root / "ct_scans").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((NZ, NY, NX), dtype=np.uint8)
    for z, (_, has_mask, _) in enumerate(SLICES):
        if has_mask:
            mask[z, 3:6, 2 + z % 4: 7 + z % 4] = 255  # CT-ICH masks hold 0/255
    rows = []
    for number, layout in patients.items():
        nib.save(to_nifti(dicom_like_volume(number), layout), root / "ct_scans" / f"{number:03d}.nii")
        nib.save(to_nifti(mask, layout), root / "masks" / f"{number:03d}.nii")
        for z, (flags, _, _) in enumerate(SLICES):
            if flags is None:
                continue
            file_slice = NZ - 1 - z if layout == "LPI" else z
            rows.append([number, file_slice + 1] + [int(name in flags) for name in FLAG_NAMES])
    for number in missing:
        rows.append([number, 1] + [0] * (len(FLAG_NAMES) - 2) + [1, 0])
    with (root / "hemorrhage_diagnosis_raw_ct.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CTICH_COLUMNS)
        writer.writerows(rows)
        writer.writerow([""] * len(CTICH_COLUMNS))  # the real file ends with blank rows
    return mask


@pytest.mark.parametrize("layout", ["LAS", "LPS", "LPI", "RAS"])
def test_ctich_orientation_and_labels(tmp_path, layout):
    mask = write_ctich(tmp_path, {49: layout})
    (case,), stats = load_ctich(tmp_path)
    expected_hu = dicom_like_volume(49)
    np.testing.assert_array_equal(case.hu, expected_hu)
    assert case.hu.dtype == np.float32 and case.labels.dtype == np.uint8
    assert case.spacing_mm == pytest.approx((DZ, DY, DX))
    assert case.case_id == case.patient_id == "ctich-049"
    for z, (_, _, label) in enumerate(SLICES):
        assert case.slice_mask[z] == (label is not None), z
        if label is not None:
            np.testing.assert_array_equal(case.labels[z], np.where(mask[z] > 0, label, 0), err_msg=str(z))
    assert not case.labels[~case.slice_mask].any()


def test_ctich_stats_count_every_kind_of_slice(tmp_path):
    write_ctich(tmp_path, {49: "LAS", 51: "LPI"}, missing=(50,))
    cases, stats = load_ctich(tmp_path)
    assert [c.case_id for c in cases] == ["ctich-049", "ctich-051"]
    assert stats.skipped_cases == {"050": "missing ct_scans file"}
    per_case = dict(normal=1, sdh=1, edh=1, other_type_only=1, ambiguous_sdh_edh=1, ambiguous_mixed=1,
                    flag_without_mask=2, mask_without_flag=1, without_flags=1)
    for name, count in per_case.items():
        assert getattr(stats, name) == 2 * count, name
    assert stats.cases == 2 and stats.slices == 2 * NZ
    assert stats.excluded == 2 * 6
    assert stats.other_type_voxels == 2 * 15
    assert sum(int(c.slice_mask.sum()) for c in cases) == stats.slices - stats.excluded


def test_ctich_out_of_field_becomes_air(tmp_path):
    write_ctich(tmp_path, {49: "LAS"})
    img = nib.load(tmp_path / "ct_scans" / "049.nii")
    data = np.asarray(img.dataobj).copy()
    data[0, 0, :] = -3024
    nib.save(nib.Nifti1Image(data, img.affine), tmp_path / "ct_scans" / "049.nii")
    (case,), _ = load_ctich(tmp_path)
    assert np.all(case.hu[:, -1, 0] == -1000.0)  # file row 0 of a LAS file is the last DICOM row


def _no_csv(root: Path) -> None:
    (root / "hemorrhage_diagnosis_raw_ct.csv").unlink()


def _missing_columns(root: Path) -> None:
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_text("PatientNumber,SliceNumber,Subdural\n49,1,0\n")


def _mask_shape(root: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((NX, NY, NZ - 1), np.uint8), np.eye(4)), root / "masks" / "049.nii")


def _coronal(root: Path) -> None:
    # Voxel axes i, j, k point Left, Superior, Posterior: the third axis is not axial.
    affine = np.array([[-DX, 0, 0, 0], [0, 0, -DY, 0], [0, DZ, 0, 0], [0, 0, 0, 1.0]])
    for folder, dtype in (("ct_scans", np.int16), ("masks", np.uint8)):
        nib.save(nib.Nifti1Image(np.zeros((NX, NZ, NY), dtype), affine), root / folder / "049.nii")


@pytest.mark.parametrize(
    "break_it, error, match",
    [
        (_no_csv, FileNotFoundError, "must contain"),
        (_missing_columns, ValueError, "missing"),
        (_mask_shape, ValueError, "must have the CT's shape"),
        (_coronal, ValueError, "must be axial"),
    ],
    ids=["no csv", "missing columns", "mask shape", "coronal slices"],
)
def test_ctich_ill(tmp_path, break_it, error, match):
    write_ctich(tmp_path, {49: "LAS"})
    break_it(tmp_path)
    with pytest.raises(error, match=match):
        load_ctich(tmp_path)


def dicom_case(root: Path, name: str, *, labels_shape_z: int | None = None, shift_mm: float = 0.0,
               bad_value: bool = False, **series_kw) -> np.ndarray:
    """A DICOM series (shuffled numbers, random names) plus dcm2niix-style (LAS) labels."""
    rows, cols, nz, dy, dx, dz = 16, 18, 6, 0.8, 0.7, 5.0
    make_test_series(root / name / "dicom", n_slices=nz, rows=rows, cols=cols, spacing_mm=(dz, dy, dx),
                     file_names="random", patient_id=f"PID-{name}", **series_kw)
    labels = np.zeros((nz, rows, cols), dtype=np.uint8)
    labels[1, 2:5, 3:9] = SDH
    labels[4, 10:12, 1:3] = EDH
    if bad_value:
        labels[0, 0, 0] = 7
    written = labels[: labels_shape_z or nz]
    x0, y0 = -(cols - 1) / 2 * dx, -(rows - 1) / 2 * dy  # make_test_series' default origin (LPS)
    affine = np.array([[-dx, 0, 0, -x0], [0, dy, 0, -y0 - (rows - 1) * dy], [0, 0, dz, shift_mm], [0, 0, 0, 1]])
    data = written.transpose(2, 1, 0)[:, ::-1, :]  # LAS: rows stored anterior-most first
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), root / name / "labels.nii.gz")
    return labels


def test_dicom_nifti_labels_follow_sorted_series(tmp_path):
    expected = {name: dicom_case(tmp_path, name) for name in ("a", "b")}
    cases = load_dicom_nifti(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    for case in cases:
        np.testing.assert_array_equal(case.labels, expected[case.case_id])
        assert case.patient_id == f"PID-{case.case_id}"
        assert case.spacing_mm == pytest.approx((5.0, 0.8, 0.7))
        assert case.hu.shape == case.labels.shape and case.slice_mask is None


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(labels_shape_z=5), "must match the sorted series shape"),
        (dict(shift_mm=10.0), "must lie on the DICOM grid"),
        (dict(bad_value=True), "must hold only 0, 1, 2"),
        # The reader analyses these as acquired, but one NIfTI affine cannot describe them.
        (dict(gantry_tilt_deg=15.0), "must not be gantry-tilted for NIfTI labels; got 15.0 degrees"),
        (dict(slice_offsets_mm=[0, 5, 10, 15, 22, 29]), "must be evenly spaced for NIfTI labels"),
    ],
    ids=["shape", "off grid", "label value", "tilted", "two spacings"],
)
def test_dicom_nifti_ill(tmp_path, kw, match):
    dicom_case(tmp_path, "a", **kw)
    with pytest.raises(ValueError, match=match):
        load_dicom_nifti(tmp_path)


def test_dicom_nifti_missing_labels(tmp_path):
    make_test_series(tmp_path / "a" / "dicom", n_slices=3, rows=8, cols=8)
    with pytest.raises(ValueError, match="must contain labels.nii.gz"):
        load_dicom_nifti(tmp_path)
