"""Draw box pseudo-masks on real slices, to check them by eye.

Writes a PNG montage of the first slices with an SDH or EDH box of an ``ich-boxes`` split:
SDH pseudo-mask green, EDH red, pixels without an answer (inside the box, outside the mask)
tinted blue, boxes outlined. The picture holds real images, so keep it out of the repository.

    python bench/pseudomask_preview.py --real-root ../shared/realdata --split valid --out /tmp/preview.png
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from segmenter.findings import EDH, SDH
from segmenter.pseudomask import IGNORE, pseudo_mask
from segmenter.realslices import load_ich_boxes


def overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of a slice with its pseudo-mask."""
    rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
    rgb[labels == IGNORE] = rgb[labels == IGNORE] * 0.6 + np.array([0, 0, 100])
    rgb[labels == SDH] = (0, 255, 0)
    rgb[labels == EDH] = (255, 0, 0)
    return rgb.clip(0, 255).astype(np.uint8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real-root", required=True, help="folder holding ich-boxes/")
    p.add_argument("--split", default="valid")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--tile", type=int, default=320)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    slices = [s for s in load_ich_boxes(f"{a.real_root}/ich-boxes", a.split) if s.has_dural][: a.count]
    cols = 4
    sheet = Image.new("RGB", (cols * a.tile, -(-len(slices) // cols) * a.tile))
    for i, item in enumerate(slices):
        im = Image.fromarray(overlay(item.grey, pseudo_mask(item)))
        draw = ImageDraw.Draw(im)
        for box in item.boxes:
            draw.rectangle([box.x0, box.y0, box.x1, box.y1], outline="yellow")
        sheet.paste(im.resize((a.tile, a.tile)), ((i % cols) * a.tile, (i // cols) * a.tile))
    sheet.save(a.out)
    print(f"{len(slices)} slices -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
