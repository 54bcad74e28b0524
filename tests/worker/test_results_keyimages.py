"""Key images (worker.results.keyimages) and cross-object consistency of all result objects."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from segmenter.dicom_io import CTSeries
from segmenter.findings import EDH, Prediction
from worker.results.keyimages import build_key_images, patient_orientation
from worker.results.preview import CLASS_RGB
from worker.results.seg import build_seg
from worker.results.sr import build_sr, build_status_sr


@pytest.fixture(scope="module")
def key_images(ct: CTSeries, make_prediction: Callable[..., Prediction]):
    result = build_key_images(ct.datasets, make_prediction())
    assert result is not None
    return result


def test_one_sc_per_slice_with_a_bleed(key_images, make_prediction: Callable[..., Prediction]) -> None:
    images, _ = key_images
    labels = make_prediction().labels
    assert len(images) == int(np.any(labels > 0, axis=(1, 2)).sum())
    assert [int(sc.InstanceNumber) for sc in images] == list(range(1, len(images) + 1))
    assert len({sc.SeriesInstanceUID for sc in images}) == 1


def test_sc_pixels_and_header(key_images, ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    images, _ = key_images
    labels = make_prediction().labels
    first_slice = int(np.flatnonzero(np.any(labels > 0, axis=(1, 2)))[0])
    for sc in images:
        assert (sc.BurnedInAnnotation, sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("YES", "RGB", 3)
        assert sc.StudyInstanceUID == ct.study_instance_uid and sc.SeriesInstanceUID != ct.series_instance_uid
        assert "NOT FOR DIAGNOSIS" in sc.ImageComments
    pixels = images[0].pixel_array
    assert pixels.shape[:2] == (256, 256)  # 64x64 upscaled for legible text
    assert images[0].SourceImageSequence[0].ReferencedSOPInstanceUID == ct.sop_instance_uids[first_slice]
    # The outline pixels carry the exact class colour; the SDH colour is present, the EDH not
    # on a slice without EDH.
    colours = {tuple(int(v) for v in px) for px in pixels.reshape(-1, 3)}
    assert CLASS_RGB["SDH"] in colours and CLASS_RGB["EDH"] not in colours
    assert not np.any(labels[first_slice] == EDH)


def test_sc_and_kos_pass_dciodvfy(key_images, tmp_path: Path, dciodvfy: Callable[[Path], list[str]]) -> None:
    images, kos = key_images
    images[0].save_as(tmp_path / "sc.dcm")
    kos.save_as(tmp_path / "ko.dcm")
    dciodvfy(tmp_path / "sc.dcm")
    dciodvfy(tmp_path / "ko.dcm")


def test_kos_references_the_key_images(key_images, ct: CTSeries) -> None:
    images, kos = key_images
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    sc_uids = {sc.SOPInstanceUID for sc in images}
    assert sc_uids <= referenced and referenced - sc_uids <= set(ct.sop_instance_uids)
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert referenced <= evidence


def test_key_images_are_deterministic(key_images, ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    images, kos = key_images
    again, kos_again = build_key_images(ct.datasets, make_prediction())
    assert [sc.SOPInstanceUID for sc in again] == [sc.SOPInstanceUID for sc in images]
    assert (kos_again.SeriesInstanceUID, kos_again.SOPInstanceUID) == (kos.SeriesInstanceUID, kos.SOPInstanceUID)


def test_max_images_keeps_the_largest_slices(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    prediction = make_prediction()
    images, kos = build_key_images(ct.datasets, prediction, max_images=2, include_source_slices=False)
    area = np.sum(prediction.labels > 0, axis=(1, 2))
    chosen = [ct.sop_instance_uids.index(sc.SourceImageSequence[0].ReferencedSOPInstanceUID) for sc in images]
    assert len(images) == 2 and chosen == sorted(chosen)
    assert min(area[chosen]) == max(np.delete(area, chosen))
    assert len([i for i in kos.ContentSequence if i.ValueType == "IMAGE"]) == 2


def test_negative_series_has_no_key_images(ct: CTSeries, make_prediction: Callable[..., Prediction]) -> None:
    assert build_key_images(ct.datasets, make_prediction(sdh=False, edh=False)) is None


@pytest.mark.parametrize("max_images", [0, -1, 2.0, True])
def test_ill_max_images(ct: CTSeries, make_prediction: Callable[..., Prediction], max_images) -> None:
    with pytest.raises(ValueError, match="max_images must be None or an int >= 1"):
        build_key_images(ct.datasets, make_prediction(), max_images=max_images)


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), ("L", "P")),
        ((-1, 0, 0, 0, -1, 0), ("R", "A")),
        ((0, 1, 0, 0, 0, -1), ("P", "F")),
        ((0.99, 0.14, 0, -0.14, 0.99, 0), ("L", "P")),
    ],
)
def test_patient_orientation(iop, expected) -> None:
    assert patient_orientation(iop) == expected


def test_all_objects_are_consistent_with_the_ct(
    ct_dir: Path, ct: CTSeries, make_prediction: Callable[..., Prediction], model, key_images, tmp_path: Path,
    dcentvfy: Callable[[list[Path]], None],
) -> None:
    prediction = make_prediction()
    seg = build_seg(ct.datasets, prediction)
    images, kos = key_images
    objects = [seg, build_sr(ct.datasets, prediction, seg), *images, kos]
    objects.append(build_status_sr(ct.datasets[:1], state="failed", reason="timeout", model=model))
    paths = sorted(ct_dir.glob("*.dcm"))
    for index, obj in enumerate(objects):
        paths.append(tmp_path / f"result{index}.dcm")
        obj.save_as(paths[-1])
    dcentvfy(paths)
    study = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in paths}
    assert study == {ct.study_instance_uid}
    series_of_results = {obj.SeriesInstanceUID for obj in objects}
    assert ct.series_instance_uid not in series_of_results and len(series_of_results) == 5
