"""DICOM Segmentation (SEG) of the hematoma label volume, plus the source checks all builders share.

One BINARY segment per *present* class; the segment labels are exactly "SDH" and "EDH" and
both are typed SCT "Hemorrhage" with a private type modifier (see :mod:`.codes`).
"""
from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.tag import Tag

from segmenter.findings import CLASS_NAMES, ModelInfo, Prediction
from segmenter.geometry import ORIENTATION_TOLERANCE, positions_along_normal, slice_slabs_mm

from . import codes, uids
from .preview import CLASS_RGB

__all__ = [
    "SEG_SERIES_NUMBER", "algorithm_identification", "build_seg", "check_prediction", "contributing_equipment",
    "prepare_sources",
]  # fmt: skip

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9001
#: Type 2 Patient and General Study attributes that highdicom 0.28 reads unconditionally (it
#: raises AttributeError when one is missing); empty is a valid type-2 value.
_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID",
)  # fmt: skip
#: Character sets highdicom accepts as SpecificCharacterSet of the objects it builds.
_HIGHDICOM_CHARSETS = {v.value for v in hd.enum.SpecificCharacterSetValues}
_PIXEL_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}
#: Datasets returned by prepare_sources, by id while they live: the pipeline prepares once and
#: hands the result to several builders, and a second copy of 40 headers costs ~0.1 s each time.
_COPIES: "weakref.WeakValueDictionary[int, pydicom.Dataset]" = weakref.WeakValueDictionary()


def _header_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    # Builders need headers only; skipping the pixels keeps the copy cheap and lets the
    # status SR work on series whose pixel data is missing or undecodable.
    # Element objects are copied, their values shared unless they are sequences: nothing here
    # changes a value in place (changes are new assignments), and deep-copying every string
    # was most of the cost of preparing a series.
    out = pydicom.Dataset()
    for elem in ds:
        if elem.tag not in _PIXEL_TAGS:
            out.add(copy.deepcopy(elem) if elem.VR == "SQ" else copy.copy(elem))
    if hasattr(ds, "file_meta"):
        out.file_meta = copy.deepcopy(ds.file_meta)
    return out


