"""SEG builder (worker.results.seg): validity, round trip, determinism, source normalisation."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segmenter.dicom_io import CTSeries, make_test_series, read_series
from segmenter.findings import EDH, SDH, Prediction
from worker.results import codes
from worker.results.seg import build_seg, prepare_sources


@pytest.fixture(scope="module")
def seg_file(
    ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    seg = build_seg(ct.datasets, make_prediction())
    assert seg is not None
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.save_as(path)
    return path


def test_seg_passes_dciodvfy(seg_file: Path, dciodvfy: Callable[[Path], list[str]]) -> None:
    dciodvfy(seg_file)


def test_seg_round_trip_matches_label_volume(
    seg_file: Path, ct: CTSeries, make_prediction: Callable[..., Prediction]
) -> None:
    labels = make_prediction().labels
    seg = hd.seg.segread(seg_file)
    assert seg.SegmentationType == "BINARY"
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["SDH", "EDH"]
    # Empty frames are omitted: one frame per (slice, segment) that has voxels.
    expected_frames = sum(int(np.any(labels[k] == v)) for k in range(len(labels)) for v in (SDH, EDH))
    assert int(seg.NumberOfFrames) == expected_frames
    pixels = seg.get_pixels_by_source_instance(ct.sop_instance_uids, segment_numbers=[1, 2])
    for number, label in ((1, SDH), (2, EDH)):
        np.testing.assert_array_equal(pixels[..., number - 1].astype(bool), labels == label)


def test_segment_descriptions(seg_file: Path, model) -> None:
    seg = hd.seg.segread(seg_file)
    for item, name in zip(seg.SegmentSequence, ("SDH", "EDH")):
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        assert (type_item.CodeValue, type_item.CodingSchemeDesignator) == ("50960005", "SCT")
        modifier = type_item.SegmentedPropertyTypeModifierCodeSequence[0]
        assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == (name, codes.PRIVATE_SCHEME)
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (model.name, model.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    (equipment,) = [item for item in seg.ContributingEquipmentSequence if "DeviceUID" in item]
    assert equipment.DeviceUID == model.device_uid and equipment.ManufacturerModelName == model.name
    assert equipment.SoftwareVersions == model.version


def test_single_present_class_gives_one_segment(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    seg = build_seg(ct.datasets, make_prediction(edh=False))
    assert seg is not None and [item.SegmentLabel for item in seg.SegmentSequence] == ["SDH"]


def test_negative_series_has_no_seg(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    assert build_seg(ct.datasets, make_prediction(sdh=False, edh=False)) is None


def test_seg_is_deterministic(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    first, second = (build_seg(ct.datasets, make_prediction()) for _ in range(2))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (second.SeriesInstanceUID, second.SOPInstanceUID)
    assert first.SegmentSequence[0].TrackingUID == second.SegmentSequence[0].TrackingUID


def test_messy_sources_are_normalised_on_copies(
    tmp_path: Path, make_prediction: Callable[..., Prediction], dciodvfy: Callable[[Path], list[str]]
) -> None:
    missing = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "SliceThickness")
    make_test_series(tmp_path / "ct", n_slices=12, rows=64, cols=64, seed=5, omit=missing)
    sources = read_series(tmp_path / "ct").datasets
    # Rounding noise in the orientation, as real scanners write it.
    sources[4].ImageOrientationPatient = [1.0, 4e-5, 0.0, -4e-5, 1.0, 2e-5]
    before = copy.deepcopy(sources)
    seg = build_seg(sources, make_prediction())
    assert seg is not None
    assert [ds.to_json_dict() for ds in sources] == [ds.to_json_dict() for ds in before]
    assert all(keyword not in sources[0] for keyword in missing)
    seg.save_as(tmp_path / "seg.dcm")
    dciodvfy(tmp_path / "seg.dcm")
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == pytest.approx(5.0)


def _shuffled(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return [datasets[i] for i in (0, 2, 1, *range(3, len(datasets)))]


def _repeated(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    out = [copy.deepcopy(ds) for ds in datasets]
    out[5].ImagePositionPatient = out[4].ImagePositionPatient
    return out


def _one_slice_reoriented(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Mixed orientations (not gantry tilt, which keeps one orientation): refused."""
    out = [copy.deepcopy(ds) for ds in datasets]
    out[3].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.99, 0.14]
    return out


def _two_series(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    out = [copy.deepcopy(ds) for ds in datasets]
    out[0].SeriesInstanceUID = "1.2.3"
    return out


@pytest.mark.parametrize(
    ("mangle", "error", "message"),
    [
        (_shuffled, ValueError, "sources must be sorted along the slice normal"),
        (_repeated, ValueError, "without repeated positions"),
        (_one_slice_reoriented, ValueError, "sources must share one ImageOrientationPatient"),
        (_two_series, ValueError, "sources must come from one series"),
        (lambda ds: [], ValueError, "sources must contain at least one dataset"),
        (lambda ds: ds[0], TypeError, "sources must be a sequence of pydicom Datasets"),
        (lambda ds: [*ds[:-1], "x"], TypeError, r"sources\[11\] must be a pydicom Dataset"),
    ],
)
def test_ill_sources(ct: CTSeries, make_prediction: Callable[..., Prediction], mangle, error, message) -> None:
    with pytest.raises(error, match=message):
        build_seg(mangle(list(ct.datasets)), make_prediction())


def test_reverse_sorted_sources_are_accepted(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    # highdicom's sort_datasets orders head to feet, the reader feet to head: both are sorted.
    prediction = make_prediction()
    prediction.labels = prediction.labels[::-1].copy()
    sources = hd.spatial.sort_datasets(ct.datasets)
    assert sources[0].SOPInstanceUID == ct.datasets[-1].SOPInstanceUID
    seg = build_seg(sources, prediction)
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), prediction.labels == SDH)


