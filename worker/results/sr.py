"""TID 1500 Measurement Report (Comprehensive 3D SR) for the hematoma findings, and the status SR.

Content tree of :func:`build_sr` (PS3.16 TID 1500)::

    Imaging Measurement Report
      observer: device (model name, Device UID)     procedure reported: LN 24725-4 CT Head
      Image Library: one group, shared CT geometry once, every source slice (image_library)
      Imaging Measurements
        Measurement Group (TID 1501) "Summary"
          SDH (99DURAL) = Present | Absent          (always, for both classes)
          EDH (99DURAL) = Present | Absent
          AI triage category (99DURAL) = critical | positive | negative  (dicom_node.triage)
          Comment (text), only when post-processing excluded a component by rule
        Measurement Group (TID 1411) "SDH" / "EDH", one per present class
          Finding Category / Finding: Morphologically Abnormal Structure / Hemorrhage
          Referenced Segment -> the SEG segment (same Tracking UID as the segment)
          Volume (mL), Width with derivation Maximum (mm), Laterality, SDH|EDH = Present

:func:`build_status_sr` writes the same frame with one group stating "not analysed" or
"analysis failed" and the reason as text, and no presence claim at all.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom

from dicom_node.triage import EDH_CRITICAL_VOLUME_ML, SDH_CRITICAL_THICKNESS_MM, triage_category
from segmenter.findings import CLASS_NAMES, Finding, ModelInfo, Prediction

from . import codes, uids
from .image_library import add_image_library
from .seg import check_prediction, contributing_equipment, prepare_sources

__all__ = ["SR_SERIES_NUMBER", "STATUS_SR_SERIES_NUMBER", "build_sr", "build_status_sr", "excluded_comment"]

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9002
STATUS_SR_SERIES_NUMBER = 9005
STATUS_STATES = ("not_analysed", "failed")


def excluded_comment(excluded: Sequence[Mapping[str, object]]) -> str | None:
    """Reader-facing text for the components the decision rule removed, or None when none were.

    Such a component is something hyperdense that the network saw but the rules say is not a
    dural bleed (an EDH-labelled blob away from the skull is most likely intraparenchymal); the
    report says so rather than let the summary read as a plain negative.
    """
    if not excluded:
        return None
    parts = [f"{e['label']}-like region of {float(e['volume_ml']):.1f} mL ({e['reason']})" for e in excluded]
    return ("Not reported as SDH/EDH, excluded by rule: " + "; ".join(parts)
            + ". It may be an intraparenchymal bleed; review the images.")


def _observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid, name=model.name, manufacturer_name=model.manufacturer, model_name=model.name
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(pydicom.sr.codedict.codes.DCM.Device),
            observer_identifying_attributes=device,
        )
    )


def _segment_numbers(seg: hd.seg.Segmentation, series_uid: str) -> dict[str, int]:
    if not isinstance(seg, hd.seg.Segmentation):
        raise TypeError(f"seg must be a highdicom Segmentation; got {type(seg).__name__}")
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if referenced != {series_uid}:
        raise ValueError("seg must reference the source series; got a SEG of another series")
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}


def _volumetric_group(
    finding: Finding, segment_number: int, seg: hd.seg.Segmentation, series_uid: str, model: ModelInfo,
    source: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    # Built by hand: highdicom 0.28.2's ReferencedSegment.from_segmentation crashes on
    # single-segment BINARY SEGs and on every LABELMAP SEG.
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
    )
    evaluations = [hd.sr.QualitativeEvaluation(codes.HEMATOMA_TYPE[finding.name], codes.PRESENT)]
    if finding.laterality is not None:
        if finding.laterality not in codes.LATERALITY_VALUES:
            raise ValueError(
                f"prediction.findings[{finding.name!r}].laterality must be one of "
                f"{sorted(codes.LATERALITY_VALUES)} or None; got {finding.laterality!r}"
            )
        evaluations.append(hd.sr.QualitativeEvaluation(codes.LATERALITY, codes.LATERALITY_VALUES[finding.laterality]))
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(source, model.version, finding.name), identifier=finding.name
        ),
        referenced_segment=segment,
        finding_category=codes.FINDING_CATEGORY,
        finding_type=codes.FINDING_TYPE,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.VOLUME, value=round(float(finding.volume_ml), 3), unit=codes.UNIT_ML,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.THICKNESS, value=round(float(finding.max_thickness_mm), 2),
                              unit=codes.UNIT_MM, derivation=codes.DERIVATION_MAXIMUM, algorithm_id=algorithm),
        ],
        qualitative_evaluations=evaluations,
    )


def _summary_group(
    source: str, model: ModelInfo, evaluations: list[hd.sr.QualitativeEvaluation], identifier: str,
    comment: str | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group of qualitative evaluations, plus a free-text Comment when given."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(source, model.version, identifier), identifier=identifier
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(name=model.name, version=model.version),
        qualitative_evaluations=evaluations,
    )
    if comment is not None:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=codes.REASON, value=comment, relationship_type="CONTAINS")
        )
    return group


def _document(
    evidence: list[pydicom.Dataset], report: hd.sr.MeasurementReport, source: str, model: ModelInfo,
    object_type: str, series_number: int, description: str,
) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.result_series_uid(source, model.version, object_type),
        series_number=series_number,
        sop_instance_uid=uids.result_uid(source, model.version, object_type),
        instance_number=1,
        manufacturer=model.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: nobody has confirmed an AI result
        contributing_equipment=contributing_equipment(model),
        series_description=description,
        coding_schemes=codes.coding_scheme_identification(),
    )


def build_sr(
    sources: Sequence[pydicom.Dataset],
    prediction: Prediction,
    seg: hd.seg.Segmentation | None,
    *,
    state: str = "done",
    series_number: int = SR_SERIES_NUMBER,
    sdh_thickness_mm: float = SDH_CRITICAL_THICKNESS_MM,
    edh_volume_ml: float = EDH_CRITICAL_VOLUME_ML,
    caveat: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of an analysed series.

    Parameters
    ----------
    sources:
        Source CT datasets sorted along the slice normal, in label-volume order.
    prediction:
        Findings for both SDH and EDH (present or absent) and the model identity.
    seg:
        The SEG from :func:`.seg.build_seg` for the same prediction, or ``None`` when nothing
        is present (a negative series has no SEG).
    state:
        Must be ``"done"``; a series without a result gets :func:`build_status_sr`.
    series_number:
        Series Number of the SR series.
    sdh_thickness_mm, edh_volume_ml:
        Critical thresholds of the triage category (``triage.critical`` in the config).
    caveat:
        What the reader must know about the series itself (its transfer was interrupted): put
        first in the summary's comment, so that a negative result does not read as a plain one.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY, CompletionFlag COMPLETE.

    Raises
    ------
    TypeError, ValueError
        On bad sources or prediction (see :func:`.seg.prepare_sources`), when ``seg`` is
        missing for a positive series, given for a negative one, or lacks a present class.
    """
    if state != "done":
        raise ValueError(f"state must be 'done' (use build_status_sr for {STATUS_STATES}); got {state!r}")
    headers = prepare_sources(sources)
    check_prediction(prediction, headers)
    model, findings = prediction.model, prediction.findings
    series_uid = str(headers[0].SeriesInstanceUID)
    present = [findings[name] for name in CLASS_NAMES.values() if findings[name].present]
    if present and seg is None:
        raise ValueError(
            f"seg must be given when a finding is present; got None with {[f.name for f in present]} present"
        )
    if not present and seg is not None:
        raise ValueError("seg must be None for a negative series; got a Segmentation")
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]
    groups = []
    evaluations = [
        hd.sr.QualitativeEvaluation(
            codes.HEMATOMA_TYPE[name], codes.PRESENT if findings[name].present else codes.ABSENT
        )
        for name in CLASS_NAMES.values()
    ]
    category = triage_category(findings, sdh_thickness_mm=sdh_thickness_mm, edh_volume_ml=edh_volume_ml)
    evaluations.append(hd.sr.QualitativeEvaluation(codes.TRIAGE_CATEGORY, codes.TRIAGE_VALUES[category]))
    source = uids.source_key(series_uid, [str(h.SOPInstanceUID) for h in headers])
    comment = " ".join(c for c in (caveat, excluded_comment(prediction.excluded)) if c) or None
    groups.append(_summary_group(source, model, evaluations, "Summary", comment))
    evidence = list(headers)
    if seg is not None:
        numbers = _segment_numbers(seg, series_uid)
        if set(numbers) != {f.name for f in present}:
            raise ValueError(
                f"seg must have one segment per present finding {[f.name for f in present]}; got {sorted(numbers)}"
            )
        for finding in present:
            groups.append(_volumetric_group(finding, numbers[finding.name], seg, series_uid, model, source))
        evidence.append(seg)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=codes.PROCEDURE_CT_HEAD,
        imaging_measurements=groups,
    )
    add_image_library(report, headers)
    logger.debug("built SR: triage %s, %d measurement group(s)", category, len(groups))
    return _document(evidence, report, source, model, "SR", series_number, "AI SDH/EDH report (research)")


