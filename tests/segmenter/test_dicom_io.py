"""Round trips and rejections for segmenter.dicom_io (reader) and its CT writer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from segmenter.dicom_io import (
    AIR_HU,
    SeriesError,
    datasets_to_series,
    make_test_series,
    read_series,
    simple_head_hu,
    write_ct_series,
)

DCIODVFY = Path(sys.executable).parent / "dciodvfy"
SPACING = (5.0, 0.9, 0.8)


def volume(n: int = 6, rows: int = 32, cols: int = 40) -> np.ndarray:
    """Integer HU covering air to dense bone, distinct per slice so order errors show."""
    vol = simple_head_hu(n, rows, cols, seed=3)
    vol[:, 0, 0] = -1024.0
    vol[:, 0, 1] = 2047.0  # densest value a signed 12-bit image can hold
    vol[:, 1, 0] = np.arange(n) * 10.0
    return vol


def dciodvfy_errors(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} is missing: install the test extras (pip install -e '.[test]')")
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


WRITER_CASES = {
    "explicit signed": dict(signed=True),
    "explicit signed -1024": dict(signed=True, rescale_intercept=-1024),
    "explicit unsigned": dict(signed=False),
    "implicit signed": dict(signed=True, transfer_syntax=ImplicitVRLittleEndian),
    "signed 12 bits": dict(signed=True, bits_stored=12),
    "unsigned 12 bits": dict(signed=False, bits_stored=12),
    "rle signed": dict(signed=True, transfer_syntax=RLELossless),
    "rle unsigned": dict(signed=False, transfer_syntax=RLELossless),
    "j2k signed": dict(signed=True, transfer_syntax=JPEG2000Lossless),
    "j2k unsigned": dict(signed=False, transfer_syntax=JPEG2000Lossless),
    "jpeg-ls signed": dict(signed=True, transfer_syntax=JPEGLSLossless),
    "jpeg-ls unsigned": dict(signed=False, transfer_syntax=JPEGLSLossless),
}


@pytest.mark.parametrize("kw", WRITER_CASES.values(), ids=WRITER_CASES.keys())
def test_round_trip_is_exact(tmp_path, kw):
    vol = volume()
    paths = write_ct_series(vol, SPACING, tmp_path, **kw)
    series = read_series(tmp_path)
    assert series.volume_hu.dtype == np.float32
    np.testing.assert_array_equal(series.volume_hu, vol)
    assert series.spacing_mm == pytest.approx(SPACING)
    assert series.sop_instance_uids == [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    assert series.datasets[0].file_meta.TransferSyntaxUID == kw.get("transfer_syntax", ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    "kw",
    [*WRITER_CASES.values(), dict(gantry_tilt_deg=12.0), dict(pixel_padding_value=-2000), dict(file_names="random"),
     dict(spacing_mm=(4.602548930412794, 0.43894484052768795, 0.43894484052768795), origin=(-1 / 3, 2 / 7, 1e-9))],
    ids=[*WRITER_CASES.keys(), "tilted", "padding", "random names", "long decimals"],
)
def test_every_written_file_passes_dciodvfy(tmp_path, kw):
    paths = make_test_series(tmp_path, n_slices=2, rows=32, cols=32, **kw)
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


def test_dciodvfy_check_is_not_vacuous(tmp_path):
    (path,) = make_test_series(tmp_path, n_slices=1, rows=8, cols=8, omit=("SliceThickness",))
    assert any("SliceThickness" in line for line in dciodvfy_errors(path))


@pytest.mark.parametrize("order", ["shuffled", "ascending"])
@pytest.mark.parametrize("names", ["sop", "random"])
@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0)])
def test_sorted_by_position_not_instance_number_or_name(tmp_path, order, names, orientation):
    vol = volume(n=8)
    paths = write_ct_series(vol, SPACING, tmp_path, instance_number_order=order, file_names=names,
                            orientation=orientation, seed=7)
    series = read_series(list(reversed(paths)))
    np.testing.assert_array_equal(series.volume_hu, vol)
    along = series.positions @ np.cross(orientation[:3], orientation[3:])
    assert np.all(np.diff(along) == pytest.approx(SPACING[0]))
    assert series.orientation == pytest.approx(orientation)
    assert series.row_direction == pytest.approx(orientation[:3])


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    write_ct_series(volume(), (4.0, 1.0, 1.0), tmp_path, slice_thickness_mm=5.0)
    series = read_series(tmp_path)
    assert series.spacing_mm == pytest.approx((4.0, 1.0, 1.0))
    assert np.all(series.slab_mm == series.spacing_mm[0]) and series.tilt_deg == pytest.approx(0.0, abs=1e-6)


#: A GE head protocol: the image plane tilted 18.5 degrees (IOP 1,0,0, 0,0.948,-0.317), slices
#: stacked along the patient z axis, 4 mm through the posterior fossa, then 7 mm.
TILTED_PLANE = (1.0, 0.0, 0.0, 0.0, float(np.cos(np.radians(18.5))), -float(np.sin(np.radians(18.5))))
TWO_RUNS = [4.0 * k for k in range(4)] + [13.1 + 7.0 * k for k in range(3)]


@pytest.mark.parametrize("order", ["shuffled", "ascending"])
def test_tilted_series_with_two_spacings_is_read_as_acquired(tmp_path, order):
    vol = volume(n=7)
    paths = write_ct_series(vol, (4.0, 0.9, 0.8), tmp_path, orientation=TILTED_PLANE, gantry_tilt_deg=-18.5,
                            slice_offsets_mm=TWO_RUNS, slice_thickness_mm=[4.0] * 4 + [7.0] * 3,
                            instance_number_order=order)
    series = read_series(list(reversed(paths)))
    np.testing.assert_array_equal(series.volume_hu, vol)  # every slice as acquired, none resampled
    steps = np.diff(series.positions, axis=0)
    np.testing.assert_allclose(steps[:, :2], 0.0, atol=1e-4)  # stacked along the patient z axis
    assert series.tilt_deg == pytest.approx(18.5, abs=0.01)
    np.testing.assert_allclose(series.slab_mm, [4, 4, 4, 2.55, 4.05, 7, 7], atol=1e-4)  # along the normal
    assert series.orientation == pytest.approx(TILTED_PLANE, abs=1e-6)


@pytest.mark.parametrize(
    "signed, padding_value, fill_hu",
    [(True, -2000, 40.0), (False, 0, 40.0), (True, None, -2000.0), (True, None, -3024.0)],
    ids=["signed padding", "unsigned padding", "out of field -2000", "out of field -3024"],
)
def test_padding_and_out_of_field_become_air(tmp_path, signed, padding_value, fill_hu):
    vol = volume()
    vol[vol < -1000] = -1000.0  # unsigned padding value 0 is HU -1024: keep it for the padding
    corner = np.zeros(vol.shape, dtype=bool)
    corner[:, -3:, -3:] = True
    vol[corner] = fill_hu
    write_ct_series(vol, SPACING, tmp_path, signed=signed, pixel_padding_value=padding_value,
                    padding_mask=corner if padding_value is not None else None)
    got = read_series(tmp_path).volume_hu
    assert np.all(got[corner] == AIR_HU)
    np.testing.assert_array_equal(got[~corner], vol[~corner])


def test_padding_range_limit(tmp_path):
    vol = volume()
    paths = write_ct_series(vol, SPACING, tmp_path, signed=False, extra={"PixelPaddingValue": 0})
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ds.add_new("PixelPaddingRangeLimit", "US", 24)  # HU -1024..-1000 are padding here
    got = datasets_to_series(datasets).volume_hu
    assert np.all(got[vol <= -1000] == AIR_HU)


def test_non_dicom_files_are_skipped_and_counted(tmp_path):
    make_test_series(tmp_path / "s", n_slices=4, rows=8, cols=8)
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    (tmp_path / "s" / "sub").mkdir()
    (tmp_path / "s" / "sub" / ".DS_Store").write_bytes(b"\0" * 300)
    series = read_series(tmp_path / "s")
    assert series.skipped_files == 2 and len(series.datasets) == 4


def test_tiny_orientation_noise_is_tolerated(tmp_path):
    datasets = [pydicom.dcmread(p) for p in make_test_series(tmp_path, n_slices=4, rows=8, cols=8)]
    datasets[2].ImageOrientationPatient = [1.0, 0.0, 1e-5, 0.0, 0.999999, 2e-4]
    series = datasets_to_series(datasets)
    assert series.orientation == pytest.approx((1, 0, 0, 0, 1, 0), abs=1e-3)


@pytest.mark.parametrize("into", ["memory", "scratch file"])
@pytest.mark.parametrize("signed", [True, False])
def test_jpeg_lossless_from_dcmtk_decodes(tmp_path, signed, into, dcmtk):
    vol = volume(n=3)
    paths = write_ct_series(vol, SPACING, tmp_path / "raw", signed=signed, bits_stored=12)
    out = tmp_path / "jpeg"
    out.mkdir()
    for path in paths:
        subprocess.run([dcmtk("dcmcjpeg"), "+e1", str(path), str(out / path.name)], check=True, capture_output=True)
    series = read_series(out, scratch_dir=tmp_path if into == "scratch file" else None)
    assert series.datasets[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(np.asarray(series.volume_hu), vol)


def _write_two_sizes(folder: Path) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    make_test_series(folder, n_slices=3, rows=16, cols=16, series_uid=series_uid, study_uid=study_uid)
    make_test_series(folder, n_slices=3, rows=20, cols=16, series_uid=series_uid, study_uid=study_uid,
                     origin=(0, 0, 100))


def _write_two_spacings(folder: Path) -> None:
    series_uid = generate_uid()
    make_test_series(folder, n_slices=3, rows=16, cols=16, series_uid=series_uid)
    make_test_series(folder, n_slices=3, rows=16, cols=16, series_uid=series_uid, origin=(0, 0, 100),
                     spacing_mm=(5.0, 1.0, 1.0))


def _write_two_series(folder: Path) -> None:
    make_test_series(folder, n_slices=3, rows=16, cols=16)
    make_test_series(folder, n_slices=3, rows=16, cols=16, origin=(0, 0, 100))


def _truncate_one(folder: Path) -> None:
    paths = make_test_series(folder, n_slices=3, rows=16, cols=16)
    paths[1].write_bytes(paths[1].read_bytes()[:-200])


def _gap(folder: Path) -> None:
    make_test_series(folder, n_slices=5, rows=16, cols=16, slice_offsets_mm=[0, 5, 10, 20, 25])


def _gapped(folder: Path) -> None:
    make_test_series(folder, n_slices=5, rows=16, cols=16, spacing_mm=(10.0, 15.0, 15.0), slice_thickness_mm=5.0)


def _duplicate(folder: Path) -> None:
    make_test_series(folder, n_slices=4, rows=16, cols=16, slice_offsets_mm=[0, 5, 5, 10])


ILL = {
    "sheared beyond a gantry tilt": (lambda d: make_test_series(d, n_slices=4, rows=16, cols=16, gantry_tilt_deg=60.0),
                                     "beyond any gantry tilt"),
    "gap": (_gap, "gap: 1 slice(s) missing"),
    "gapped protocol": (_gapped, "gap: slices 5.00 mm thick are 10.00 mm apart"),
    "duplicate": (_duplicate, "duplicate slice positions"),
    "mixed rows": (_write_two_sizes, "mixed Rows"),
    "mixed pixel spacing": (_write_two_spacings, "mixed PixelSpacing"),
    "two series": (_write_two_series, "multiple series mixed"),
    "missing pixel data": (lambda d: make_test_series(d, n_slices=3, rows=16, cols=16, omit=("PixelData",)),
                           "missing pixel data"),
    "modality MR": (lambda d: make_test_series(d, n_slices=3, rows=16, cols=16, extra={"Modality": "MR"}),
                    "not a CT image"),
    "secondary capture": (lambda d: make_test_series(d, n_slices=3, rows=16, cols=16,
                                                     extra={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}),
                          "not a CT image"),
    "coronal": (lambda d: make_test_series(d, n_slices=3, rows=16, cols=16, orientation=(1, 0, 0, 0, 0, -1)),
                "not axial"),
    "no position": (lambda d: make_test_series(d, n_slices=3, rows=16, cols=16, omit=("ImagePositionPatient",)),
                    "missing ImagePositionPatient"),
    "single slice": (lambda d: make_test_series(d, n_slices=1, rows=16, cols=16), "at least 2 slices"),
    "truncated pixel data": (_truncate_one, "pixel data could not be decoded"),
    "empty folder": (lambda d: d.mkdir(), "no DICOM images"),
}


@pytest.mark.parametrize("build, reason", ILL.values(), ids=ILL.keys())
def test_rejected_with_reason(tmp_path, build, reason):
    folder = tmp_path / "series"
    build(folder)
    with pytest.raises(SeriesError) as info:
        read_series(folder)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_reason_never_contains_patient_identifiers(tmp_path):
    make_test_series(tmp_path, n_slices=3, rows=16, cols=16, patient_name="Doe^Jane", patient_id="MRN123",
                     extra={"Modality": "MR"})
    with pytest.raises(SeriesError) as info:
        read_series(tmp_path)
    assert "Doe" not in info.value.reason and "MRN123" not in info.value.reason


def test_missing_path_is_rejected(tmp_path):
    with pytest.raises(SeriesError, match="does not exist"):
        read_series(tmp_path / "nope")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(signed=True, rescale_intercept=0), None),
        (dict(signed=False, bits_stored=12), "at most 3071"),
        (dict(signed=True, bits_stored=12), "at most 2047"),
    ],
)
def test_writer_checks(tmp_path, kw, match):
    vol = volume(n=2)
    vol[0, 0, 0] = 5000.0
    if match is None:
        write_ct_series(vol, SPACING, tmp_path, **kw)
    else:
        with pytest.raises(ValueError, match=match):
            write_ct_series(vol, SPACING, tmp_path, **kw)


def test_writer_refuses_tiny_jpeg2000(tmp_path):
    with pytest.raises(ValueError, match="at least 32 rows"):
        write_ct_series(volume(rows=16, cols=16), SPACING, tmp_path, transfer_syntax=JPEG2000Lossless)
