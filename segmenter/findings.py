"""Result records shared by the segmenter, the result-object builders and the worker.

These are plain dataclasses so that a worker on another host can return them as JSON
(``to_dict`` / ``from_dict``) and the node can record them without importing torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Label values in every label volume the project writes or reads.
BACKGROUND, SDH, EDH = 0, 1, 2
#: Class name for each non-background label, in label order.
CLASS_NAMES: dict[int, str] = {SDH: "SDH", EDH: "EDH"}


@dataclass(frozen=True)
class Finding:
    """What the model says about one hematoma class in one series.

    Attributes
    ----------
    name:
        ``"SDH"`` or ``"EDH"``.
    label:
        Label value in the label volume (1 or 2).
    present:
        The decision by the documented rule (see ``segmenter.postprocess``).
    volume_ml:
        Volume of the voxels labelled with this class after post-processing, in millilitres.
    max_thickness_mm:
        Largest in-plane thickness of the collection, in millimetres (0 when absent).
    laterality:
        ``"left"``, ``"right"``, ``"bilateral"`` (patient side), or ``None`` when absent.
    confidence:
        Mean softmax probability of the class over its voxels, 0 when absent.
    voxel_count:
        Number of voxels with this label.
    """

    name: str
    label: int
    present: bool
    volume_ml: float
    max_thickness_mm: float
    laterality: str | None
    confidence: float
    voxel_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(**data)


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the algorithm that produced a prediction (for SEG/SR provenance).

    ``device_uid`` is derived from the weights' SHA-256, so it changes whenever the model is
    retrained, as the IHE AI Results profile asks of the Contributing Equipment Device UID.
    """

    name: str
    version: str
    weights_sha256: str
    manufacturer: str = "dural-node project"

    @property
    def device_uid(self) -> str:
        # 2.25 UUID-derived UID: unique without a registered root.
        return "2.25." + str(int(self.weights_sha256[:32], 16))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prediction:
    """A label volume on the source grid plus one ``Finding`` per class.

    ``labels`` is uint8 with shape (slices, rows, cols) in the same slice order as the
    sorted source series (0 background, 1 SDH, 2 EDH). ``excluded`` lists the components that
    post-processing removed by rule rather than by size (see ``segmenter.postprocess``).
    """

    labels: np.ndarray
    findings: dict[str, Finding]
    model: ModelInfo
    timings_s: dict[str, float] = field(default_factory=dict)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def any_present(self) -> bool:
        return any(f.present for f in self.findings.values())