def prepare_sources(sources: Sequence[pydicom.Dataset], *, need_geometry: bool = True) -> list[pydicom.Dataset]:
    """Check the sorted source CT headers and return normalised header-only copies.

    The caller's datasets are never modified. Datasets this function returned earlier are
    returned as they are (they are already copies), so callers may prepare once and pass the
    result to several builders; treat them as read-only.  Missing type-2 patient/study attributes are
    added empty, a missing or empty SliceThickness becomes the slab the slice stands for along
    the normal (the spacing, in an evenly spaced series), and orientation rounding noise is
    snapped to the first slice's ImageOrientationPatient.  Gantry tilt and uneven spacing are
    kept as they are: the results reference the slices as acquired.

    Parameters
    ----------
    sources:
        Single-frame CT datasets of one series, sorted along the slice normal (either
        direction) in the same order as the label volume.
    need_geometry:
        When false (status SR), only identity attributes are required, so a single header
        without position or orientation is accepted.

    Returns
    -------
    list of pydicom.Dataset
        Copies without pixel data, in the same order.

    Raises
    ------
    TypeError
        When ``sources`` is not a sequence of datasets.
    ValueError
        When sources are empty, mix series, lack UIDs or geometry, are not sorted, repeat a
        position, or differ in orientation by more than rounding noise.
    """
    if isinstance(sources, (pydicom.Dataset, str, bytes)) or not isinstance(sources, Sequence):
        raise TypeError(f"sources must be a sequence of pydicom Datasets; got {type(sources).__name__}")
    if len(sources) == 0:
        raise ValueError("sources must contain at least one dataset; got 0")
    for i, ds in enumerate(sources):
        if not isinstance(ds, pydicom.Dataset):
            raise TypeError(f"sources[{i}] must be a pydicom Dataset; got {type(ds).__name__}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not ds.get(keyword):
                raise ValueError(f"sources[{i}] must have {keyword}; got none")
    series = {str(ds.SeriesInstanceUID) for ds in sources}
    if len(series) != 1:
        raise ValueError(f"sources must come from one series; got {len(series)} Series Instance UIDs")
    if all(_COPIES.get(id(ds)) is ds for ds in sources):
        out = list(sources)
        if need_geometry:
            _normalise_geometry(out)  # no copy, but the order and orientation checks still apply
        return out
    out = [_header_copy(ds) for ds in sources]
    for ds in out:
        _normalise_character_set(ds)
        for keyword in _TYPE2_KEYWORDS:
            if keyword not in ds:
                setattr(ds, keyword, None)
    if need_geometry:
        _normalise_geometry(out)
    for ds in out:
        _COPIES[id(ds)] = ds
    return out


def _normalise_character_set(ds: pydicom.Dataset) -> None:
    # Japanese and Korean scanners send "\\ISO 2022 IR 87": an empty first value, which PS3.3
    # C.12.1.1.2 defines as the default repertoire with code extensions, "ISO 2022 IR 6".
    # highdicom accepts only the defined term, and copies the source's value into every result.
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return
    values = [value] if isinstance(value, str) else list(value)
    if len(values) > 1 and not values[0].strip():
        values[0] = "ISO 2022 IR 6"
    values = [v.strip() for v in values if v.strip()]
    if not values:
        del ds.SpecificCharacterSet
    elif not set(values) <= _HIGHDICOM_CHARSETS:
        # A term highdicom does not list (Korean "ISO 2022 IR 149", for one): the text is
        # decoded with the source's own character set, and the results are written in UTF-8.
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
    else:
        ds.SpecificCharacterSet = values[0] if len(values) == 1 else values


def _normalise_geometry(datasets: list[pydicom.Dataset]) -> None:
    for i, ds in enumerate(datasets):
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
            if ds.get(keyword) in (None, ""):
                raise ValueError(f"sources[{i}] must have {keyword}; got none")
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    deviation = np.abs(iops - iops[0]).max(axis=1)
    worst = int(np.argmax(deviation))
    # The node accepts a series whose slices differ by up to ORIENTATION_TOLERANCE (rounding
    # noise); highdicom refuses any difference at all, so snap within the same tolerance.
    if deviation[worst] > ORIENTATION_TOLERANCE:
        raise ValueError(
            f"sources must share one ImageOrientationPatient (within {ORIENTATION_TOLERANCE}); "
            f"got slice {worst} off by {deviation[worst]:.2g}"
        )
    for ds in datasets[1:]:
        ds.ImageOrientationPatient = copy.deepcopy(datasets[0].ImageOrientationPatient)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    along = positions_along_normal(positions, iops[0])
    direction = np.sign(along[-1] - along[0]) or 1.0
    bad = np.flatnonzero(np.diff(along) * direction <= 0)
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            "sources must be sorted along the slice normal without repeated positions "
            f"(same order as the label volume); got slices {k} and {k + 1} at "
            f"{along[k]:.2f} and {along[k + 1]:.2f} mm"
        )
    if len(datasets) > 1:
        slabs = slice_slabs_mm(positions, iops[0])
        for ds, slab in zip(datasets, slabs):
            if ds.get("SliceThickness") in (None, ""):
                ds.SliceThickness = round(float(slab), 4)


def _per_frame_thickness(seg: hd.seg.Segmentation, headers: Sequence[pydicom.Dataset]) -> None:
    """Move Pixel Measures to each frame when the source slices differ in SliceThickness.

    highdicom copies the first source's SliceThickness into the shared functional groups; in a
    series with two slice thicknesses (thin through the posterior fossa, thicker above) that
    would misstate every frame of the other run.
    """
    thickness = {str(h.SOPInstanceUID): h.SliceThickness for h in headers}
    if len({round(float(v), 4) for v in thickness.values()}) < 2:
        return
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    del shared.PixelMeasuresSequence
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame = copy.deepcopy(measures)
        frame.SliceThickness = thickness[str(source)]
        item.PixelMeasuresSequence = [frame]


def check_prediction(prediction: Prediction, sources: Sequence[pydicom.Dataset]) -> None:
    """Check that ``prediction`` fits ``sources`` and states both SDH and EDH.

    Parameters
    ----------
    prediction:
        The segmenter's result.
    sources:
        The prepared source headers (see :func:`prepare_sources`), in label-volume order.

    Raises
    ------
    TypeError
        When ``prediction`` or its label volume has the wrong type.
    ValueError
        When the label volume's shape or values do not fit, a finding is missing or
        inconsistent, or a present finding has no voxels.
    """
    if not isinstance(prediction, Prediction):
        raise TypeError(f"prediction must be a segmenter.findings.Prediction; got {type(prediction).__name__}")
    labels = prediction.labels
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"prediction.labels must be an integer numpy array; got {type(labels).__name__}")
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != expected:
        raise ValueError(f"prediction.labels must have shape (slices, rows, cols) = {expected}; got {labels.shape}")
    allowed = {0, *CLASS_NAMES}
    # min/max first: np.unique over 10 M voxels (40 x 512 x 512) costs ~50x more, and this runs
    # once per result object on the path to the PACS
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > max(allowed)):
        found = {int(v) for v in np.unique(labels)}
        raise ValueError(f"prediction.labels values must be in {sorted(allowed)}; got {sorted(found)}")
    for label, name in CLASS_NAMES.items():
        finding = prediction.findings.get(name)
        if finding is None:
            raise ValueError(
                f"prediction.findings must state {name} (present or absent); got {sorted(prediction.findings)}"
            )
        if finding.name != name or finding.label != label:
            raise ValueError(
                f"prediction.findings[{name!r}] must have name {name} and label {label}; "
                f"got {finding.name}, {finding.label}"
            )
        if finding.present and not np.count_nonzero(labels == label):
            raise ValueError(f"prediction.labels must contain voxels of present finding {name}; got none")


