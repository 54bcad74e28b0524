"""Key images: Secondary Captures with the mask burned in, and a Key Object Selection document.

Every PACS viewer can show a Secondary Capture, including those that cannot display a SEG,
so a reader sees the result without any AI plug-in.  highdicom has no overlay-plane API, so
the mask is burned into RGB pixels, and the images say in their pixels that they are an AI
result (BurnedInAnnotation YES).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from segmenter.dicom_io import slice_hu
from segmenter.findings import CLASS_NAMES, Prediction

from . import codes, uids
from .preview import BANNER, CLASS_RGB, burn_in_text, overlay_rgb, upscale_factor
from .seg import check_prediction, contributing_equipment, prepare_sources

__all__ = ["KO_SERIES_NUMBER", "SC_SERIES_NUMBER", "build_key_images", "patient_orientation"]

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9003
KO_SERIES_NUMBER = 9004
_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, +y, +z of the LPS patient system


def patient_orientation(iop: Sequence[float]) -> tuple[str, str]:
    """PatientOrientation (row, column) letters from ImageOrientationPatient.

    highdicom accepts one letter per direction, so an oblique direction is named after its
    largest component (an axial head CT gives ``("L", "P")``).
    """
    values = np.asarray([float(v) for v in iop], dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"iop must have 6 values; got {values.size}")
    letters = []
    for direction in (values[:3], values[3:]):
        axis = int(np.argmax(np.abs(direction)))
        letters.append(_LETTERS[axis][0 if direction[axis] > 0 else 1])
    return letters[0], letters[1]


def _key_slices(labels: np.ndarray, drawn: dict[int, str], max_images: int | None) -> list[int]:
    area = np.isin(labels, list(drawn)).sum(axis=(1, 2))
    slices = [int(k) for k in np.flatnonzero(area)]
    if max_images is not None and len(slices) > max_images:
        # Keep the largest cross-sections, shown in slice order.
        slices = sorted(sorted(slices, key=lambda k: (-area[k], k))[:max_images])
    return slices


def build_key_images(
    sources: Sequence[pydicom.Dataset],
    prediction: Prediction,
    *,
    sc_series_number: int = SC_SERIES_NUMBER,
    ko_series_number: int = KO_SERIES_NUMBER,
    include_source_slices: bool = True,
    max_images: int | None = None,
    volume_hu: Any = None,
) -> tuple[list[hd.sc.SCImage], hd.ko.KeyObjectSelectionDocument] | None:
    """Build one SC per slice carrying a present bleed, and a KOS "Of Interest" listing them.

    Parameters
    ----------
    sources:
        Source CT datasets, sorted along the slice normal in label-volume order (with pixel
        data unless ``volume_hu`` is given).
    prediction:
        Label volume and findings; only classes whose finding is present are drawn.
    sc_series_number, ko_series_number:
        Series Numbers of the SC series and of the KOS series.
    include_source_slices:
        Also list the original CT slices behind each SC in the KOS, so a viewer can jump to them.
    max_images:
        At most this many SCs (the slices with the largest bleed area); ``None`` for all.
    volume_hu:
        The series' HU volume (an array or a ``SlabVolume``), when the sources no longer hold
        their pixel data; None: each drawn slice is decoded from its source.

    Returns
    -------
    tuple of (list of highdicom.sc.SCImage, highdicom.ko.KeyObjectSelectionDocument) or None
        ``None`` when no class is present.

    Raises
    ------
    TypeError, ValueError
        On bad sources or prediction (see :func:`.seg.prepare_sources`), or a bad ``max_images``.
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be None or an int >= 1; got {max_images!r}")
    headers = prepare_sources(sources)
    check_prediction(prediction, headers)
    drawn = {label: name for label, name in CLASS_NAMES.items() if prediction.findings[name].present}
    if not drawn:
        return None
    model, labels = prediction.model, prediction.labels
    series_uid = str(headers[0].SeriesInstanceUID)
    source = uids.source_key(series_uid, [str(h.SOPInstanceUID) for h in headers])
    sc_series_uid = uids.result_series_uid(source, model.version, "SC")
    orientation = patient_orientation(headers[0].ImageOrientationPatient)
    scale = upscale_factor(*labels.shape[1:])
    slices = _key_slices(labels, drawn, max_images)
    images: list[hd.sc.SCImage] = []
    for index, k in enumerate(slices):
        on_slice = [name for label, name in drawn.items() if np.any(labels[k] == label)]
        hu = slice_hu(sources[k], f"sources[{k}]") if volume_hu is None else np.asarray(volume_hu[k])
        rgb = overlay_rgb(hu, labels[k], drawn, scale=scale)
        rgb = burn_in_text(rgb, [(BANNER, (255, 255, 255))] + [(name, CLASS_RGB[name]) for name in on_slice])
        row_mm, col_mm = (float(v) / scale for v in headers[k].PixelSpacing)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=headers[k],
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=sc_series_uid,
            series_number=sc_series_number,
            sop_instance_uid=uids.result_uid(source, model.version, "SC", index),
            instance_number=index + 1,
            manufacturer=model.manufacturer,
            pixel_spacing=(row_mm, col_mm),
            patient_orientation=orientation,
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            contributing_equipment=contributing_equipment(model),
            series_description="AI SDH/EDH key images (not for diagnosis)",
            manufacturer_model_name=model.name,
            software_versions=model.version,
        )
        # from_ref_dataset copies only the type 1/2 patient and study attributes; copying the
        # rest (Study Description, Patient Age...) keeps the study consistent for dcentvfy.
        sc.copy_patient_and_study_information(headers[k])
        sc.BurnedInAnnotation = "YES"
        # A known unpaired body part: without it, General Series Laterality becomes required.
        sc.BodyPartExamined = headers[k].get("BodyPartExamined") or "HEAD"
        sc.ConversionType = "WSD"  # rendered by software (workstation), not digitised video
        sc.ImageComments = f"{BANNER}: {', '.join(on_slice)}"
        sc.DerivationDescription = "Brain window 40/80 HU with AI hematoma mask burned in"
        source_item = pydicom.Dataset()
        source_item.ReferencedSOPClassUID = headers[k].SOPClassUID
        source_item.ReferencedSOPInstanceUID = headers[k].SOPInstanceUID
        sc.SourceImageSequence = [source_item]
        images.append(sc)
    referenced: list[pydicom.Dataset] = list(images)
    if include_source_slices:
        referenced += [headers[k] for k in slices]
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(pydicom.sr.codedict.codes.DCM.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name=model.name, manufacturer_name=model.manufacturer, model_name=model.name
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.KOS_TITLE,
        referenced_objects=referenced,
        observer_device_context=observer,
        description=f"{BANNER}. Slices with AI-detected {' and '.join(drawn.values())}.",
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=list(images) + [headers[k] for k in slices],
        content=content,
        series_instance_uid=uids.result_series_uid(source, model.version, "KO"),
        series_number=ko_series_number,
        sop_instance_uid=uids.result_uid(source, model.version, "KO"),
        instance_number=1,
        manufacturer=model.manufacturer,
        series_description="AI SDH/EDH key images",
    )
    kos.copy_patient_and_study_information(headers[0])
    logger.debug("built %d key image(s) and a KOS", len(images))
    return images, kos
