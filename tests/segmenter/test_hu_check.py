"""A decoded series must look like a head CT in HU, or it is refused with the reason."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from segmenter.dicom_io import SeriesError, read_series
from segmenter.dicom_writer import make_test_series, simple_head_hu
from segmenter.hu_check import hu_problem
from segmenter.synthetic import PhantomRanges, make_phantom


@pytest.mark.parametrize("kind", ["sdh", "edh", "negative", "iph"])
def test_phantoms_and_the_test_head_pass(kind: str) -> None:
    assert hu_problem(make_phantom(3, kind, PhantomRanges.evaluation()).hu) is None
    assert hu_problem(simple_head_hu(12, 64, 64)) is None


def test_vertex_and_skull_base_slabs_pass() -> None:
    head = make_phantom(4, "negative", PhantomRanges.evaluation()).hu
    top = int(np.flatnonzero((head > 300).any(axis=(1, 2)))[-1])  # the last slice through the skull
    assert hu_problem(head[:2]) is None and hu_problem(head[top - 1:top + 1]) is None


@pytest.mark.parametrize("broken, words", [
    (lambda v: np.where(v < 0, v + 65536, v), "above 4000 HU"),  # signed data read as unsigned
    (lambda v: np.full_like(v, -1024.0), "almost constant"),  # RescaleSlope 0
    (lambda v: v + 1024.0, "air"),  # intercept missing
    (lambda v: v / 10.0, "air"),  # rescale slope ten times too small
])
def test_broken_values_are_named(broken, words: str) -> None:
    reason = hu_problem(broken(simple_head_hu(12, 64, 64)))
    assert reason is not None and words in reason and "RescaleSlope" in reason


def _rewrite(paths, change) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def test_unsigned_misread_series_is_refused(tmp_path) -> None:
    paths = make_test_series(tmp_path, n_slices=12, rows=32, cols=32)
    _rewrite(paths, lambda ds: setattr(ds, "PixelRepresentation", 0))
    with pytest.raises(SeriesError, match="above 4000 HU"):
        read_series(tmp_path)


def test_zero_rescale_slope_series_is_refused(tmp_path) -> None:
    paths = make_test_series(tmp_path, n_slices=12, rows=32, cols=32)
    _rewrite(paths, lambda ds: setattr(ds, "RescaleSlope", 0))
    with pytest.raises(SeriesError, match="almost constant"):
        read_series(tmp_path)
