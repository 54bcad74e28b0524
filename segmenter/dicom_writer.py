"""Writes a HU volume as a realistic, dciodvfy-clean CT Image Storage series.

Used by the phantom generator, by every test that needs CT files, and for tests of the readers
(gantry tilt, two slice spacings, gaps, missing attributes, compressed transfer syntaxes).
Import it through ``segmenter.dicom_io``.
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.valuerep import DSfloat
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

logger = logging.getLogger(__name__)

#: Transfer syntaxes written without an encoder.
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
AIR_HU = -1000.0


def _ds(value: float) -> DSfloat:
    """A DS value within the 16 characters the VR allows (a float repr can need 19)."""
    return DSfloat(float(value), auto_format=True)


def _stored_values(
    volume_hu: np.ndarray, signed: bool, bits_stored: int, intercept: float
) -> np.ndarray:
    """HU to stored values with slope 1; values below the representable floor are air, so clip."""
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    stored = np.rint(np.asarray(volume_hu, dtype=np.float64) - intercept)
    if stored.max() > high:
        raise ValueError(
            f"volume_hu must be at most {high + intercept:g} HU with signed={signed}, "
            f"bits_stored={bits_stored}, intercept={intercept:g}; got {stored.max() + intercept:g}"
        )
    return np.clip(stored, low, high).astype(np.int16 if signed else np.uint16)


def _base_dataset(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    when: _dt.datetime,
    patient_name: str,
    patient_id: str,
    series_description: str,
) -> pydicom.Dataset:
    """Attributes shared by all slices of the series (Patient, Study, Series, Equipment...)."""
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.PatientAge = f"{when.year - 1960:03d}Y"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = "SYN" + when.strftime("%y%m%d%H%M")
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "dural-node synthetic"
    ds.ManufacturerModelName = "PhantomCT"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.KVP = 120
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 1000
    ds.ConvolutionKernel = "H30s"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = [40, 400]
    ds.WindowWidth = [80, 2000]
    ds.WindowCenterWidthExplanation = ["BRAIN", "BONE"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    return ds


def write_ct_series(
    volume_hu: np.ndarray,
    spacing_mm: Sequence[float],
    out_dir: str | Path,
    *,
    signed: bool = True,
    rescale_intercept: float | None = None,
    bits_stored: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Phantom^Head",
    patient_id: str = "PHANTOM0001",
    series_description: str = "HEAD 5mm",
    origin: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    slice_offsets_mm: Sequence[float] | None = None,
    gantry_tilt_deg: float = 0.0,
    slice_thickness_mm: float | Sequence[float] | None = None,
    pixel_padding_value: int | None = None,
    padding_mask: np.ndarray | None = None,
    instance_number_order: Literal["shuffled", "ascending"] = "shuffled",
    file_names: Literal["sop", "random"] = "sop",
    extra: Mapping[str, Any] | None = None,
    omit: Sequence[str] = (),
    seed: int = 0,
) -> list[Path]:
    """Write ``volume_hu`` as one single-frame CT Image Storage file per slice.

    Parameters
    ----------
    volume_hu:
        Shape (z, y, x); slice ``k`` is written at ``origin + offset_k * normal`` where the
        normal is ``row x column`` of ``orientation``.  HU are rounded to integers (slope 1).
    spacing_mm:
        ``(dz, dy, dx)``; ``dz`` sets the default slice offsets ``k * dz``.
    out_dir:
        Created if missing.  Existing files are left alone, so several series can share it.
    signed, rescale_intercept, bits_stored:
        Pixel representation.  The intercept defaults to 0 for signed (int16) and -1024 for
        unsigned (uint16) storage.  HU below the representable floor are clipped (air).
    transfer_syntax:
        Explicit or Implicit VR Little Endian, or any syntax pydicom can encode here
        (RLE Lossless, JPEG 2000 Lossless, JPEG-LS Lossless).
    study_uid, series_uid:
        Generated when ``None``; SOP Instance UIDs are always newly generated.
    origin:
        ImagePositionPatient of slice 0; defaults to an in-plane centred field at z = 0.
    slice_offsets_mm:
        Position of each slice along the normal, overriding ``k * dz`` (gaps, uneven spacing).
    gantry_tilt_deg:
        Shift each slice along the column direction by ``offset * tan(tilt)`` and record
        GantryDetectorTilt, as a tilted acquisition reconstructed without correction looks.
    slice_thickness_mm:
        SliceThickness, one value for all slices or one per slice (a series with two
        reconstructed thicknesses); defaults to ``dz``.
    pixel_padding_value, padding_mask:
        When given, voxels where ``padding_mask`` is true store ``pixel_padding_value`` and
        PixelPaddingValue is written.
    instance_number_order:
        ``"shuffled"`` gives InstanceNumbers unrelated to position, to catch readers that sort
        by them; ``"ascending"`` numbers slices in volume order.
    file_names:
        ``"sop"`` names files ``<SOPInstanceUID>.dcm``; ``"random"`` uses random hex names.
    extra:
        Keyword to value, set on every slice after the defaults (e.g. ``{"Modality": "MR"}``).
    omit:
        Keywords deleted from every slice before writing (e.g. ``("PixelData",)``).
    seed:
        Seeds the instance-number shuffle and random file names.

    Returns
    -------
    list of pathlib.Path
        One path per slice, in volume order (``paths[k]`` holds ``volume_hu[k]``).
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"volume_hu must be 3-D (z, y, x); got shape {volume.shape}")
    n_slices, rows, cols = volume.shape
    if instance_number_order not in ("shuffled", "ascending"):
        raise ValueError(
            f"instance_number_order must be 'shuffled' or 'ascending'; got {instance_number_order!r}"
        )
    if file_names not in ("sop", "random"):
        raise ValueError(f"file_names must be 'sop' or 'random'; got {file_names!r}")
    dz, dy, dx = (float(v) for v in spacing_mm)
    if UID(transfer_syntax) in (JPEG2000, JPEG2000Lossless) and min(rows, cols) < 32:
        # openjpeg always uses 6 wavelet resolution levels, which need 32 pixels per side.
        raise ValueError(f"JPEG 2000 needs at least 32 rows and columns; got {rows}x{cols}")
    intercept = float(rescale_intercept if rescale_intercept is not None else (0 if signed else -1024))
    stored = _stored_values(volume, signed, bits_stored, intercept)
    if pixel_padding_value is not None and padding_mask is not None:
        stored[np.asarray(padding_mask, dtype=bool)] = pixel_padding_value

    iop = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    offsets = np.asarray(np.arange(n_slices) * dz if slice_offsets_mm is None else slice_offsets_mm, float)
    if offsets.shape != (n_slices,):
        raise ValueError(f"slice_offsets_mm must have {n_slices} values; got {offsets.shape}")
    thickness = np.asarray(dz if slice_thickness_mm is None else slice_thickness_mm, float)
    if thickness.ndim == 0:
        thickness = np.full(n_slices, float(thickness))
    if thickness.shape != (n_slices,):
        raise ValueError(f"slice_thickness_mm must be one value or {n_slices} values; got {thickness.shape}")
    if origin is None:
        origin = -(cols - 1) / 2 * dx * row_dir - (rows - 1) / 2 * dy * col_dir
    shift = np.tan(np.radians(gantry_tilt_deg)) * offsets
    positions = np.asarray(origin, float) + offsets[:, None] * normal + shift[:, None] * col_dir

    rng = np.random.default_rng(seed)
    numbers = (rng.permutation(n_slices) if instance_number_order == "shuffled" else np.arange(n_slices)) + 1
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    base = _base_dataset(
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=generate_uid(entropy_srcs=[study_uid, "frame"]),
        when=_dt.datetime(2024, 1, 1, 8, 0) + _dt.timedelta(minutes=int(rng.integers(0, 500_000))),
        patient_name=patient_name,
        patient_id=patient_id,
        series_description=series_description,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(n_slices):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(thickness[k])
        ds.SliceLocation = _ds(positions[k] @ normal)
        if gantry_tilt_deg:
            ds.GantryDetectorTilt = _ds(gantry_tilt_deg)
        ds.Rows, ds.Columns = rows, cols
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept = _ds(intercept)
        ds.add_new("SmallestImagePixelValue", "SS" if signed else "US", int(stored[k].min()))
        ds.add_new("LargestImagePixelValue", "SS" if signed else "US", int(stored[k].max()))
        if pixel_padding_value is not None:
            ds.add_new("PixelPaddingValue", "SS" if signed else "US", int(pixel_padding_value))
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        if UID(transfer_syntax) == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif UID(transfer_syntax) not in NATIVE_SYNTAXES:
            ds.compress(transfer_syntax, stored[k], generate_instance_uid=False)
        for keyword in omit:
            if keyword in ds:
                delattr(ds, keyword)
        name = f"{ds.SOPInstanceUID}.dcm" if file_names == "sop" else rng.bytes(8).hex()
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d CT slices (%s) to %s", n_slices, UID(transfer_syntax).name, out)
    return paths


def simple_head_hu(n_slices: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A cheap head-like HU volume: air, an elliptical skull shell, brain with noise.

    Good enough for tests that need plausible CT files, not for training.
    """
    rng = np.random.default_rng(seed)
    z = np.linspace(-1.0, 1.0, n_slices)[:, None, None]
    y = np.linspace(-1.0, 1.0, rows)[None, :, None]
    x = np.linspace(-1.0, 1.0, cols)[None, None, :]
    # Skull tapers towards the vertex and skull base like a real head.
    scale = np.sqrt(np.clip(1.0 - 0.6 * z**2, 0.05, None))
    r = np.sqrt((x / (0.75 * scale)) ** 2 + (y / (0.9 * scale)) ** 2)
    volume = np.full((n_slices, rows, cols), AIR_HU, dtype=np.float32)
    volume[np.broadcast_to(r < 1.0, volume.shape)] = 1200.0
    brain = np.broadcast_to(r < 0.88, volume.shape)
    volume[brain] = 35.0 + rng.normal(0.0, 4.0, size=int(brain.sum()))
    return np.rint(volume).astype(np.float32)


def make_test_series(
    out_dir: str | Path, n_slices: int = 12, rows: int = 64, cols: int = 64, **kw: Any
) -> list[Path]:
    """Write a small head-like CT series quickly; ``kw`` goes to :func:`write_ct_series`.

    In-plane spacing gives a 240 mm field of view; slices are 5 mm apart unless
    ``spacing_mm`` is passed.
    """
    spacing = kw.pop("spacing_mm", (5.0, 240.0 / rows, 240.0 / cols))
    volume = kw.pop("volume_hu", None)
    if volume is None:
        volume = simple_head_hu(n_slices, rows, cols, seed=kw.get("seed", 0))
    return write_ct_series(volume, spacing, out_dir, **kw)
