"""Real slices at model scale for training: weakly labelled slices and lesion-free backgrounds.

``RealBank`` holds real slices with their pseudo-masks (``pseudomask.IGNORE`` where a box
gives no pixel-level answer).  ``BackgroundBank`` holds real slices without any SDH/EDH,
each with its cavity map, onto which ``insertion`` draws lesions on the fly.  Both are built
once (head crop, resize to the model's input size, as inference does) so an epoch costs no
resampling.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import torch

from .insertion import CavityMap, cavity_map
from .preprocess import head_crop, resample_hu, resample_labels
from .pseudomask import IGNORE, pseudo_mask
from .realslices import RealSlice

logger = logging.getLogger(__name__)


#: Fewest intracranial pixels (model scale) for a background slice to be kept at all.
MIN_NEGATIVE_CAVITY_PX = 1500


@dataclass
class RealBank:
    """Real slices (N, S, S) as int16 HU with uint8 labels (0, 1, 2 or ``IGNORE``)."""

    hu: torch.Tensor
    labels: torch.Tensor
    slice_ids: list[str]
    dural: np.ndarray  # bool (N,): the slice has an SDH or EDH box

    def __len__(self) -> int:
        return len(self.slice_ids)


@dataclass
class BackgroundBank:
    """Real SDH/EDH-free slices (N, S, S) as int16 HU, with their cavity maps."""

    hu: torch.Tensor
    maps: list[CavityMap]
    slice_ids: list[str]

    def __len__(self) -> int:
        return len(self.slice_ids)


def to_model_scale(hu: np.ndarray, labels: np.ndarray | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One 2-D slice (and labels, ``IGNORE`` kept) cropped to the head and resized to ``size``."""
    crop = head_crop(hu[None])
    small = resample_hu(hu[None], crop, size)[0]
    if labels is None:
        return small, None
    # Area vote with "no answer" as a fourth class, so thin crescents and IGNORE both survive.
    out = resample_labels(np.where(labels == IGNORE, 3, labels)[None], crop, size, num_classes=4)[0]
    out[out == 3] = IGNORE
    return small, out


def build_real_bank(slices: Sequence[RealSlice], size: int) -> RealBank:
    """Pseudo-mask and resample boxed real slices."""
    hus, labs, ids, dural = [], [], [], []
    for item in slices:
        hu, lab = to_model_scale(item.hu(), pseudo_mask(item), size)
        hus.append(hu.round().clamp(-1024, 3071).to(torch.int16))
        labs.append(lab)
        ids.append(item.slice_id)
        dural.append(item.has_dural)
    logger.info("real bank: %d slices, %d with SDH/EDH boxes", len(ids), int(np.sum(dural)))
    return RealBank(torch.stack(hus), torch.stack(labs), ids, np.asarray(dural, bool))


def build_background_bank(slices: Sequence[tuple[str, np.ndarray]], size: int,
                          keep_negatives: bool = True) -> BackgroundBank:
    """Resample (slice id, HU slice) pairs free of SDH/EDH and map their cavities.

    Slices with room for a lesion get lesions drawn in.  With ``keep_negatives`` the others
    (vertex, skull base, where the skull is cut obliquely and its inner table is a wide bright
    band) are kept as negatives, because that band is what a model trained on drawn lesions
    would otherwise call a thin SDH; without it they are dropped.
    """
    hus, maps, ids = [], [], []
    for slice_id, hu in slices:
        small = to_model_scale(hu, None, size)[0].round().clamp(-1024, 3071)
        cmap = cavity_map(small.numpy())
        if cmap.cavity.sum() < MIN_NEGATIVE_CAVITY_PX or not (keep_negatives or cmap.usable):
            continue
        hus.append(small.to(torch.int16))
        maps.append(cmap)
        ids.append(slice_id)
    logger.info("background bank: %d of %d slices kept, %d with room for a lesion", len(ids), len(slices),
                sum(m.usable for m in maps))
    return BackgroundBank(torch.stack(hus) if hus else torch.zeros((0, size, size), dtype=torch.int16),
                          maps, ids)


def dicom_slices(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every image of a DICOM folder as (id, HU) in acquisition order (no geometry checks).

    Background slices need only plausible HU, not a valid volume, so tilt and uneven spacing
    do not matter here.
    """
    from .dicom_io import slice_hu

    items = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
            hu = slice_hu(ds, where=path.name)
        except Exception as exc:  # noqa: BLE001 - a non-image file in the folder
            logger.debug("skipped %s: %s", path.name, exc)
            continue
        items.append((float(getattr(ds, "InstanceNumber", len(items)) or 0), path.stem, hu))
    items.sort(key=lambda t: t[0])
    return [(f"{Path(folder).name}-{stem}", hu) for _, stem, hu in items]
