"""Coded concepts (worker.results.codes): well-formed, private ones declared, nothing guessed."""
from __future__ import annotations

import pytest
from pydicom.sr.coding import Code

from worker.results import codes


def _all_codes() -> list[Code]:
    found: list[Code] = []
    for value in vars(codes).values():
        if isinstance(value, Code):
            found.append(value)
        elif isinstance(value, dict):
            found += [v for v in value.values() if isinstance(v, Code)]
    return found


@pytest.mark.parametrize("code", _all_codes(), ids=lambda c: f"{c.scheme_designator}-{c.value}")
def test_codes_fit_their_value_representations(code: Code) -> None:
    # Code Value and Coding Scheme Designator are SH (16), Code Meaning is LO (64).
    assert 0 < len(code.value) <= 16 and 0 < len(code.scheme_designator) <= 16 and 0 < len(code.meaning) <= 64
    assert code.scheme_designator in {"SCT", "DCM", "LN", "UCUM", codes.PRIVATE_SCHEME}


def test_sdh_and_edh_are_private_not_guessed_snomed() -> None:
    assert {c.scheme_designator for c in codes.HEMATOMA_TYPE.values()} == {"99DURAL"}
    assert codes.PRIVATE_SCHEME.startswith("99")
    assert (codes.SEGMENT_TYPE.value, codes.SEGMENT_CATEGORY.value) == ("50960005", "49755003")
    (item,) = codes.coding_scheme_identification()
    assert item.CodingSchemeDesignator == codes.PRIVATE_SCHEME


def test_tables_cover_the_finding_values() -> None:
    assert set(codes.LATERALITY_VALUES) == {"left", "right", "bilateral"}
    assert set(codes.TRIAGE_VALUES) == {"critical", "positive", "negative"}
    assert (codes.PRESENT.value, codes.ABSENT.value, codes.VOLUME.value) == ("52101004", "272519000", "118565006")
    assert codes.UNIT_ML == Code("mL", "UCUM", "mL") and codes.PROCEDURE_CT_HEAD.value == "24725-4"
