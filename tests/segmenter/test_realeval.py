"""Real-data evaluation: per-slice calls, box hits, false calls, negatives and the table."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from segmenter.findings import EDH, SDH
from segmenter.realeval import (
    SLICE_CALL_MM2, HEAD_WIDTH_MM, estimated_spacing_mm, evaluate_real, format_real_table, slice_calls,
)
from segmenter.realslices import RealSlice


class ThresholdSegmenter:
    """Stands in for the network: blood-dense pixels are SDH on the image's left half, EDH on
    the right, so every outcome of the counting rules is known in advance."""

    def predict(self, volume_hu: np.ndarray, spacing_mm) -> SimpleNamespace:
        hu = volume_hu
        labels = np.zeros(hu.shape, np.uint8)
        blood = (hu > 55) & (hu < 900)
        half = hu.shape[-1] // 2
        labels[..., :half][blood[..., :half]] = SDH
        labels[..., half:][blood[..., half:]] = EDH
        return SimpleNamespace(labels=labels, excluded=[])


def test_spacing_comes_from_the_head_width() -> None:
    hu = np.full((100, 200), -1000.0)
    hu[20:80, 50:150] = 30.0
    assert estimated_spacing_mm(hu) == HEAD_WIDTH_MM / 100


def test_small_areas_are_not_calls() -> None:
    grey = np.zeros((64, 64), np.uint8)
    grey[10:50, 10:50] = 100
    grey[30, 40] = 200  # one dense pixel: far below the slice-call area
    rec = slice_calls(ThresholdSegmenter(), RealSlice("p_1", "p", grey))
    assert rec["EDH"]["area_mm2"] < SLICE_CALL_MM2 and not rec["EDH"]["called"]


def test_found_false_calls_and_negatives_on_a_fixture(realdata_root: Path) -> None:
    report = evaluate_real(ThresholdSegmenter(), realdata_root, "test")
    s = report["ich_boxes_test"]["summary"]
    assert (s["EDH"]["slices"], s["EDH"]["found"]) == (1, 1)
    assert (s["SDH"]["slices"], s["SDH"]["found"]) == (1, 1)
    # The intraparenchymal blob lies right of centre: an EDH call on a slice without a dural box.
    assert s["no_dural_box"] == {"slices": 2, "called": 1, "false_call_rate": 0.5}
    neg = report["sich_negatives"]
    assert (neg["slices"], neg["called"], neg["called_edh"], neg["patients_with_a_call"]) == (3, 1, 1, 1)
    assert "ge_head_tilt" not in report
    table = format_real_table(report)
    assert "| ich-boxes/test | EDH slices found (EDH called, in its box) | 1/1 (100.0%) |" in table
    assert "1/3 (33.3%; 1/3 patients)" in table


def test_a_call_outside_the_box_is_not_found(realdata_root: Path) -> None:
    class CornerEDH:
        def predict(self, volume_hu, spacing_mm):
            labels = np.zeros(volume_hu.shape, np.uint8)
            labels[..., :40, :40] = EDH  # a large call, far from every box
            return SimpleNamespace(labels=labels, excluded=[])

    s = evaluate_real(CornerEDH(), realdata_root, "test")["ich_boxes_test"]["summary"]
    assert s["EDH"]["found"] == 0 and s["SDH"]["called_EDH"] == 1
