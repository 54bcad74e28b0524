"""The triage categories of a result, thresholds from the config, and their order."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from dicom_node.triage import result_category, severity


def finding(present: bool, volume_ml: float = 0.0, max_thickness_mm: float = 0.0):
    return SimpleNamespace(present=present, volume_ml=volume_ml, max_thickness_mm=max_thickness_mm)


@pytest.mark.parametrize("state, sdh, edh, limits, expected", [
    ("done", finding(True, 5, 10.0), finding(False), {}, "critical"),
    ("done", finding(True, 5, 9.9), finding(False), {}, "positive"),
    ("done", finding(False), finding(True, 30.0, 8), {}, "critical"),
    ("done", finding(False), finding(True, 29.9, 8), {}, "positive"),
    ("done", finding(False), finding(False), {}, "negative"),
    ("done", finding(True, 5, 9.9), finding(False), {"sdh_thickness_mm": 8}, "critical"),
    ("done", finding(False), finding(True, 29.9, 8), {"edh_volume_ml": 20}, "critical"),
    ("not_analysed", finding(False), finding(False), {}, "not_analysed"),
    ("failed", finding(True, 50, 20), finding(False), {}, "failed"),
])
def test_result_category(state, sdh, edh, limits, expected):
    assert result_category(state, {"SDH": sdh, "EDH": edh}, **limits) == expected


@pytest.mark.parametrize("bad", [("running", {}), ("received", {})])
def test_result_category_needs_a_final_state(bad):
    with pytest.raises(ValueError, match="state must be"):
        result_category(*bad)


def test_severity_order():
    assert severity("critical") > severity("positive") > severity("not_analysed") == severity("failed") \
        > severity("negative")
    with pytest.raises(ValueError):
        severity("urgent")
