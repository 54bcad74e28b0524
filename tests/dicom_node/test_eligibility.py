"""Eligibility checks: a table of series that must pass or fail with a named reason."""
from __future__ import annotations

import dataclasses
import math

import pytest

from dicom_node.config import SeriesConfig, TextRules
from dicom_node.contract import CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE
from dicom_node.eligibility import (
    OWN_MANUFACTURER,
    SeriesKind,
    classify,
    contiguity,
    evaluate,
)
from dicom_node.headers import HeaderSummary

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMP3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
MR = "1.2.840.10008.5.1.4.1.1.4"


def ct_series(n: int = 12, spacing: float = 5.0, iop=(1, 0, 0, 0, 1, 0), **changes) -> list[HeaderSummary]:
    row, col = iop[:3], iop[3:]
    normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    out = []
    for k in range(n):
        h = HeaderSummary(
            sop_uid=f"1.2.3.{k}", sop_class_uid=CT_IMAGE_STORAGE, modality="CT", rows=64, cols=64,
            pixel_spacing=(0.5, 0.5), iop=tuple(float(v) for v in iop),
            ipp=tuple(-100.0 + k * spacing * c for c in normal), has_pixel_data=True,
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"), series_description="HEAD 5mm",
            study_description="CT HEAD WO", body_part="HEAD", manufacturer="ACME")
        out.append(dataclasses.replace(h, **changes))
    return out


def with_slice(series: list[HeaderSummary], index: int, **changes) -> list[HeaderSummary]:
    series = list(series)
    series[index] = dataclasses.replace(series[index], **changes)
    return series


CFG = SeriesConfig()
TILT_20 = (1, 0, 0, 0, math.cos(math.radians(20)), math.sin(math.radians(20)))


def sheared(series, tilt_deg: float = 11.3):
    """Each slice shifted along the column direction, as an uncorrected gantry tilt stacks them."""
    shift = math.tan(math.radians(tilt_deg)) * 5.0
    return [dataclasses.replace(h, ipp=(h.ipp[0], h.ipp[1] + k * shift, h.ipp[2])) for k, h in enumerate(series)]


def two_runs(n_thin: int = 14, n_thick: int = 14, tilt_deg: float = 18.5, thickness: bool = True):
    """4 mm slices through the posterior fossa, then 7 mm ones overlapping where they meet, on a
    plane tilted by ``tilt_deg`` and stacked along the patient z axis (a GE head protocol)."""
    iop = (1, 0, 0, 0, math.cos(math.radians(tilt_deg)), -math.sin(math.radians(tilt_deg)))
    along = [4.0 * k for k in range(n_thin)] + [4.0 * n_thin - 2.9 + 7.0 * k for k in range(n_thick)]
    cos = math.cos(math.radians(tilt_deg))
    return [dataclasses.replace(h, ipp=(-125.0, -123.5, 5.8 + a / cos),
                                slice_thickness_mm=(4.0 if k < n_thin else 7.0) if thickness else None)
            for k, (h, a) in enumerate(zip(ct_series(n=n_thin + n_thick, iop=iop), along))]


def gap(series):
    return [h for k, h in enumerate(series) if k != 5]


GOOD = [
    ("plain axial", ct_series()),
    ("tilted plane, stacked along its normal", ct_series(iop=TILT_20)),
    ("GantryDetectorTilt recorded but positions regular", ct_series(gantry_tilt_deg=12.0)),
    ("exactly min_slices", ct_series(n=CFG.min_slices)),
    ("spacing rounding noise", with_slice(ct_series(), 3, pixel_spacing=(0.5000004, 0.5))),
    ("encapsulated thin slices", ct_series(n=40, spacing=0.625)),
    ("sheared stack (uncorrected gantry tilt)", sheared(ct_series())),
    ("sheared 30 degrees", sheared(ct_series(), 30.0)),
    ("two spacings on a tilted plane (GE head)", two_runs()),
    ("two spacings, SliceThickness missing", two_runs(thickness=False)),
]


