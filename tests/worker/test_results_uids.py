"""Deterministic result UIDs (worker.results.uids)."""
from __future__ import annotations

import pytest
from pydicom.uid import UID

from worker.results import uids

SERIES = "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize("object_type", sorted(uids.OBJECT_TYPES))
def test_uids_are_valid_deterministic_and_short(object_type: str) -> None:
    first = uids.result_uid(SERIES, "1.0", object_type, 3)
    assert first == uids.result_uid(SERIES, "1.0", object_type, 3)
    assert UID(first).is_valid and first.startswith("2.25.") and len(first) <= 64
    assert uids.result_series_uid(SERIES, "1.0", object_type) == uids.result_series_uid(SERIES, "1.0", object_type)


def test_every_input_changes_the_uid() -> None:
    base = uids.result_uid(SERIES, "1.0", "SEG", 0)
    variants = {
        uids.result_uid(SERIES + "1", "1.0", "SEG", 0),
        uids.result_uid(SERIES, "1.1", "SEG", 0),
        uids.result_uid(SERIES, "1.0", "SR", 0),
        uids.result_uid(SERIES, "1.0", "SEG", 1),
        uids.result_series_uid(SERIES, "1.0", "SEG"),
        uids.tracking_uid(SERIES, "1.0", "SDH"),
    }
    assert base not in variants and len(variants) == 6


def test_parts_are_separated() -> None:
    # generate_uid's plain concatenation would make these collide.
    assert uids.result_uid("1.2", "34", "SEG") != uids.result_uid("1.23", "4", "SEG")


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((SERIES, "1.0", "SEG", -1), ValueError, "index must be >= 0"),
        ((SERIES, "1.0", "SEG", 1.0), TypeError, "index must be an int"),
        ((SERIES, "1.0", "PNG", 0), ValueError, "object_type must be one of"),
        ((SERIES, " ", "SEG", 0), ValueError, "model_version must be a non-empty string"),
        (("1.02.3", "1.0", "SEG", 0), ValueError, "source_series_uid must be a DICOM UID"),
        ((None, "1.0", "SEG", 0), ValueError, "source_series_uid must be a DICOM UID"),
    ],
)
def test_ill_arguments(args: tuple, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        uids.result_uid(*args)
