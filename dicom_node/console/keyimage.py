"""The key image of a job, rendered on request: the source slice with the most segmented blood,
brain window, with the job's SEG drawn over it.

It reads the job's DICOM SEG (BINARY, one frame per source slice and segment, as
``worker.results.seg`` writes it) and the one source CT slice it points to, so nothing is
rendered ahead of time and the picture always shows what was sent to the PACS. The colours are
the ones the Secondary Captures use.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

__all__ = ["CLASS_RGB", "KeyImageError", "render_key_image"]

#: Same as the burned-in key images (worker.results.preview.CLASS_RGB): orange SDH, blue EDH.
CLASS_RGB: dict[str, tuple[int, int, int]] = {"SDH": (255, 160, 0), "EDH": (0, 170, 255)}
BRAIN_WINDOW = (40.0, 80.0)  # level, width in HU
_ALPHA = 0.45
_MIN_SIDE = 512  # small test images are enlarged so the overlay is visible


class KeyImageError(RuntimeError):
    """No key image can be drawn; the message says why (shown to the operator)."""


def _frame_masks(seg: pydicom.Dataset) -> dict[str, dict[str, np.ndarray]]:
    """Source SOP Instance UID -> segment label -> boolean mask."""
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    masks: dict[str, dict[str, np.ndarray]] = {}
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        # With one segment, writers (highdicom among them) put its identification in the shared group.
        identification = group if "SegmentIdentificationSequence" in group else shared
        label = labels.get(int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber), "?")
        frame = pixels[index] > 0
        slot = masks.setdefault(source, {})
        slot[label] = slot[label] | frame if label in slot else frame
    return masks


def _windowed(ct: pydicom.Dataset) -> np.ndarray:
    hu = ct.pixel_array.astype(np.float32) * float(ct.get("RescaleSlope", 1) or 1) + float(
        ct.get("RescaleIntercept", 0) or 0)
    level, width = BRAIN_WINDOW
    low = level - width / 2
    return (np.clip((hu - low) / width, 0, 1) * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_key_image(seg_path: Path, source_path: Callable[[str], Path | None], overlay: bool = True) -> bytes:
    """PNG bytes of the source slice with the largest segmented area.

    Parameters
    ----------
    seg_path:
        The job's SEG file.
    source_path:
        Finds a source instance's file by SOP Instance UID (None when unknown).
    overlay:
        Draw the segments (filled and outlined); False gives the plain windowed slice.

    Raises
    ------
    KeyImageError
        When the SEG or the source slice cannot be read, or the SEG has no segmented frame.
    """
    try:
        seg = pydicom.dcmread(seg_path)
        masks = _frame_masks(seg)
    except Exception as exc:  # noqa: BLE001 - any unreadable SEG ends the same way
        raise KeyImageError(f"the job's SEG cannot be read ({type(exc).__name__})") from None
    if not masks:
        raise KeyImageError("the SEG has no segmented slice")
    sop_uid = max(masks, key=lambda uid: (sum(int(m.sum()) for m in masks[uid].values()), uid))
    path = source_path(sop_uid)
    if path is None or not path.is_file():
        raise KeyImageError("the source slice is no longer on the node (purged by retention?)")
    try:
        gray = _windowed(pydicom.dcmread(path))
    except Exception as exc:  # noqa: BLE001
        raise KeyImageError(f"the source slice cannot be read ({type(exc).__name__})") from None
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if overlay:
        for label, mask in sorted(masks[sop_uid].items()):
            if mask.shape != gray.shape:
                raise KeyImageError("the SEG and the source slice differ in size")
            colour = np.asarray(CLASS_RGB.get(label, (255, 0, 0)), dtype=np.float32)
            rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * colour
            rgb[_outline(mask)] = colour
    image = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    scale = max(1, int(np.ceil(_MIN_SIDE / max(1, min(gray.shape)))))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
