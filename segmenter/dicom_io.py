"""Reads a single-frame CT series into a HU volume sorted along the slice normal.

The writer lives in ``segmenter.dicom_writer`` and is re-exported here, so callers import
``read_series``, ``write_ct_series`` and ``make_test_series`` from this module.

File policy of :func:`read_series`: files that are not DICOM at all (no ``DICM`` preamble:
README files, ``.DS_Store``, thumbnails) are skipped and counted in ``CTSeries.skipped_files``;
a DICOMDIR is skipped the same way.  A file that *is* DICOM but cannot be used (another
series, not CT, no or undecodable pixel data) rejects the whole series, because silently
dropping a slice would hand the model a volume with a hole in it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, MediaStorageDirectoryStorage

from segmenter import geometry
from segmenter.hu_check import hu_problem, sample_stride
from segmenter.slab_volume import SlabVolume
from segmenter.slice_decode import OUT_OF_FIELD_HU, SeriesError, slice_hu
from segmenter.dicom_writer import AIR_HU, make_test_series, simple_head_hu, write_ct_series

__all__ = [
    "AIR_HU",
    "CTSeries",
    "OUT_OF_FIELD_HU",
    "SeriesError",
    "datasets_to_series",
    "make_test_series",
    "read_series",
    "simple_head_hu",
    "slice_hu",
    "write_ct_series",
]

logger = logging.getLogger(__name__)

#: With a scratch folder, values larger than this stay in the file until used (pixel data).
_DEFER_BYTES = 64 * 1024


@dataclass
class CTSeries:
    """One CT series as a volume plus the sorted source datasets.

    Attributes
    ----------
    volume_hu:
        float32, shape (z, y, x); slice ``k`` comes from ``datasets[k]``.  A numpy array, or a
        ``segmenter.slab_volume.SlabVolume`` (read a slab at a time) when the series was read
        with a ``scratch_dir``.
    spacing_mm:
        ``(dz, dy, dx)``; ``dz`` is the median distance between slice positions along the
        normal, ``(dy, dx)`` is PixelSpacing.  For volumes use ``slab_mm``: a series may have
        two spacings.
    datasets:
        Source datasets sorted by position along the slice normal (feet to head for the
        usual axial orientation), never by InstanceNumber or file name.  Pixel data stays
        loaded and the datasets are not modified, except when the series was read into a
        scratch folder: then each slice's pixel data is dropped once it is decoded, and
        ``volume_hu`` is the only copy of the pixels.
    sop_instance_uids, study_instance_uid, series_instance_uid:
        UIDs, in the same order as ``datasets``.
    orientation:
        ImageOrientationPatient averaged over slices and re-orthonormalised (6 floats): the
        slices may differ by rounding noise, which some writers (highdicom) refuse.
    row_direction:
        First three values of ``orientation``.
    positions:
        ImagePositionPatient per slice, shape (z, 3), sorted like ``datasets``.
    slab_mm:
        Per slice, the width along the normal of the slab it stands for (half-way to each
        neighbour, see ``segmenter.spacing``), shape (z,); every value equals ``dz`` when the
        series is evenly spaced.  ``None`` means evenly spaced at ``dz``.
    tilt_deg:
        Angle between the stacking direction and the slice normal (gantry tilt), in degrees;
        the slices are analysed as acquired whatever it is.
    skipped_files:
        Number of non-DICOM files ignored by :func:`read_series`.
    """

    volume_hu: np.ndarray | SlabVolume
    spacing_mm: tuple[float, float, float]
    datasets: list[pydicom.Dataset]
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    orientation: tuple[float, ...]
    row_direction: tuple[float, float, float]
    positions: np.ndarray
    slab_mm: np.ndarray | None = None
    tilt_deg: float = 0.0
    skipped_files: int = 0

    def close(self) -> None:
        """Free the scratch file behind ``volume_hu``, if there is one."""
        if isinstance(self.volume_hu, SlabVolume):
            self.volume_hu.close()


def _where(ds: pydicom.Dataset, index: int) -> str:
    """Name a dataset in an error message by file name when there is one (never by PHI)."""
    filename = getattr(ds, "filename", None)
    return f"file {Path(filename).name}" if isinstance(filename, str) else f"dataset {index}"


def _first_difference(datasets: Sequence[pydicom.Dataset], keyword: str) -> str | None:
    # Rounded so that "0.48828125" and "0.488281" (DS written with fewer digits) agree.
    values = {
        tuple(round(float(v), 4) for v in np.atleast_1d(ds.get(keyword))) if ds.get(keyword) else None
        for ds in datasets
    }
    if len(values) > 1:
        shown = sorted(str(list(v)) if v is not None else "missing" for v in values)
        return f"mixed {keyword} within the series: {', '.join(shown)}"
    return None


def _thickness(ds: pydicom.Dataset) -> float | None:
    """SliceThickness in mm, or None when missing or malformed (it is type 2)."""
    try:
        value = float(ds.get("SliceThickness"))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _check_header(ds: pydicom.Dataset, where: str) -> None:
    modality, sop_class = ds.get("Modality", "missing"), ds.get("SOPClassUID", "missing")
    if modality != "CT" or sop_class != CTImageStorage:
        name = getattr(sop_class, "name", sop_class)
        raise SeriesError(f"{where}: not a CT image (Modality {modality}, SOP class {name})")
    if "PixelData" not in ds:
        raise SeriesError(f"{where}: missing pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise SeriesError(f"{where}: multi-frame images are not supported")
    if ds.get("SamplesPerPixel", 1) != 1:
        raise SeriesError(f"{where}: SamplesPerPixel must be 1; got {ds.SamplesPerPixel}")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if not ds.get(keyword):
            raise SeriesError(f"{where}: missing {keyword}, cannot place the slice")


def datasets_to_series(
    datasets: Iterable[pydicom.Dataset],
    *,
    tolerance_mm: float = geometry.POSITION_TOLERANCE_MM,
    max_tilt_deg: float = geometry.MAX_TILT_DEG,
    max_axial_angle_deg: float | None = geometry.MAX_AXIAL_ANGLE_DEG,
    scratch_dir: str | Path | None = None,
) -> CTSeries:
    """Check, sort and stack single-frame CT datasets of one series.

    Parameters
    ----------
    datasets:
        Datasets with pixel data, in any order.
    tolerance_mm, max_tilt_deg, max_axial_angle_deg:
        Passed to :func:`segmenter.geometry.geometry_problem`; ``max_axial_angle_deg=None``
        accepts any orientation.
    scratch_dir:
        When given, the HU volume goes to an unnamed scratch file in this folder (a
        ``SlabVolume``) and each dataset's pixel data is dropped once decoded, so memory does
        not grow with the number of slices.  None: an in-memory array, datasets untouched.

    Raises
    ------
    SeriesError
        When the datasets are empty, from several series, not CT, lack pixel data, differ in
        size, pixel spacing or orientation, or repeat a position or leave a gap along the
        normal (see ``segmenter.spacing``).  Gantry tilt and uneven spacing are accepted.
    """
    datasets = list(datasets)
    if not datasets:
        raise SeriesError("no DICOM images found")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) > 1:
        raise SeriesError(
            f"multiple series mixed: {len(series_uids)} SeriesInstanceUIDs among {len(datasets)} images"
        )
    for index, ds in enumerate(datasets):
        _check_header(ds, _where(ds, index))
    for keyword in ("Rows", "Columns", "PixelSpacing"):
        reason = _first_difference(datasets, keyword)
        if reason:
            raise SeriesError(reason)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    reason = geometry.geometry_problem(
        positions, iops, tolerance_mm=tolerance_mm, max_tilt_deg=max_tilt_deg,
        max_axial_angle_deg=max_axial_angle_deg, thicknesses=[_thickness(ds) for ds in datasets],
    )
    if reason:
        raise SeriesError(reason)
    iop = geometry.mean_orientation(iops)
    order = geometry.sort_order(positions, iop)
    datasets = [datasets[i] for i in order]
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    volume: np.ndarray | SlabVolume = np.empty(shape, np.float32) if scratch_dir is None \
        else SlabVolume(shape, scratch_dir)
    # hu_problem measures a strided sample; taken slice by slice it is the same sample, and
    # the whole volume never has to be in memory for the check.
    stride = sample_stride(*shape[1:])
    sample = np.empty((shape[0], len(range(0, shape[1], stride)), len(range(0, shape[2], stride))), np.float32)
    try:
        for k, (i, ds) in enumerate(zip(order, datasets)):
            hu = slice_hu(ds, _where(ds, i))
            sample[k] = hu[::stride, ::stride]
            if isinstance(volume, SlabVolume):
                volume.write_slice(k, hu)
                del ds.PixelData  # the scratch volume now holds this slice
            else:
                volume[k] = hu
        reason = hu_problem(sample)
        if reason:
            raise SeriesError(reason)
    except BaseException:
        if isinstance(volume, SlabVolume):
            volume.close()
        raise
    dy, dx = (float(v) for v in datasets[0].PixelSpacing)
    first = datasets[0]
    series = CTSeries(
        volume_hu=volume,
        spacing_mm=(geometry.slice_spacing(positions, iop), dy, dx),
        datasets=datasets,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.SeriesInstanceUID),
        orientation=tuple(float(v) for v in iop),
        row_direction=(float(iop[0]), float(iop[1]), float(iop[2])),
        positions=positions[order],
        slab_mm=geometry.slice_slabs_mm(positions[order], iop, tolerance_mm),
        tilt_deg=geometry.tilt_angle_deg(positions, iop),
    )
    logger.debug("assembled series of %d slices, spacing %s mm, tilt %.1f degrees", len(datasets),
                 series.spacing_mm, series.tilt_deg)
    return series


def _files(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        root = Path(path_or_paths)
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        if root.is_file():
            return [root]
        raise SeriesError(f"path must be a folder or file; {root} does not exist")
    return [Path(p) for p in path_or_paths]


def read_series(
    path_or_paths: str | Path | Iterable[str | Path],
    *,
    tolerance_mm: float = geometry.POSITION_TOLERANCE_MM,
    max_tilt_deg: float = geometry.MAX_TILT_DEG,
    max_axial_angle_deg: float | None = geometry.MAX_AXIAL_ANGLE_DEG,
    scratch_dir: str | Path | None = None,
) -> CTSeries:
    """Read a CT series from a folder (searched recursively) or a list of files.

    Parameters
    ----------
    path_or_paths:
        A folder, one file, or an iterable of files.
    tolerance_mm, max_tilt_deg, max_axial_angle_deg, scratch_dir:
        As in :func:`datasets_to_series`.  With a ``scratch_dir`` the pixel data is also left
        in the files until its slice is decoded (pydicom's deferred read), so at most one
        slice's stored pixels are in memory at a time.

    Returns
    -------
    CTSeries
        With ``skipped_files`` counting the non-DICOM files that were ignored.

    Raises
    ------
    SeriesError
        See :func:`datasets_to_series`; also when a DICOM file cannot be parsed.
    """
    datasets: list[pydicom.Dataset] = []
    skipped = 0
    for path in _files(path_or_paths):
        try:
            ds = pydicom.dcmread(path, defer_size=None if scratch_dir is None else _DEFER_BYTES)
        except InvalidDicomError:
            skipped += 1
            continue
        except Exception as exc:  # truncated or corrupt DICOM: reject, do not drop a slice
            raise SeriesError(f"file {path.name}: not readable as DICOM: {exc}") from exc
        if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
            skipped += 1
            continue
        datasets.append(ds)
    if skipped:
        logger.info("skipped %d non-DICOM file(s)", skipped)
    series = datasets_to_series(
        datasets, tolerance_mm=tolerance_mm, max_tilt_deg=max_tilt_deg,
        max_axial_angle_deg=max_axial_angle_deg, scratch_dir=scratch_dir,
    )
    series.skipped_files = skipped
    return series
