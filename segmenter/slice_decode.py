"""One CT slice's stored pixels to float32 Hounsfield units, and the error for unusable series.

Shared by the series reader (``segmenter.dicom_io``) and everything that decodes a single
slice (the real-data bank).  Padding and out-of-field values become air, so windowing and
normalisation never see scanner fill.
"""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale, pixel_array

from segmenter.dicom_writer import AIR_HU

__all__ = ["OUT_OF_FIELD_HU", "SeriesError", "slice_hu"]

#: HU below this are not tissue or air but scanner fill outside the reconstruction circle
#: (Siemens -2000, GE -3024); they become ``AIR_HU`` so windowing and normalisation see air.
OUT_OF_FIELD_HU = -1024.0


class SeriesError(ValueError):
    """A set of files or datasets is not one usable CT volume; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _padding_value(ds: pydicom.Dataset, keyword: str) -> int | None:
    """Padding attribute as the stored value, fixing US/SS ambiguity by PixelRepresentation."""
    if keyword not in ds or ds[keyword].value is None:
        return None
    value = int(ds[keyword].value)
    bits = int(ds.BitsAllocated)
    if ds.PixelRepresentation == 1 and value >= 2 ** (bits - 1):
        value -= 2**bits
    return value


def slice_hu(ds: pydicom.Dataset, where: str = "dataset") -> np.ndarray:
    """Decode one slice to float32 HU; padding and out-of-field values become ``AIR_HU``.

    Raises
    ------
    SeriesError
        When the pixel data cannot be decoded (truncated, or no decoder for its syntax).
    """
    try:
        # Not ``ds.pixel_array``: that keeps the decoded slice on the data set, which the series
        # holds until its results are written (0.5 MiB a 512x512 slice, beside the HU volume).
        stored = pixel_array(ds)
    except Exception as exc:  # pydicom raises many types for bad or unsupported pixel data
        raise SeriesError(f"{where}: pixel data could not be decoded: {exc}") from exc
    padding = np.zeros(stored.shape, dtype=bool)
    low = _padding_value(ds, "PixelPaddingValue")
    if low is not None:
        high = _padding_value(ds, "PixelPaddingRangeLimit")
        high = low if high is None else high
        padding = (stored >= min(low, high)) & (stored <= max(low, high))
    hu = apply_rescale(stored, ds).astype(np.float32)
    hu[padding | (hu < OUT_OF_FIELD_HU)] = AIR_HU
    return hu