def build_status_sr(
    sources: Sequence[pydicom.Dataset],
    *,
    state: str,
    reason: str,
    model: ModelInfo,
    series_number: int = STATUS_SR_SERIES_NUMBER,
) -> hd.sr.Comprehensive3DSR:
    """Build an SR saying a series was not analysed, or that its analysis failed, and why.

    It makes no presence or absence claim, so nobody can read the silence as "negative".
    Only the CT headers are used: pixel data may be missing or broken, and one header is enough.

    Parameters
    ----------
    sources:
        Any non-empty set of the series' datasets (order irrelevant).
    state:
        ``"not_analysed"`` or ``"failed"``.
    reason:
        Plain-text reason shown to the reader.  It is stored in the object, so it must hold
        no patient information (say "gap: 1 slice(s) missing", not a file path with a name).
    model:
        The algorithm that would have analysed the series.
    series_number:
        Series Number of the status SR series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    TypeError, ValueError
        When ``state``, ``reason`` or ``model`` is invalid, or the headers lack UIDs.
    """
    if state not in STATUS_STATES:
        raise ValueError(f"state must be one of {STATUS_STATES}; got {state!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"reason must be a non-empty string; got {reason!r}")
    if not isinstance(model, ModelInfo):
        raise TypeError(f"model must be a segmenter.findings.ModelInfo; got {type(model).__name__}")
    headers = prepare_sources(sources, need_geometry=False)
    series_uid = str(headers[0].SeriesInstanceUID)
    source = uids.source_key(series_uid, [str(h.SOPInstanceUID) for h in headers])
    group = _summary_group(
        source, model,
        [hd.sr.QualitativeEvaluation(codes.ANALYSIS_STATUS, codes.ANALYSIS_STATUS_VALUES[state])],
        "Analysis status", comment=reason.strip(),
    )  # fmt: skip
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=codes.PROCEDURE_CT_HEAD,
        imaging_measurements=[group],
    )
    object_type = f"SR_{state.upper()}"
    title = "AI SDH/EDH: NOT ANALYSED" if state == "not_analysed" else "AI SDH/EDH: ANALYSIS FAILED"
    return _document(list(headers), report, source, model, object_type, series_number, title)
