"""Header summaries: what series assembly and eligibility need from each instance, read once.

The SCP only writes bytes and records the instance in the ledger. The assembler then reads each
newly recorded file once, up to (not including) its pixel data, and caches a small
:class:`HeaderSummary` in the ledger (table ``instance_headers``), so that completion and
eligibility checks never reopen files.

Unreadable files are recorded too, with the reason (``HeaderSummary.error``): a series holding
one is *not analysed* (see ``eligibility.unreadable_problem``) rather than analysed with a slice
missing, and the reason is visible in ``dicom-node status``.

No PHI is kept: the summary holds technical attributes and the free-text descriptions that the
include/exclude rules match, never patient names, IDs, dates or accession numbers.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

logger = logging.getLogger(__name__)

#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


@dataclass(frozen=True)
class HeaderSummary:
    """The attributes of one instance that series assembly and eligibility look at.

    Lists (``pixel_spacing``, ``iop``, ``ipp``, ``image_type``) are ``None`` when the attribute
    is missing or malformed. ``error`` is set (and everything else left empty) when the file
    could not be parsed at all.
    """

    sop_uid: str
    error: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    rows: int | None = None
    cols: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    iop: tuple[float, ...] | None = None
    ipp: tuple[float, float, float] | None = None
    has_pixel_data: bool = False
    frames: int = 1
    gantry_tilt_deg: float | None = None
    slice_thickness_mm: float | None = None
    image_type: tuple[str, ...] | None = None
    series_description: str = ""
    study_description: str = ""
    body_part: str = ""
    manufacturer: str = ""
    model_name: str = ""
    station_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form stored in the ledger (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeaderSummary":
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("pixel_spacing", "iop", "ipp", "image_type"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def summarise(ds: Dataset, sop_uid: str, pixel_length: int | None) -> HeaderSummary:
    """Build a summary from a dataset read without its pixel data.

    Parameters
    ----------
    ds:
        The dataset, read up to the pixel data element.
    sop_uid:
        The SOP Instance UID the ledger knows the instance by.
    pixel_length:
        Length of the pixel data element found where reading stopped; ``None`` when there was
        none. Undefined length (encapsulated) counts as present.
    """
    tilt = ds.get("GantryDetectorTilt")
    try:
        tilt_deg = float(tilt) if tilt not in (None, "") else None
    except (TypeError, ValueError):
        tilt_deg = None
    raw_type = ds.get("ImageType")
    image_type = None
    if raw_type is not None:
        image_type = tuple(str(v).upper() for v in (raw_type if isinstance(raw_type, MultiValue) else [raw_type]))
    spacing = _floats(ds, "PixelSpacing", 2)
    ipp = _floats(ds, "ImagePositionPatient", 3)
    thickness = _floats(ds, "SliceThickness", 1)
    return HeaderSummary(
        sop_uid=sop_uid,
        sop_class_uid=str(ds.get("SOPClassUID", "")) or None,
        modality=_text(ds, "Modality").upper() or None,
        rows=_int(ds, "Rows"),
        cols=_int(ds, "Columns"),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        iop=_floats(ds, "ImageOrientationPatient", 6),
        ipp=(ipp[0], ipp[1], ipp[2]) if ipp else None,
        has_pixel_data=pixel_length is not None and pixel_length != 0,
        frames=_int(ds, "NumberOfFrames") or 1,
        gantry_tilt_deg=tilt_deg,
        slice_thickness_mm=thickness[0] if thickness and thickness[0] > 0 else None,
        image_type=image_type,
        series_description=_text(ds, "SeriesDescription"),
        study_description=_text(ds, "StudyDescription"),
        body_part=_text(ds, "BodyPartExamined"),
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        station_name=_text(ds, "StationName"),
    )


class _NotAnInstance(ValueError):
    """The file parsed but is not a storable instance."""


def read_summary(path: str | Path, sop_uid: str) -> HeaderSummary:
    """Read one file's header up to its pixel data and summarise it; never raises.

    ``pydicom.filereader.read_partial`` with our own stop condition is ``dcmread(...,
    stop_before_pixels=True)`` that also tells whether (and how long) the pixel data element
    is, without reading it.

    Returns
    -------
    HeaderSummary
        With ``error`` set when the file is missing or cannot be parsed as DICOM.
    """
    found: list[int] = []

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        if int(tag) in PIXEL_TAGS:
            found.append(length)
            return True
        return False

    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=at_pixels)
        if "SOPClassUID" not in ds:
            # pydicom stops quietly at the end of a truncated file; a real instance always
            # carries its SOP Class.
            raise _NotAnInstance("no SOPClassUID in the data set (truncated or not an instance)")
        return summarise(ds, sop_uid, found[0] if found else None)
    except Exception as exc:  # any parse failure is a property of the file, recorded below
        # pydicom's messages may quote element values (a malformed birth date, say) and this
        # reason is logged and shown in status: only our own and OS messages are kept verbatim.
        if isinstance(exc, _NotAnInstance):
            reason = f"unreadable DICOM file: {exc}"
        elif isinstance(exc, OSError):
            reason = f"unreadable DICOM file: {type(exc).__name__}: {exc.strerror}"
        else:
            reason = f"unreadable DICOM file: {type(exc).__name__}"
        logger.warning("instance header unreadable", extra={"sop_uid": sop_uid, "error": type(exc).__name__})
        return HeaderSummary(sop_uid=sop_uid, error=reason)
