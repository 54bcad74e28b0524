"""Loaders for real 8-bit head-CT slices: boxed haemorrhage slices and unlabelled negatives.

Two layouts are read (tests build small copies of both; the data themselves live outside
the repository):

* ``ich-boxes``: ``<split>/images/<patient>_<slice>_jpg.rf.<hash>.jpg`` (8-bit, already
  brain-windowed) with YOLO labels ``<split>/labels/<same stem>.txt``, one box per line as
  ``class cx cy w h`` normalised to the image; classes 0 EDH, 1 IPH, 2 IVH, 3 SAH, 4 SDH.
  The training split holds several augmented copies of each source slice; only the first
  copy (by file name) of each ``<patient>_<slice>`` is kept.
* ``sich-negatives``: ``images/<patient>_<slice>.png`` (8-bit, brain-windowed), no labels.

HU mapping.  The slices carry no HU.  Their grey levels are read as a brain window of width
80 HU whose level is estimated per slice: the most common soft-tissue grey level inside the
skull (the brain parenchyma) is taken to be ``BRAIN_HU`` (33 HU, between grey and white
matter).  Most slices come out at level 35-45 HU; a minority exported with a brighter window
(brain at grey 160-170) would otherwise read 20 HU too dense, as if the whole brain were
blood.  The shift is limited to ``MAX_LEVEL_SHIFT_HU`` and is not applied when the slice
holds too little brain to measure it (skull base, vertex).  Two ends of the scale carry no HU at all and are mapped to values that
keep the node's HU rules meaningful: black (0) is air or fat and becomes -1000 HU, so the
head-crop finds the head; saturated pixels (>= 250, which JPEG leaves just under 255) are
bone almost everywhere and become 1000 HU, so the "EDH lies against bone" rule still finds
the skull.  The model itself only ever sees the brain window, where every one of those
choices maps to the same input as the original 8-bit grey level.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .skull import intracranial_cavity, keep_large

logger = logging.getLogger(__name__)

#: Brain window assumed for 8-bit slices (level, width) in HU.
ASSUMED_WINDOW = (40.0, 80.0)
#: HU assumed for the most common brain grey level, and the largest level correction.
BRAIN_HU = 33.0
MAX_LEVEL_SHIFT_HU = 25.0
#: Fewest intracranial pixels for which the brain's grey level is measured.
MIN_BRAIN_PX = 5000
#: Grey level at or above which an 8-bit pixel is treated as saturated (bone).
SATURATED_GREY = 250
#: Grey level below which border-connected pixels are air outside the head.
AIR_GREY = 30
#: Smallest saturated component that counts as skull (pixels); drops stray bright pixels.
MIN_BONE_PX = 150
#: HU given to black pixels (below the window) and to saturated ones (above it).
BELOW_WINDOW_HU = -1000.0
SATURATED_HU = 1000.0
#: YOLO class index -> haemorrhage type in ``ich-boxes``.
BOX_CLASSES = {0: "EDH", 1: "IPH", 2: "IVH", 3: "SAH", 4: "SDH"}
DURAL_TYPES = ("SDH", "EDH")

_STEM = re.compile(r"^(?P<patient>[^_]+)_(?P<slice>[^_]+)")


@dataclass(frozen=True)
class Box:
    """One haemorrhage box in pixel coordinates, ``[y0, y1) x [x0, x1)``."""

    kind: str
    y0: int
    x0: int
    y1: int
    x1: int


@dataclass
class RealSlice:
    """One real 8-bit slice with its boxes (empty for unlabelled negatives)."""

    slice_id: str
    patient_id: str
    grey: np.ndarray  # uint8 (rows, cols)
    boxes: list[Box] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {b.kind for b in self.boxes}

    @property
    def has_dural(self) -> bool:
        return bool(self.kinds & set(DURAL_TYPES))

    def hu(self) -> np.ndarray:
        return grey_to_hu(self.grey)


def estimated_level(grey: np.ndarray) -> float:
    """Window level (HU) of an 8-bit brain-windowed slice, from its brain's grey level."""
    level, width = ASSUMED_WINDOW
    cavity = skull_and_cavity(grey)[1]
    if cavity.sum() < MIN_BRAIN_PX:
        return level
    brain_hu = level - width / 2.0 + brain_grey(grey, cavity) * width / 255.0
    return level + float(np.clip(BRAIN_HU - brain_hu, -MAX_LEVEL_SHIFT_HU, MAX_LEVEL_SHIFT_HU))


