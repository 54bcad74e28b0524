"""Which complete series the model may analyse: pure checks returning ``None`` or a reason.

Every check takes the cached :class:`~dicom_node.headers.HeaderSummary` of each instance of the
series and returns ``None`` when the series passes, else a short human-readable reason that goes
into the ledger (job state ``not_analysed``) and into ``dicom-node status``. Nothing here reads
files, the clock or the network.

Policy (why these rules)
------------------------
- Only single-frame **CT Image Storage** is analysed. Enhanced and Legacy Converted Enhanced CT
  (multi-frame) are refused with a reason: the segmenter's reader builds volumes from
  single-frame slices, and a multi-frame object would need per-frame functional groups.
- **Gantry tilt and uneven spacing are analysed.** Head CTs are routinely acquired with the
  gantry tilted 10-20 degrees (slices stacked at an angle to their normal) and with two slice
  spacings in one series. The model works slice by slice in the acquired planes and the
  volumes use each slice's true position (``segmenter.geometry``), so neither is refused. Only
  a stack sheared beyond any gantry's range (``segmenter.geometry.MAX_TILT_DEG``) is refused:
  it is a reformat or carries wrong positions. GantryDetectorTilt is not read; the positions say
  how the slices lie.
- **Contiguity** (no duplicate positions, no gaps: ``segmenter.spacing``) is checked here too,
  not only for completion: a series completed by the quiet timer with a gap would otherwise
  fail later in the worker, with a less useful reason. A gap is a step more than 1.5 times the
  neighbouring steps (a missing slice) or the slices' SliceThickness (tissue never imaged):
  across it a volume would be guessed, not measured.
- **Unreadable instances** make the whole series *not analysed*: analysing the rest would
  silently skip slices.
- What gets a status SR: a series of CT images (:attr:`SeriesKind.CT_IMAGE`) that fails a check
  gets a "not analysed: <reason>" SR. Non-CT objects and this node's own results
  (:attr:`SeriesKind.OTHER`, :attr:`SeriesKind.OWN_RESULT`) get none, because a PACS that routes
  everything back to us would otherwise start a loop; they stay visible in status.

This module imports ``segmenter.geometry``, the one segmenter module ``dicom_node`` may use: it is
pure numpy and gives the node and the reader one definition of slice order and contiguity.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from dicom_node.config import SeriesConfig, TextRules
from dicom_node.contract import CT_FAMILY, CT_IMAGE_STORAGE
from dicom_node.headers import HeaderSummary
from segmenter import geometry

#: SOP classes of the objects this node writes (SEG, SR, SC key images, KOS).
RESULT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
})
#: Manufacturer (0008,0070) of every result object worker/results writes: the default of
#: ``segmenter.findings.ModelInfo.manufacturer`` (a test keeps the two equal). Compared
#: case-insensitively and exactly: test CTs from segmenter.dicom_writer say "dural-node
#: synthetic", which must not match.
OWN_MANUFACTURER = "dural-node project"
#: In-plane spacing may differ by DS rounding only.
SPACING_TOLERANCE_MM = 1e-3


class SeriesKind(StrEnum):
    """What a series is, which decides whether a "not analysed" status SR is sent."""

    CT_IMAGE = "ct_image"  # CT images: analysed if eligible, else a status SR with the reason
    OWN_RESULT = "own_result"  # written by this node: never analysed, no SR (would loop)
    OTHER = "other"  # any other modality or non-image object: never analysed, no SR


@dataclass(frozen=True)
class Verdict:
    """Eligibility of one series: ``reason`` is None when it may be analysed."""

    kind: SeriesKind
    reason: str | None

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def status_report(self) -> bool:
        """Whether a "not analysed" status SR should go to the PACS."""
        return self.reason is not None and self.kind is SeriesKind.CT_IMAGE


def _common(values: Sequence[object]) -> object:
    return Counter(values).most_common(1)[0][0]


def classify(headers: Sequence[HeaderSummary]) -> SeriesKind:
    """Own result if any instance carries our Manufacturer and a result SOP class, CT image
    if any instance is a CT-family image with Modality CT, else other.

    One CT image is enough: a CT series that also holds a stray object (a vendor's dose SR, a
    secondary capture) is still a head CT that someone waits for, so it must get a status SR
    saying why it was not analysed rather than silence. Our own results are recognised first,
    so no status SR is ever written about one of them.
    """
    for h in headers:
        if h.manufacturer.lower() == OWN_MANUFACTURER and h.sop_class_uid in RESULT_SOP_CLASSES:
            return SeriesKind.OWN_RESULT
    if any(h.sop_class_uid in CT_FAMILY and h.modality in (None, "CT") for h in headers):
        # modality None: an unreadable file announced as CT on the association.
        return SeriesKind.CT_IMAGE
    return SeriesKind.OTHER


# -- the checks, in the order they run --------------------------------------------------------
def unreadable_problem(headers: Sequence[HeaderSummary]) -> str | None:
    bad = [h for h in headers if h.error]
    if not bad:
        return None
    return f"{len(bad)} of {len(headers)} instance(s) unreadable ({bad[0].error})"


def object_problem(headers: Sequence[HeaderSummary]) -> str | None:
    kind = classify(headers)
    if kind is SeriesKind.OWN_RESULT:
        return "result object written by this node; never analysed"
    modalities = sorted({h.modality or "none" for h in headers})
    if modalities != ["CT"]:
        return f"modality must be CT; got {', '.join(modalities)}"
    classes = sorted({h.sop_class_uid or "none" for h in headers} - CT_FAMILY)
    if classes:
        return f"not a CT image object: SOP class {', '.join(classes)}"
    return None


def sop_class_problem(headers: Sequence[HeaderSummary]) -> str | None:
    if any(h.sop_class_uid != CT_IMAGE_STORAGE or h.frames > 1 for h in headers):
        return ("multi-frame (Enhanced) CT is not supported; send the series as single-frame "
                "CT Image Storage")
    return None


def pixel_problem(headers: Sequence[HeaderSummary]) -> str | None:
    missing = sum(not h.has_pixel_data for h in headers)
    return f"{missing} instance(s) without pixel data" if missing else None


def image_type_problem(headers: Sequence[HeaderSummary]) -> str | None:
    if any(h.image_type and "LOCALIZER" in h.image_type for h in headers):
        return "localizer (scout) images: ImageType contains LOCALIZER"
    return None


_RULE_FIELDS: tuple[tuple[str, str, Callable[[HeaderSummary], str]], ...] = (
    ("series_description", "SeriesDescription", lambda h: h.series_description),
    ("study_description", "StudyDescription", lambda h: h.study_description),
    ("body_part_examined", "BodyPartExamined", lambda h: h.body_part),
)


def rules_problem(headers: Sequence[HeaderSummary], include: TextRules, exclude: TextRules) -> str | None:
    """``series.exclude``: any match excludes; ``series.include``: every non-empty list must match.

    The reason names the rule, never the header text (descriptions can carry free text).
    """
    for key, keyword, get in _RULE_FIELDS:
        value = str(_common([get(h) for h in headers]))
        for index, pattern in enumerate(getattr(exclude, key)):
            if re.search(pattern, value, re.IGNORECASE):
                return f"excluded by series.exclude.{key}[{index}] {pattern!r} ({keyword})"
        patterns = getattr(include, key)
        if patterns and not any(re.search(p, value, re.IGNORECASE) for p in patterns):
            return f"{keyword} matches none of series.include.{key}"
    return None


def slices_problem(headers: Sequence[HeaderSummary], min_slices: int) -> str | None:
    if len(headers) < min_slices:
        return f"too few slices: {len(headers)} (series.min_slices is {min_slices})"
    return None


def matrix_problem(headers: Sequence[HeaderSummary]) -> str | None:
    sizes = {(h.rows, h.cols) for h in headers}
    if len(sizes) > 1 or None in next(iter(sizes)):
        return f"inconsistent or missing Rows/Columns: {sorted(sizes, key=str)}"
    spacings = [h.pixel_spacing for h in headers]
    if any(s is None for s in spacings):
        return "PixelSpacing missing or malformed"
    values = np.asarray(spacings, dtype=np.float64)
    if np.any(values <= 0) or np.ptp(values, axis=0).max() > SPACING_TOLERANCE_MM:
        return f"inconsistent PixelSpacing: {values.min(axis=0).tolist()} to {values.max(axis=0).tolist()} mm"
    return None


def _thicknesses(headers: Sequence[HeaderSummary]) -> list[float | None]:
    return [h.slice_thickness_mm for h in headers]


def _stack(headers: Sequence[HeaderSummary]) -> tuple[np.ndarray, np.ndarray] | str:
    """Slice positions and the mean orientation, or the reason the orientations are unusable."""
    if any(h.iop is None or h.ipp is None for h in headers):
        return "ImageOrientationPatient or ImagePositionPatient missing or malformed"
    positions = np.asarray([h.ipp for h in headers], dtype=np.float64)
    iops = np.asarray([h.iop for h in headers], dtype=np.float64)
    return geometry.orientation_problem(iops) or (positions, geometry.mean_orientation(iops))


def contiguity(headers: Sequence[HeaderSummary], tolerance_mm: float) -> str | None:
    """Reason when the slices are not one stack without duplicates or gaps, else None.

    Uneven spacing is contiguous. Used by the assembler to decide completion before the quiet
    timer runs out.
    """
    stack = _stack(headers)
    if isinstance(stack, str):
        return stack
    positions, iop = stack
    return geometry.contiguity_problem(positions, iop, tolerance_mm, _thicknesses(headers))


def geometry_problem(headers: Sequence[HeaderSummary], cfg: SeriesConfig) -> str | None:
    """Orientation consistent, axial-ish, sheared no further than a gantry tilts, contiguous."""
    stack = _stack(headers)
    if isinstance(stack, str):
        return stack
    positions, iop = stack
    if not geometry.is_axialish(iop, cfg.max_axial_angle_deg):
        return geometry.axial_problem(iop, cfg.max_axial_angle_deg)
    return (geometry.tilt_problem(positions, iop)
            or geometry.contiguity_problem(positions, iop, cfg.spacing_tolerance_mm, _thicknesses(headers)))


def evaluate(headers: Sequence[HeaderSummary], cfg: SeriesConfig) -> Verdict:
    """Run every check in order and return the first reason (or None) with the series' kind.

    Parameters
    ----------
    headers:
        One summary per instance of the series (unreadable ones with ``error`` set and the
        SOP class announced on the association).
    cfg:
        The ``series:`` section of the configuration.
    """
    kind = classify(headers)
    if not headers:
        return Verdict(kind, "no instances")
    checks: tuple[Callable[[], str | None], ...] = (
        lambda: unreadable_problem(headers),
        lambda: object_problem(headers),
        lambda: sop_class_problem(headers),
        lambda: pixel_problem(headers),
        lambda: image_type_problem(headers),
        lambda: rules_problem(headers, cfg.include, cfg.exclude),
        lambda: slices_problem(headers, cfg.min_slices),
        lambda: matrix_problem(headers),
        lambda: geometry_problem(headers, cfg),
    )
    for check in checks:
        try:
            reason = check()
        except ValueError as exc:  # geometry refuses malformed vectors with a message
            reason = f"unusable geometry: {exc}"
        if reason:
            return Verdict(kind, reason)
    return Verdict(kind, None)
