"""TID 1500 SR and status SR (worker.results.sr): validity, dcmtk parsing, round trip, rules."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from dicom_node.triage import triage_category
from segmenter.dicom_io import CTSeries
from segmenter.findings import Prediction
from worker.results import codes
from worker.results.seg import build_seg
from worker.results.sr import build_sr, build_status_sr


@pytest.fixture(scope="module")
def positive(ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path_factory: pytest.TempPathFactory):
    prediction = make_prediction()
    seg = build_seg(ct.datasets, prediction)
    out = tmp_path_factory.mktemp("sr")
    seg.save_as(out / "seg.dcm")
    sr = build_sr(ct.datasets, prediction, seg)
    sr.save_as(out / "sr.dcm")
    return prediction, seg, out / "sr.dcm"


@pytest.fixture(scope="module")
def negative(
    ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("sr_negative") / "sr.dcm"
    build_sr(ct.datasets, make_prediction(sdh=False, edh=False), None).save_as(path)
    return path


def _summary(path: Path) -> dict[str, str]:
    """Qualitative evaluations of the summary group: concept code value -> value code value."""
    report = hd.sr.srread(path).content
    (group,) = [g for g in report.get_image_measurement_groups() if g.tracking_identifier == "Summary"]
    return {item.name.value: item.value.value for item in group.get_qualitative_evaluations()}


def test_sr_passes_dciodvfy(positive, negative, dciodvfy: Callable[[Path], list[str]]) -> None:
    dciodvfy(positive[2])
    dciodvfy(negative)


def test_sr_header(positive, model) -> None:
    sr = hd.sr.srread(positive[2])
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    (equipment,) = [item for item in sr.ContributingEquipmentSequence if "DeviceUID" in item]
    assert (equipment.Manufacturer, equipment.ManufacturerModelName) == (model.manufacturer, model.name)
    assert (equipment.SoftwareVersions, equipment.DeviceUID) == (model.version, model.device_uid)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_every_referenced_instance_is_in_evidence(positive, ct: CTSeries) -> None:
    sr = hd.sr.srread(positive[2])
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {*ct.sop_instance_uids, positive[1].SOPInstanceUID}


def test_dsrdump_parses_the_reports(positive, negative, dsrdump: Callable[[Path], str]) -> None:
    text = dsrdump(positive[2])
    for expected in ('SDH,99DURAL', 'EDH,99DURAL', '52101004,SCT,"Present"', "POSITIVE,99DURAL", '"Volume"', "mL"):
        assert expected in text
    text = dsrdump(negative)
    assert text.count('272519000,SCT,"Absent"') == 2 and "Present" not in text
    assert "NEGATIVE,99DURAL" in text


def test_round_trip_volumes_and_segments(positive) -> None:
    prediction, seg, path = positive
    report = hd.sr.srread(path).content
    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["SDH", "EDH"]
    for group in groups:
        finding = prediction.findings[group.tracking_identifier]
        (volume,) = group.get_measurements(name=codes.VOLUME)
        assert volume.value == pytest.approx(finding.volume_ml, abs=1e-3) and volume.unit.value == "mL"
        (thickness,) = group.get_measurements(name=codes.THICKNESS)
        assert thickness.value == pytest.approx(finding.max_thickness_mm, abs=0.01)
        evaluations = {item.name.value: item.value for item in group.get_qualitative_evaluations()}
        assert evaluations[codes.LATERALITY.value] == codes.LATERALITY_VALUES[finding.laterality]
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = segment.referenced_segment_numbers
        assert seg.get_segment_description(number).segment_label == finding.name
        assert segment.source_series_for_segmentation.value == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        # The SR group and the SEG segment share one Tracking UID.
        assert group.tracking_uid in {item.TrackingUID for item in seg.SegmentSequence}


def test_summary_states_both_classes_and_triage(positive, negative) -> None:
    assert _summary(positive[2]) == {"SDH": codes.PRESENT.value, "EDH": codes.PRESENT.value, "TRIAGE": "POSITIVE"}
    assert _summary(negative) == {"SDH": codes.ABSENT.value, "EDH": codes.ABSENT.value, "TRIAGE": "NEGATIVE"}
    assert hd.sr.srread(negative).content.get_volumetric_roi_measurement_groups() == []


def test_excluded_component_is_stated_in_the_summary(
    ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path: Path, negative: Path,
    dciodvfy: Callable[[Path], list[str]], dsrdump: Callable[[Path], str],
) -> None:
    """A component removed by the EDH rule is named in the report, so the negative is not bare."""
    prediction = make_prediction(sdh=False, edh=False)
    prediction.excluded = [{"label": "EDH", "volume_ml": 8.34, "attached_share": 0.09,
                            "reason": "not against the skull: not epidural"}]
    path = tmp_path / "sr.dcm"
    build_sr(ct.datasets, prediction, None).save_as(path)
    dciodvfy(path)
    assert _summary(path) == {"SDH": codes.ABSENT.value, "EDH": codes.ABSENT.value, "TRIAGE": "NEGATIVE"}
    text = dsrdump(path)
    assert "EDH-like region of 8.3 mL (not against the skull: not epidural)" in text
    assert "review the images" in text
    assert "excluded by rule" not in dsrdump(negative)


def test_interrupted_transfer_is_stated_first_in_the_summary(
    ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]], dsrdump: Callable[[Path], str],
) -> None:
    """A negative of a series whose transfer was cut short says so, before anything else."""
    prediction = make_prediction(sdh=False, edh=False)
    prediction.excluded = [{"label": "EDH", "volume_ml": 8.34, "attached_share": 0.09,
                            "reason": "not against the skull: not epidural"}]
    caveat = "Transfer interrupted: the association sending this series was aborted after 16 instance(s)."
    path = tmp_path / "sr.dcm"
    build_sr(ct.datasets, prediction, None, caveat=caveat).save_as(path)
    dciodvfy(path)
    text = dsrdump(path)
    assert caveat in text and text.index(caveat) < text.index("EDH-like region")


def test_sr_is_deterministic(ct: CTSeries, positive) -> None:
    prediction, seg, path = positive
    again = build_sr(ct.datasets, prediction, seg)
    first = hd.sr.srread(path)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)


@pytest.mark.parametrize(
    ("sdh", "edh", "expected"),
    [
        (None, None, "negative"),
        ({"max_thickness_mm": 9.9}, None, "positive"),
        ({"max_thickness_mm": 10.0}, None, "critical"),
        (None, {"volume_ml": 29.9}, "positive"),
        (None, {"volume_ml": 30.0}, "critical"),
        ({"max_thickness_mm": 3.0}, {"volume_ml": 5.0}, "positive"),
    ],
)
def test_triage_rule(make_prediction: Callable[..., Prediction], sdh, edh, expected: str) -> None:
    prediction = make_prediction(sdh=sdh is not None, edh=edh is not None)
    findings = {
        name: dataclasses.replace(f, **(over or {}))
        for (name, f), over in zip(prediction.findings.items(), (sdh, edh))
    }
    assert triage_category(findings) == expected


@pytest.mark.parametrize("state", ["not_analysed", "failed"])
def test_status_sr_from_one_header_without_pixels(
    ct: CTSeries, model, state: str, tmp_path: Path, dciodvfy, dsrdump
) -> None:
    header = copy.deepcopy(ct.datasets[0])
    del header.PixelData
    reason = {"not_analysed": "gap: 1 slice(s) missing between positions 20.00 and 30.00 mm", "failed": "pixel data undecodable"}[state]
    sr = build_status_sr([header], state=state, reason=reason, model=model)
    sr.save_as(tmp_path / "status.dcm")
    dciodvfy(tmp_path / "status.dcm")
    text = dsrdump(tmp_path / "status.dcm")
    assert reason in text and codes.ANALYSIS_STATUS_VALUES[state].value in text
    for claim in ("Present", "Absent", "TRIAGE", "SDH,99DURAL", "EDH,99DURAL"):
        assert claim not in text
    assert sr.VerificationFlag == "UNVERIFIED"
    other = build_status_sr([header], state=state, reason=reason, model=model)
    assert other.SOPInstanceUID == sr.SOPInstanceUID


def test_status_sr_uids_differ_by_state(ct: CTSeries, model) -> None:
    uids = {
        build_status_sr(ct.datasets[:1], state=state, reason="x", model=model).SOPInstanceUID
        for state in ("not_analysed", "failed")
    }
    assert len(uids) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"state": "done"}, ValueError, "state must be one of"),
        ({"reason": "  "}, ValueError, "reason must be a non-empty string"),
        ({"model": "csr-unet"}, TypeError, "model must be a segmenter.findings.ModelInfo"),
    ],
)
def test_ill_status_sr(ct: CTSeries, model, kwargs: dict, error, message: str) -> None:
    arguments = {"state": "failed", "reason": "timeout", "model": model, **kwargs}
    with pytest.raises(error, match=message):
        build_status_sr(ct.datasets[:1], **arguments)


def test_ill_sr_arguments(ct: CTSeries, make_prediction: Callable[..., Prediction], positive) -> None:
    prediction, seg, _ = positive
    with pytest.raises(ValueError, match="state must be 'done'"):
        build_sr(ct.datasets, prediction, seg, state="failed")
    with pytest.raises(ValueError, match="seg must be given when a finding is present"):
        build_sr(ct.datasets, prediction, None)
    with pytest.raises(ValueError, match="seg must be None for a negative series"):
        build_sr(ct.datasets, make_prediction(sdh=False, edh=False), seg)
    with pytest.raises(ValueError, match=r"seg must have one segment per present finding \['SDH', 'EDH'\]"):
        build_sr(ct.datasets, prediction, build_seg(ct.datasets, make_prediction(edh=False)))
    with pytest.raises(ValueError, match=r"seg must have one segment per present finding \['SDH'\]"):
        build_sr(ct.datasets, make_prediction(edh=False), seg)
    with pytest.raises(TypeError, match="seg must be a highdicom Segmentation"):
        build_sr(ct.datasets, prediction, object())
    bad = make_prediction()
    bad.findings["SDH"] = dataclasses.replace(bad.findings["SDH"], laterality="up")
    with pytest.raises(ValueError, match="laterality must be one of"):
        build_sr(ct.datasets, bad, seg)


def test_sr_image_library_lists_every_source_slice_before_the_measurements(positive, ct: CTSeries) -> None:
    sr = hd.sr.srread(positive[2])
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.ContentSequence]
    assert names.index("111028") < names.index("126010")  # Image Library, then Imaging Measurements
    (library,) = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    listed = [entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for group in library.ContentSequence for entry in group.ContentSequence if entry.ValueType == "IMAGE"]
    assert listed == [ds.SOPInstanceUID for ds in ct.datasets]


def test_sr_of_a_tilted_series_with_two_spacings(
    tilted_series, oracle_segmenter, tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    """The report references the slices as acquired and states the volume of their true geometry."""
    from segmenter.dicom_io import read_series

    series = read_series(tilted_series.paths)
    prediction = oracle_segmenter.predict_series(series)
    seg = build_seg(series.datasets, prediction)
    sr = build_sr(series.datasets, prediction, seg)
    sr.save_as(tmp_path / "sr.dcm")
    dciodvfy(tmp_path / "sr.dcm")
    report = hd.sr.srread(tmp_path / "sr.dcm")
    evidence = {inst.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
                for series_item in study.ReferencedSeriesSequence for inst in series_item.ReferencedSOPSequence}
    assert evidence == {*series.sop_instance_uids, seg.SOPInstanceUID}
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    (volume,) = group.get_measurements(name=codes.VOLUME)
    assert volume.value == pytest.approx(prediction.findings["SDH"].volume_ml, abs=1e-3)
    assert volume.value == pytest.approx(tilted_series.truth_ml, rel=0.03)