@pytest.mark.parametrize("name,series", GOOD, ids=[g[0] for g in GOOD])
def test_eligible(name, series):
    verdict = evaluate(series, CFG)
    assert verdict.reason is None and verdict.eligible
    assert verdict.kind is SeriesKind.CT_IMAGE and not verdict.status_report


ILL = [
    # (name, series, config, expected substring, kind)
    ("empty", [], CFG, "no instances", SeriesKind.OTHER),
    ("unreadable instance", with_slice(ct_series(), 2, error="unreadable DICOM file: InvalidDicomError: x",
                                       modality=None), CFG, "1 of 12 instance(s) unreadable", SeriesKind.CT_IMAGE),
    ("MR", ct_series(modality="MR", sop_class_uid=MR), CFG, "modality must be CT; got MR", SeriesKind.OTHER),
    ("mixed modality", with_slice(ct_series(), 0, modality="PT"), CFG, "modality must be CT; got CT, PT",
     SeriesKind.CT_IMAGE),  # CT images with a stray object still get a status SR
    ("CT images and a stray SR", ct_series()[:11] + ct_series(n=1, sop_class_uid=COMP3D_SR, modality="SR"), CFG,
     "modality must be CT; got CT, SR", SeriesKind.CT_IMAGE),
    ("CT-labelled SC", ct_series(n=3, sop_class_uid=SC), CFG, "not a CT image object", SeriesKind.OTHER),
    ("foreign SEG", ct_series(n=1, sop_class_uid=SEG, modality="SEG"), CFG, "modality must be CT", SeriesKind.OTHER),
    ("our SEG", ct_series(n=1, sop_class_uid=SEG, modality="SEG", manufacturer=OWN_MANUFACTURER), CFG,
     "written by this node", SeriesKind.OWN_RESULT),
    ("our SR", ct_series(n=1, sop_class_uid=COMP3D_SR, modality="SR", manufacturer="Dural-Node Project"), CFG,
     "written by this node", SeriesKind.OWN_RESULT),
    ("our KOS", ct_series(n=1, sop_class_uid=KOS, modality="KO", manufacturer=OWN_MANUFACTURER), CFG,
     "written by this node", SeriesKind.OWN_RESULT),
    ("our SC labelled CT", ct_series(n=4, sop_class_uid=SC, manufacturer=OWN_MANUFACTURER), CFG,
     "written by this node", SeriesKind.OWN_RESULT),
    ("enhanced CT", ct_series(n=1, sop_class_uid=ENHANCED_CT_IMAGE_STORAGE, frames=40), CFG,
     "multi-frame (Enhanced) CT is not supported", SeriesKind.CT_IMAGE),
    ("no pixel data", with_slice(ct_series(), 4, has_pixel_data=False), CFG, "1 instance(s) without pixel data",
     SeriesKind.CT_IMAGE),
    ("localizer", ct_series(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), CFG, "LOCALIZER", SeriesKind.CT_IMAGE),
    ("scout by default exclude", ct_series(series_description="Topogram 0.6 T20s"), CFG,
     "excluded by series.exclude.series_description[0]", SeriesKind.CT_IMAGE),
    ("include body part", ct_series(body_part="CHEST"),
     SeriesConfig(include=TextRules(body_part_examined=["head|brain"])),
     "BodyPartExamined matches none of series.include.body_part_examined", SeriesKind.CT_IMAGE),
    ("exclude study", ct_series(),
     SeriesConfig(exclude=TextRules(study_description=["^ct head"])),
     "excluded by series.exclude.study_description[0] '^ct head' (StudyDescription)", SeriesKind.CT_IMAGE),
    ("too few slices", ct_series(n=5), CFG, "too few slices: 5 (series.min_slices is 10)", SeriesKind.CT_IMAGE),
    ("rows differ", with_slice(ct_series(), 1, rows=128), CFG, "inconsistent or missing Rows/Columns",
     SeriesKind.CT_IMAGE),
    ("spacing differs", with_slice(ct_series(), 1, pixel_spacing=(0.6, 0.6)), CFG, "inconsistent PixelSpacing",
     SeriesKind.CT_IMAGE),
    ("spacing missing", with_slice(ct_series(), 1, pixel_spacing=None), CFG, "PixelSpacing missing",
     SeriesKind.CT_IMAGE),
    ("position missing", with_slice(ct_series(), 1, ipp=None), CFG, "ImagePositionPatient missing",
     SeriesKind.CT_IMAGE),
    ("orientation differs", with_slice(ct_series(), 1, iop=TILT_20), CFG, "inconsistent orientation",
     SeriesKind.CT_IMAGE),
    ("sagittal", ct_series(iop=(0, 1, 0, 0, 0, -1)), CFG, "not axial", SeriesKind.CT_IMAGE),
    ("coronal", ct_series(iop=(1, 0, 0, 0, 0, -1)), CFG, "not axial", SeriesKind.CT_IMAGE),
    ("40 degrees beyond max_axial_angle_deg", ct_series(iop=(1, 0, 0, 0, math.cos(0.70), math.sin(0.70))), CFG,
     "not axial", SeriesKind.CT_IMAGE),
    ("sheared beyond any gantry tilt", sheared(ct_series(), 60.0), CFG, "beyond any gantry tilt",
     SeriesKind.CT_IMAGE),
    ("gap", gap(ct_series(n=14)), CFG, "gap: 1 slice(s) missing", SeriesKind.CT_IMAGE),
    ("gap in a tilted two-spacing series", gap(two_runs()), CFG, "gap: 1 slice(s) missing", SeriesKind.CT_IMAGE),
    ("slices thinner than half their spacing", ct_series(spacing=10.0, slice_thickness_mm=5.0), CFG,
     "gap: slices 5.00 mm thick are 10.00 mm apart", SeriesKind.CT_IMAGE),
    ("duplicate position", with_slice(ct_series(), 1, ipp=ct_series()[0].ipp), CFG, "duplicate slice positions",
     SeriesKind.CT_IMAGE),
    ("invalid IOP", ct_series(iop=(1, 0, 0, 1, 0, 0)), CFG, "orthogonal", SeriesKind.CT_IMAGE),
]


