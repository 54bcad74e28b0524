"""PNG preview (worker.results.preview)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmenter.dicom_io import CTSeries
from segmenter.findings import Prediction
from worker.results.preview import CLASS_RGB, overlay_rgb, render_preview_png


def _colours(path: Path) -> set[tuple[int, int, int]]:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in px) for px in np.unique(pixels, axis=0)}


@pytest.mark.parametrize("source", ["datasets", "volume"])
def test_preview_shows_the_largest_slice_and_neighbours(
    ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path: Path, source: str
) -> None:
    prediction = make_prediction()
    data = ct.datasets if source == "datasets" else ct.volume_hu
    path = render_preview_png(data, prediction.labels, prediction.findings, tmp_path / "preview.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        # Three 256-pixel panels with two 4-pixel separators, plus a legend strip on top.
        assert image.width == 3 * 256 + 2 * 4 and image.height > 256
    assert {CLASS_RGB["SDH"], CLASS_RGB["EDH"]} <= _colours(path)
    assert not list(tmp_path.glob("*.tmp"))


def test_preview_of_a_negative_series(ct: CTSeries, make_prediction: Callable[..., Prediction], tmp_path: Path) -> None:
    prediction = make_prediction(sdh=False, edh=False)
    path = render_preview_png(ct.volume_hu, prediction.labels, prediction.findings, tmp_path / "neg.png", neighbours=0)
    with Image.open(path) as image:
        assert image.width == 256
    assert not {CLASS_RGB["SDH"], CLASS_RGB["EDH"]} & _colours(path)


def test_overlay_outline_is_one_pixel() -> None:
    hu = np.zeros((8, 8), np.float32)
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 1
    rgb = overlay_rgb(hu, labels, {1: "SDH"})
    outline = np.all(rgb == CLASS_RGB["SDH"], axis=2)
    assert outline.sum() == 12 and not outline[3:5, 3:5].any()


@pytest.mark.parametrize(
    ("volume", "labels", "kwargs", "error", "message"),
    [
        (np.zeros((2, 4, 4)), np.zeros((3, 4, 4), np.uint8), {}, ValueError, "labels must have the volume's shape"),
        (np.zeros((4, 4)), np.zeros((4, 4), np.uint8), {}, ValueError, r"must be a \(z, y, x\) HU volume"),
        ("ct", np.zeros((1, 4, 4), np.uint8), {}, TypeError, "sources_or_volume must be a HU volume"),
        (np.zeros((1, 4, 4)), np.zeros((1, 4, 4), np.uint8), {"neighbours": -1}, ValueError, "neighbours must be"),
    ],
)
def test_ill_preview_arguments(tmp_path: Path, volume, labels, kwargs, error, message: str) -> None:
    with pytest.raises(error, match=message):
        render_preview_png(volume, labels, {}, tmp_path / "x.png", **kwargs)
