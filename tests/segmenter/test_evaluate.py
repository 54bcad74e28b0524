"""Metrics on hand-built masks: Dice/IoU identities, case-level counts, per-slice selection."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segmenter.evaluate import case_record, dice, format_table, iou, summarize
from segmenter.findings import EDH, SDH


def box(shape=(4, 20, 20), label=SDH, z=slice(1, 3), y=slice(5, 10), x=slice(5, 10)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[z, y, x] = label
    return out


@pytest.mark.parametrize("t,p,d,j", [
    (box(), box(), 1.0, 1.0),
    (box(), np.zeros((4, 20, 20), np.uint8), 0.0, 0.0),
    (box(x=slice(5, 10)), box(x=slice(7, 12)), 0.6, 3 / 7),  # 30 of 50+50 voxels, 30 of 70
])
def test_dice_iou_values(t, p, d, j) -> None:
    assert dice(t, p) == pytest.approx(d) and iou(t, p) == pytest.approx(j)


def test_both_empty_is_nan() -> None:
    z = np.zeros((2, 3, 3), bool)
    assert math.isnan(dice(z, z)) and math.isnan(iou(z, z))


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 4])
def test_iou_equals_d_over_2_minus_d(shift: int) -> None:
    t, p = box(), box(x=slice(5 + shift, 10 + shift), y=slice(4, 10))
    d = dice(t, p)
    assert iou(t, p) == pytest.approx(d / (2 - d))


def test_case_record_and_summary() -> None:
    spacing = (5.0, 1.0, 1.0)
    truth_sdh = box()
    pred_sdh = box(x=slice(5, 9))  # misses one column; one slice truth-only? no: same slices
    r1 = case_record("a", "sdh", truth_sdh, pred_sdh, {"SDH": True, "EDH": False}, spacing)
    assert r1["SDH"]["dice_3d"] == pytest.approx(2 * 40 / 90)
    assert len(r1["SDH"]["dice_slices"]) == 2  # only slices whose truth has SDH
    assert r1["SDH"]["truth_ml"] == pytest.approx(50 * 5 / 1000)
    r2 = case_record("b", "edh", box(label=EDH), box(label=SDH), {"SDH": True, "EDH": False}, spacing)
    r3 = case_record("c", "negative", np.zeros_like(truth_sdh), box(x=slice(0, 2)), {"SDH": False, "EDH": False},
                     spacing)
    r4 = case_record("d", "iph", np.zeros_like(truth_sdh), np.zeros_like(truth_sdh), {"SDH": False, "EDH": False},
                     spacing)
    r4["excluded_ml"] = 2.1  # a component the EDH rule removed
    s = summarize([r1, r2, r3, r4])
    assert s["SDH"]["positive_cases"] == 1 and s["SDH"]["sensitivity"] == 1.0
    assert s["SDH"]["specificity"] == pytest.approx(2 / 3)  # b was called SDH
    assert s["EDH"]["sensitivity"] == 0.0 and s["EDH"]["specificity"] == 1.0
    assert s["confusion_ml"][EDH][SDH] == pytest.approx(50 * 5 / 1000)  # the EDH called SDH
    assert s["negative_cases"]["fp_volume_ml_mean"] == pytest.approx(20 * 5 / 1000)
    assert s["iph_cases"]["called_sdh"] == 0 and s["iph_cases"]["count"] == 1
    assert s["iph_cases"]["excluded_by_rule"] == 1 and s["negative_cases"]["excluded_by_rule"] == 0
    assert s["cases_with_excluded_components"] == 1
    assert "SDH" in format_table(s) and "1 with a component excluded by the EDH rule" in format_table(s)


def test_cli_evaluates_the_chosen_kinds_and_refuses_unknown_ones(tiny_weights, tmp_path) -> None:
    from segmenter.evaluate import main

    out = tmp_path / "report.json"
    assert main(["--weights", str(tiny_weights), "--count", "2", "--kinds", "iph", "--phantoms", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["kinds"] == {"iph": 2}
    assert [r["case_id"] for r in report["records"]] == ["synth-s1000-00000", "synth-s1000-00001"]
    assert report["setup"]["ranges"] == "PhantomRanges.evaluation(3)"
    with pytest.raises(SystemExit):
        main(["--weights", str(tiny_weights), "--count", "1", "--kinds", "sah"])