def contributing_equipment(model: ModelInfo) -> list[hd.ContributingEquipment]:
    """Contributing Equipment Sequence item naming the algorithm (IHE AI Results).

    Parameters
    ----------
    model:
        The algorithm's identity.

    Returns
    -------
    list of highdicom.ContributingEquipment
        One item: manufacturer, model name, software version, Device UID, purpose
        DCM 109102 "Processing Equipment".

    Notes
    -----
    Device UID (0018,1002) is added by hand because highdicom has no argument for it; it
    comes from the weights' hash, so it changes whenever the model is retrained.
    """
    item = hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.weights_sha256[:16],
        contribution_description="Automatic segmentation of subdural and epidural hematoma",
    )
    item.DeviceUID = model.device_uid
    return [item]


def algorithm_identification(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence of a segment: name, version, family DCM 123110.

    Parameters
    ----------
    model:
        The algorithm's identity.

    Returns
    -------
    highdicom.AlgorithmIdentificationSequence
    """
    return hd.AlgorithmIdentificationSequence(name=model.name, family=codes.ALGORITHM_FAMILY, version=model.version)


def build_seg(
    sources: Sequence[pydicom.Dataset],
    prediction: Prediction,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    manufacturer: str | None = None,
) -> hd.seg.Segmentation | None:
    """Build a BINARY SEG with one segment per present hematoma class.

    Parameters
    ----------
    sources:
        Source CT datasets sorted along the slice normal, in label-volume order.
    prediction:
        Label volume and findings.  Voxels of a class whose finding is not present are left
        out, so the SEG always agrees with the SR.
    series_number:
        Series Number of the SEG series.
    manufacturer:
        Manufacturer of the SEG; defaults to ``prediction.model.manufacturer``.

    Returns
    -------
    highdicom.seg.Segmentation or None
        ``None`` when no class is present: a negative series gets no SEG.

    Raises
    ------
    TypeError, ValueError
        See :func:`prepare_sources` and :func:`check_prediction`.
    """
    headers = prepare_sources(sources)
    check_prediction(prediction, headers)
    present = [f for f in sorted(prediction.findings.values(), key=lambda f: f.label) if f.present]
    if not present:
        return None
    model = prediction.model
    series_uid = str(headers[0].SeriesInstanceUID)
    source = uids.source_key(series_uid, [str(h.SOPInstanceUID) for h in headers])
    mask = np.zeros(prediction.labels.shape, dtype=np.uint8)
    descriptions = []
    for number, finding in enumerate(present, start=1):
        mask[prediction.labels == finding.label] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=finding.name,
                segmented_property_category=codes.SEGMENT_CATEGORY,
                segmented_property_type=codes.SEGMENT_TYPE,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification(model),
                tracking_uid=uids.tracking_uid(source, model.version, finding.name),
                tracking_id=finding.name,
                anatomic_regions=[codes.ANATOMIC_REGION],
                display_color=hd.color.CIELabColor.from_rgb(*CLASS_RGB[finding.name]),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.result_series_uid(source, model.version, "SEG"),
        series_number=series_number,
        sop_instance_uid=uids.result_uid(source, model.version, "SEG"),
        instance_number=1,
        manufacturer=manufacturer or model.manufacturer,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.weights_sha256[:16],
        content_label="HEMATOMA",
        content_description="AI segmentation of SDH and EDH, not for diagnosis",
        omit_empty_frames=True,
        contributing_equipment=contributing_equipment(model),
        series_description="AI SDH/EDH segmentation (research)",
        coding_schemes=codes.coding_scheme_identification(),
    )
    for item, finding in zip(seg.SegmentSequence, present):
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.HEMATOMA_TYPE[finding.name])
        ]
    _per_frame_thickness(seg, headers)
    logger.debug("built SEG with %d segment(s), %d frame(s)", len(present), int(seg.NumberOfFrames))
    return seg
