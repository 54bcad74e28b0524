"""Rendering of CT slices with the hematoma mask burned in, and the PNG preview.

The same primitives draw the Secondary Capture key images (:mod:`.keyimages`) and the PNG
used by the demo and the README, so both show the same colours and window.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont

from dicom_node.atomic import write_atomic
from segmenter.dicom_io import slice_hu
from segmenter.findings import CLASS_NAMES, Finding
from segmenter.slab_volume import SlabVolume

__all__ = [
    "BANNER", "BRAIN_WINDOW", "CLASS_RGB", "burn_in_text", "overlay_rgb", "render_preview_png", "upscale_factor",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: Text burned into every rendered image, so a screenshot can never pass for a diagnosis.
BANNER = "AI RESULT - NOT FOR DIAGNOSIS"
#: (level, width) in HU: the usual brain window (level 40, width 80-120).
BRAIN_WINDOW = (40.0, 80.0)
#: Orange and azure: distinct for the common colour-vision deficiencies and from grey.
CLASS_RGB: dict[str, tuple[int, int, int]] = {"SDH": (255, 160, 0), "EDH": (0, 170, 255)}
_FILL_ALPHA = 0.35
#: Smallest side of a rendered slice; small test images are upscaled so text stays legible.
_MIN_SIDE = 256


class _Slices:
    """HU slices of a volume or of datasets, decoded only when asked for (a preview shows 3)."""

    def __init__(self, sources_or_volume: Sequence[pydicom.Dataset] | np.ndarray | SlabVolume) -> None:
        self.volume: np.ndarray | SlabVolume | None = None
        self.datasets: Sequence[pydicom.Dataset] = ()
        if isinstance(sources_or_volume, SlabVolume):
            self.volume = sources_or_volume
            self.shape = sources_or_volume.shape
        elif isinstance(sources_or_volume, np.ndarray):
            if sources_or_volume.ndim != 3:
                raise ValueError(
                    f"sources_or_volume must be a (z, y, x) HU volume; got shape {sources_or_volume.shape}")
            self.volume = sources_or_volume.astype(np.float32, copy=False)
            self.shape = self.volume.shape
        elif isinstance(sources_or_volume, Sequence) and sources_or_volume and all(
            isinstance(ds, pydicom.Dataset) for ds in sources_or_volume
        ):
            self.datasets = sources_or_volume
            first = sources_or_volume[0]
            self.shape = (len(sources_or_volume), int(first.Rows), int(first.Columns))
        else:
            raise TypeError("sources_or_volume must be a HU volume or a non-empty sequence of Datasets; "
                            f"got {type(sources_or_volume).__name__}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if self.volume is not None:
            return self.volume[k]
        hu = slice_hu(self.datasets[k], f"sources_or_volume[{k}]")
        if hu.shape != self.shape[1:]:
            raise ValueError(f"sources_or_volume[{k}] must be {self.shape[1:]} like the first slice; got {hu.shape}")
        return hu


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside ``mask`` (a 1-pixel inner outline)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def upscale_factor(rows: int, cols: int) -> int:
    """Integer zoom that brings the smaller side to at least 256 pixels."""
    return max(1, -(-_MIN_SIDE // max(1, min(rows, cols))))


def overlay_rgb(
    hu: np.ndarray, labels: np.ndarray, names: Mapping[int, str], *, scale: int = 1
) -> np.ndarray:
    """Brain-windowed slice as RGB with each labelled class filled and outlined in its colour.

    Parameters
    ----------
    hu:
        One slice in HU, shape (rows, cols).
    labels:
        Label slice of the same shape.
    names:
        Label value to class name for the classes to draw (others are not drawn).
    scale:
        Integer nearest-neighbour zoom applied before drawing, so outlines stay 1 pixel wide.

    Returns
    -------
    numpy.ndarray
        uint8, shape (rows * scale, cols * scale, 3).
    """
    if hu.shape != labels.shape or hu.ndim != 2:
        raise ValueError(f"hu and labels must be 2-D with one shape; got {hu.shape} and {labels.shape}")
    level, width = BRAIN_WINDOW
    grey = np.clip((hu - (level - width / 2)) / width * 255.0, 0, 255)
    grey = np.kron(grey, np.ones((scale, scale), dtype=np.float32))
    zoomed = np.kron(labels, np.ones((scale, scale), dtype=labels.dtype))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, name in names.items():
        mask = zoomed == label
        if not mask.any():
            continue
        colour = np.asarray(CLASS_RGB[name], dtype=np.float32)
        rgb[mask] = (1 - _FILL_ALPHA) * rgb[mask] + _FILL_ALPHA * colour
        rgb[_outline(mask)] = colour
    return np.rint(rgb).astype(np.uint8)


def _font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=int(np.clip(width // 32, 10, 24)))


def _draw_lines(image: Image.Image, lines: Sequence[tuple[str, tuple[int, int, int]]], font_width: int) -> int:
    """Draw text lines on black boxes from the top-left corner; return the height used."""
    draw = ImageDraw.Draw(image)
    font = _font(font_width)
    y = 2
    for text, colour in lines:
        left, top, right, bottom = draw.textbbox((3, y), text, font=font)
        draw.rectangle((0, y, min(right + 3, image.width - 1), bottom + 2), fill=(0, 0, 0))
        draw.text((3, y), text, fill=colour, font=font)
        y = bottom + 3
    return y


def burn_in_text(rgb: np.ndarray, lines: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Draw text lines on a black box in the top-left corner of an RGB image (returns a copy)."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    _draw_lines(image, lines, image.width)
    return np.asarray(image)


def _text_strip(width: int, lines: Sequence[tuple[str, tuple[int, int, int]]], font_width: int) -> np.ndarray:
    """A black strip ``width`` wide holding ``lines``, as tall as they need."""
    probe = Image.new("RGB", (width, 1000))
    height = _draw_lines(probe, lines, font_width) + 2
    return np.asarray(probe)[:height]


def _legend(findings: Mapping[str, Finding]) -> list[tuple[str, tuple[int, int, int]]]:
    lines: list[tuple[str, tuple[int, int, int]]] = [(BANNER, (255, 255, 255))]
    for name in CLASS_NAMES.values():
        finding = findings.get(name)
        if finding is None:
            lines.append((f"{name}: not reported", (200, 200, 200)))
        elif finding.present:
            side = f", {finding.laterality}" if finding.laterality else ""
            lines.append(
                (f"{name}: {finding.volume_ml:.1f} mL, max {finding.max_thickness_mm:.1f} mm{side}", CLASS_RGB[name])
            )
        else:
            lines.append((f"{name}: absent", (200, 200, 200)))
    return lines


def render_preview_png(
    sources_or_volume: Sequence[pydicom.Dataset] | np.ndarray | SlabVolume,
    labels: np.ndarray,
    findings: Mapping[str, Finding],
    path: str | os.PathLike[str],
    *,
    neighbours: int = 1,
) -> Path:
    """Write one PNG: the slice with the largest bleed area and its neighbours, with a legend.

    Parameters
    ----------
    sources_or_volume:
        Sorted source datasets (pixel data needed) or a (z, y, x) HU volume (an array or a
        ``SlabVolume``).
    labels:
        Label volume of the same shape (0 background, 1 SDH, 2 EDH).
    findings:
        ``Prediction.findings``; only present classes are drawn, absent ones are listed.
    path:
        Output file; written atomically (temporary file, then rename).
    neighbours:
        Slices shown on each side of the largest one (clipped at the volume's ends).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    volume = _Slices(sources_or_volume)
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise ValueError(f"labels must have the volume's shape {volume.shape}; got {labels.shape}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
        raise ValueError(f"neighbours must be an int >= 0; got {neighbours!r}")
    drawn = {f.label: f.name for f in findings.values() if f.present}
    area = np.isin(labels, list(drawn)).sum(axis=(1, 2)) if drawn else np.zeros(len(volume), int)
    centre = int(np.argmax(area)) if area.any() else len(volume) // 2
    indices = range(max(0, centre - neighbours), min(len(volume), centre + neighbours + 1))
    scale = upscale_factor(*volume.shape[1:])
    panels = [overlay_rgb(volume[k], labels[k], drawn, scale=scale) for k in indices]
    separator = np.full((panels[0].shape[0], 4, 3), 64, dtype=np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, separator)][:-1], axis=1)
    # The legend gets its own strip so that it never hides the anatomy it describes.
    canvas = np.concatenate([_text_strip(row.shape[1], _legend(findings), row.shape[1]), row], axis=0)
    out = Path(path)
    # Not fsynced: a preview lost in a power cut costs nothing, and the job's outcome is rewritten.
    write_atomic(out, lambda handle: Image.fromarray(canvas).save(handle, format="PNG"), sync=False)
    logger.debug("wrote preview of slices %d-%d", indices.start, indices.stop - 1)
    return out