@pytest.mark.parametrize(
    ("mangle", "error", "message"),
    [
        (lambda p: setattr(p, "labels", p.labels[:-1]), ValueError, r"prediction.labels must have shape"),
        (lambda p: setattr(p, "labels", p.labels.astype(float)), TypeError, "prediction.labels must be an integer"),
        (lambda p: p.labels.__setitem__((0, 0, 0), 3), ValueError, r"prediction.labels values must be in \[0, 1, 2\]"),
        (lambda p: p.findings.pop("EDH"), ValueError, "prediction.findings must state EDH"),
        (lambda p: p.labels.__setitem__(p.labels == SDH, 0), ValueError, "must contain voxels of present finding SDH"),
    ],
)
def test_ill_predictions(ct: CTSeries, make_prediction: Callable[..., Prediction], mangle, error, message) -> None:
    prediction = make_prediction()
    mangle(prediction)
    with pytest.raises(error, match=message):
        build_seg(ct.datasets, prediction)


def test_prepare_sources_accepts_a_single_header_without_geometry(ct: CTSeries) -> None:
    header = copy.deepcopy(ct.datasets[0])
    del header.PixelData, header.ImagePositionPatient
    (out,) = prepare_sources([header], need_geometry=False)
    assert "PixelData" not in out and out.SOPInstanceUID == header.SOPInstanceUID


def test_prepared_headers_are_reused_but_still_checked(ct: CTSeries) -> None:
    headers = prepare_sources(ct.datasets)
    again = prepare_sources(headers)
    assert all(a is b for a, b in zip(again, headers))  # no second copy
    with pytest.raises(ValueError, match="sorted along the slice normal"):
        prepare_sources([headers[1], headers[0], *headers[2:]])
    assert "PixelData" in ct.datasets[0] and "PixelData" not in headers[0]  # the caller's datasets untouched


# -- a gantry-tilted series with two slice spacings, referenced as acquired -----------------------
@pytest.fixture(scope="module")
def tilted(tilted_series, oracle_segmenter) -> tuple[CTSeries, Prediction]:
    series = read_series(tilted_series.paths)
    return series, oracle_segmenter.predict_series(series)


def _frames(seg: pydicom.Dataset) -> list[tuple[str, pydicom.Dataset]]:
    return [(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID, item)
            for item in seg.PerFrameFunctionalGroupsSequence]


def test_seg_of_a_tilted_series_with_two_spacings(
    tilted, tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    series, prediction = tilted
    seg = build_seg(series.datasets, prediction)
    seg.save_as(tmp_path / "seg.dcm")
    dciodvfy(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")
    pixels = back.get_pixels_by_source_instance(series.sop_instance_uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), prediction.labels == SDH)
    # Each frame lies on its source slice, with that slice's own thickness (4 or 7 mm): the
    # shared functional groups cannot state one thickness for both runs.
    sources = {ds.SOPInstanceUID: ds for ds in series.datasets}
    assert "PixelMeasuresSequence" not in back.SharedFunctionalGroupsSequence[0]
    seen = set()
    for uid, item in _frames(back):
        source = sources[uid]
        assert item.PixelMeasuresSequence[0].SliceThickness == source.SliceThickness
        assert item.PixelMeasuresSequence[0].PixelSpacing == source.PixelSpacing
        assert item.PlanePositionSequence[0].ImagePositionPatient == pytest.approx(
            [float(v) for v in source.ImagePositionPatient])
        seen.add(float(source.SliceThickness))
    assert seen == {4.0, 7.0}
    assert back.get("DimensionOrganizationType") != "3D"  # a sheared, uneven stack is no regular grid


def test_missing_slice_thickness_of_a_two_spacing_series_becomes_each_slab(tilted) -> None:
    series, prediction = tilted
    sources = [copy.deepcopy(ds) for ds in series.datasets]
    for ds in sources:
        del ds.SliceThickness
    seg = build_seg(sources, prediction)
    slab = dict(zip(series.sop_instance_uids, series.slab_mm))
    for uid, item in _frames(seg):
        assert float(item.PixelMeasuresSequence[0].SliceThickness) == pytest.approx(slab[uid], abs=1e-4)


def test_even_series_keeps_one_shared_thickness(seg_file: Path) -> None:
    seg = hd.seg.segread(seg_file)
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == 5.0
    assert all("PixelMeasuresSequence" not in item for item in seg.PerFrameFunctionalGroupsSequence)