@pytest.mark.parametrize("name,series,cfg,expected,kind", ILL, ids=[i[0] for i in ILL])
def test_not_eligible(name, series, cfg, expected, kind):
    verdict = evaluate(series, cfg)
    assert verdict.reason is not None and expected in verdict.reason, verdict.reason
    assert verdict.kind is kind
    # Only CT images get a "not analysed" status SR; our own results and other objects would loop.
    assert verdict.status_report == (kind is SeriesKind.CT_IMAGE)


def test_reason_never_contains_description_text():
    series = ct_series(series_description="Scout for Doe^Jane")
    reason = evaluate(series, CFG).reason
    assert reason and "Doe" not in reason and "Scout" not in reason


def test_synthetic_manufacturer_is_not_ours():
    # segmenter.dicom_writer writes "dural-node synthetic": test CTs must not be taken for results.
    assert classify(ct_series(manufacturer="dural-node synthetic")) is SeriesKind.CT_IMAGE


@pytest.mark.parametrize("series,ok", [
    (ct_series(n=2), True),
    (gap(ct_series()), False),
    (two_runs(), True),  # two spacings are contiguous: complete without waiting for the quiet timer
    (gap(two_runs()), False),
    (ct_series(n=1), False),
    (with_slice(ct_series(), 0, iop=None), False),
])
def test_contiguity(series, ok):
    assert (contiguity(series, 0.1) is None) is ok


def test_own_manufacturer_matches_result_builders():
    from segmenter.findings import ModelInfo

    default = next(f for f in dataclasses.fields(ModelInfo) if f.name == "manufacturer").default
    assert default.lower() == OWN_MANUFACTURER