def skull_and_cavity(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(skull, intracranial cavity) boolean masks of an 8-bit brain-windowed slice."""
    bone = keep_large(grey >= SATURATED_GREY, MIN_BONE_PX)
    soft = (grey > 0) & (grey < SATURATED_GREY)
    brain_like = soft & (grey > 70) & (grey < 230)
    cavity = intracranial_cavity(bone, brain_like, close_px=5)
    return bone, cavity & soft


def brain_grey(grey: np.ndarray, cavity: np.ndarray) -> float:
    """The most common grey level of soft tissue in the cavity (the brain parenchyma)."""
    values = grey[cavity]
    values = values[(values > 40) & (values < 220)]
    if values.size < 100:
        return 35.0 * 255.0 / ASSUMED_WINDOW[1]
    hist = np.bincount(values, minlength=256).astype(float)
    hist = ndimage.gaussian_filter1d(hist, 2.0)
    return float(np.argmax(hist))


def grey_to_hu(grey: np.ndarray, level: float | None = None) -> np.ndarray:
    """8-bit brain-windowed grey levels -> float32 HU (see the module docstring).

    ``level`` defaults to :func:`estimated_level`; the width is always ``ASSUMED_WINDOW[1]``.
    """
    g = np.asarray(grey)
    width = ASSUMED_WINDOW[1]
    level = estimated_level(g) if level is None else level
    hu = (level - width / 2.0 + g.astype(np.float32) * (width / 255.0)).astype(np.float32)
    hu[g == 0] = BELOW_WINDOW_HU
    # Dark pixels connected to the image border are the air around the head, even where JPEG
    # or the exporter left them a few grey levels above black.
    lab, _ = ndimage.label(g < AIR_GREY)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    hu[np.isin(lab, border[border > 0])] = BELOW_WINDOW_HU
    hu[g >= SATURATED_GREY] = SATURATED_HU
    return hu


def read_grey(path: str | Path) -> np.ndarray:
    """An image file as a 2-D uint8 array (colour images are converted to luminance)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def parse_yolo(text: str, rows: int, cols: int, where: str = "labels") -> list[Box]:
    """YOLO ``class cx cy w h`` lines -> pixel boxes; unknown classes raise ``ValueError``."""
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{where}:{n}: a box must have 5 fields (class cx cy w h); got {line!r}")
        cls = int(parts[0])
        if cls not in BOX_CLASSES:
            raise ValueError(f"{where}:{n}: class must be one of {sorted(BOX_CLASSES)}; got {cls}")
        cx, cy, w, h = (float(v) for v in parts[1:])
        x0, x1 = (cx - w / 2) * cols, (cx + w / 2) * cols
        y0, y1 = (cy - h / 2) * rows, (cy + h / 2) * rows
        boxes.append(Box(BOX_CLASSES[cls], max(0, int(np.floor(y0))), max(0, int(np.floor(x0))),
                         min(rows, int(np.ceil(y1))), min(cols, int(np.ceil(x1)))))
    return boxes


def load_ich_boxes(root: str | Path, split: str) -> list[RealSlice]:
    """The slices of one split of ``ich-boxes``, one per source slice, sorted by id."""
    folder = Path(root) / split
    images = sorted((folder / "images").glob("*"))
    if not images:
        raise FileNotFoundError(f"no images in {folder / 'images'}: is {root} an ich-boxes folder?")
    seen: set[str] = set()
    slices = []
    for path in images:
        m = _STEM.match(path.stem)
        if m is None:
            raise ValueError(f"{path.name}: file name must start with <patient>_<slice>")
        key = f"{m['patient']}_{m['slice']}"
        if key in seen:  # an augmented copy of a source slice already loaded
            continue
        seen.add(key)
        grey = read_grey(path)
        label = folder / "labels" / f"{path.stem}.txt"
        boxes = parse_yolo(label.read_text(), *grey.shape, where=str(label)) if label.exists() else []
        slices.append(RealSlice(key, m["patient"], grey, boxes))
    logger.info("ich-boxes/%s: %d source slices (%d files)", split, len(slices), len(images))
    return slices


def load_unlabelled(folder: str | Path) -> list[RealSlice]:
    """Unlabelled 8-bit slices ``<patient>_<slice>.png`` (e.g. ``sich-negatives/images``)."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no PNG slices in {folder}")
    out = []
    for path in paths:
        m = _STEM.match(path.stem)
        patient = m["patient"] if m else path.stem
        out.append(RealSlice(path.stem, patient, read_grey(path)))
    return out
