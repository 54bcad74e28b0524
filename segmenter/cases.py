"""One labelled CT volume, the unit that loaders hand to training and evaluation.

Loaders (``segmenter.realdata``, the phantom generator) all produce ``Case`` objects so that
training code does not care where a volume came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    """A CT volume in Hounsfield units with its per-voxel hematoma labels.

    Attributes
    ----------
    case_id:
        Identifier of the volume, unique within a data set (e.g. ``"ctich-049"``).
    patient_id:
        Identifier of the patient; splits must be made on this, never on slices.
    hu:
        float32 array, shape (z, y, x), in Hounsfield units; z runs along the slice normal
        (feet to head for axial series), y is the row index (anterior to posterior) and x the
        column index (patient right to left), as a DICOM axial slice is displayed.
    labels:
        uint8 array with the same shape as ``hu``; 0 background, 1 SDH, 2 EDH
        (see ``segmenter.findings``).
    spacing_mm:
        Voxel spacing ``(dz, dy, dx)`` in millimetres; ``dz`` is the distance between slice
        centres, not the slice thickness.
    slice_mask:
        Optional bool array, shape (z,): ``True`` where a slice may be used for training.
        ``None`` means every slice is usable.  Slices whose labels are ambiguous (e.g. a
        slice flagged both SDH and EDH in CT-ICH) are ``False``.
    kind:
        What a phantom was drawn as (``"sdh"``, ``"iph"``...), for per-kind evaluation; None
        for real data.
    """

    case_id: str
    patient_id: str
    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    slice_mask: np.ndarray | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be 3-D (z, y, x); got shape {self.hu.shape} for case {self.case_id}")
        if self.labels.shape != self.hu.shape:
            raise ValueError(
                f"labels must have the shape of hu {self.hu.shape}; got {self.labels.shape} "
                f"for case {self.case_id}"
            )
        if len(self.spacing_mm) != 3:
            raise ValueError(f"spacing_mm must be (dz, dy, dx); got {self.spacing_mm!r}")
        if self.slice_mask is not None and self.slice_mask.shape != (self.hu.shape[0],):
            raise ValueError(
                f"slice_mask must have shape ({self.hu.shape[0]},); got {self.slice_mask.shape} "
                f"for case {self.case_id}"
            )

    @property
    def usable_slices(self) -> np.ndarray:
        """Indices of slices that may be used for training (all of them when no mask)."""
        if self.slice_mask is None:
            return np.arange(self.hu.shape[0])
        return np.flatnonzero(self.slice_mask)
