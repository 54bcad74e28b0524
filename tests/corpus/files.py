"""Small CT series for the corpus and the edits that make them bad or odd.

Every builder writes 64 x 64 slices (the smallest the node and its model take) and, where the
kind allows, exactly ``series.min_slices`` of them, so the corpus stays fast while each series
still meets every eligibility minimum except the one its kind breaks.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from dicom_node.config import SeriesConfig
from dicom_node.wire import file_meta
from segmenter.dicom_io import make_test_series

#: Slices per series: the eligibility minimum (``series.min_slices``).
N = SeriesConfig().min_slices
SIZE = 64


def ct(folder: Path, n: int = N, size: int = SIZE, **kw: Any) -> list[Path]:
    """A plausible head CT (air, skull, brain) of ``n`` slices; ``kw`` as for ``make_test_series``."""
    return make_test_series(folder, n_slices=n, rows=size, cols=size, **kw)


def edit(paths: Sequence[Path], change: Callable[[Dataset, int], None],
         only: Sequence[int] | None = None) -> list[Path]:
    """Apply ``change(ds, k)`` to slice ``k`` (every slice, or those in ``only``) and save it."""
    for k, path in enumerate(paths):
        if only is not None and k not in only:
            continue
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path, enforce_file_format=True)
    return list(paths)


def body(path: Path) -> bytes:
    """The data set bytes after the preamble and file meta."""
    raw = path.read_bytes()
    return raw[144 + struct.unpack_from("<L", raw, 140)[0]:]


def rewrite(path: Path, new_body: bytes, *, sop_class: str | None = None, sop_uid: str | None = None,
            syntax: str | None = None) -> Path:
    """Replace the data set bytes of ``path`` and (optionally) what its file meta announces:
    the sender puts the meta's SOP Class/Instance UIDs into the C-STORE request."""
    meta = pydicom.filereader.read_file_meta_info(path)
    header = file_meta(sop_class or str(meta.MediaStorageSOPClassUID), sop_uid or str(meta.MediaStorageSOPInstanceUID),
                       syntax or str(meta.TransferSyntaxUID), "1.2.826.0.1.3680043.9.7433.1", "CORPUS", "CORPUS")
    path.write_bytes(header + new_body)
    return path


def encapsulated(paths: Sequence[Path], syntax: str, fragments: Callable[[int], list[bytes]]) -> list[Path]:
    """Store ``fragments(k)`` as the encapsulated pixel data of slice ``k`` in ``syntax``."""
    def change(ds: Dataset, k: int) -> None:
        ds.PixelData = encapsulate(fragments(k))
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax

    return edit(paths, change)


def stored_as_8bit(paths: Sequence[Path], slope: float, intercept: float) -> list[Path]:
    """Re-store each slice in 8 bits: ``round((HU - intercept) / slope)`` clipped to 0..255."""
    def change(ds: Dataset, k: int) -> None:
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = np.clip(np.rint((hu - intercept) / slope), 0, 255).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            del ds[keyword]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB"

    return edit(paths, change)


def signed_read_as_unsigned(paths: Sequence[Path]) -> list[Path]:
    """Signed HU bytes left as they are but PixelRepresentation 0: air reads as +64536."""
    def change(ds: Dataset, k: int) -> None:
        ds.PixelRepresentation = 0
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            del ds[keyword]

    return edit(paths, change)


def new_uid() -> str:
    return generate_uid()
