"""Real 8-bit slice loaders, the HU mapping and box pseudo-masks, on fixtures in the same layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segmenter.findings import EDH, SDH
from segmenter.pseudomask import IGNORE, pseudo_mask
from segmenter.realslices import skull_and_cavity
from segmenter.realslices import (
    BELOW_WINDOW_HU, SATURATED_HU, RealSlice, estimated_level, grey_to_hu, load_ich_boxes, load_unlabelled,
    parse_yolo,
)

from .conftest import draw_grey_head


def test_train_split_keeps_one_copy_per_source_slice(realdata_root: Path) -> None:
    slices = load_ich_boxes(realdata_root / "ich-boxes", "train")
    files = list((realdata_root / "ich-boxes" / "train" / "images").glob("*.jpg"))
    assert len(files) == 12 and len(slices) == 6
    assert len({s.slice_id for s in slices}) == 6
    assert [s.kinds for s in slices[:3]] == [{"EDH"}, {"SDH"}, {"IPH"}]
    assert slices[0].has_dural and not slices[2].has_dural and not slices[3].boxes


def test_yolo_boxes_to_pixels_and_bad_lines() -> None:
    (box,) = parse_yolo("0 0.5 0.25 0.2 0.1\n", 200, 100)
    assert (box.kind, box.y0, box.y1, box.x0, box.x1) == ("EDH", 40, 60, 40, 60)
    with pytest.raises(ValueError, match="class must be one of"):
        parse_yolo("7 0.5 0.5 0.1 0.1", 10, 10)
    with pytest.raises(ValueError, match="5 fields"):
        parse_yolo("0 0.5 0.5", 10, 10)


def test_missing_folder_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ich-boxes"):
        load_ich_boxes(tmp_path, "train")


def test_hu_mapping_brain_near_33_air_and_bone_out_of_window() -> None:
    grey, _ = draw_grey_head(None)
    hu = grey_to_hu(grey)
    brain = hu[140:180, 140:180]
    assert abs(float(np.median(brain)) - 33.0) < 3.0
    assert hu[0, 0] == BELOW_WINDOW_HU
    assert (hu[grey >= 250] == SATURATED_HU).all()


def test_brighter_window_is_brought_back_to_brain_level() -> None:
    plain = grey_to_hu(draw_grey_head(None, brain_grey=110)[0])
    bright = draw_grey_head(None, brain_grey=165)[0]
    assert estimated_level(bright) < 25.0
    assert abs(float(np.median(grey_to_hu(bright)[140:180, 140:180])) - float(np.median(plain[140:180, 140:180]))) < 3


def test_dark_exporter_background_is_air() -> None:
    grey, _ = draw_grey_head(None)
    grey = grey.copy()
    grey[grey == 0] = 12  # an exporter that leaves the air a little above black
    assert grey_to_hu(grey)[0, 0] == BELOW_WINDOW_HU


@pytest.mark.parametrize("lesion, label", [("edh", EDH), ("sdh", SDH)])
def test_pseudo_mask_is_the_blood_against_the_table_never_bone_or_brain(lesion: str, label: int) -> None:
    grey, yolo = draw_grey_head(lesion)
    boxes = parse_yolo("".join(f"{b[0]} {b[1]} {b[2]} {b[3]} {b[4]}\n" for b in yolo), *grey.shape)
    mask = pseudo_mask(RealSlice("p_1", "p", grey, boxes))
    blood = (grey >= 170) & (grey < 250)
    labelled = mask == label
    assert labelled.sum() > 0.6 * blood.sum()
    assert not (labelled & (grey >= 250)).any(), "bone labelled as blood"
    assert not (labelled & (grey < 150)).any(), "brain labelled as blood"
    box = boxes[0]
    inside = np.zeros_like(labelled)
    inside[box.y0:box.y1, box.x0:box.x1] = True
    cavity = skull_and_cavity(grey)[1]
    assert (mask[inside & cavity & (grey < 150)] == IGNORE).all()
    assert (mask[inside & ~cavity] == 0).all(), "scalp in the box is background"
    assert (mask[~inside] != label).all()


def test_iph_box_stays_background() -> None:
    grey, yolo = draw_grey_head("iph")
    boxes = parse_yolo(f"{yolo[0][0]} {yolo[0][1]} {yolo[0][2]} {yolo[0][3]} {yolo[0][4]}", *grey.shape)
    assert (pseudo_mask(RealSlice("p_1", "p", grey, boxes)) == 0).all()


def test_cavity_is_inside_the_skull_not_between_holder_and_scalp() -> None:
    grey, _ = draw_grey_head(None)
    grey = grey.copy()
    yy, xx = np.mgrid[:320, :320]
    ring = np.abs(np.hypot(yy - 160, xx - 160) - 155) < 2  # a head holder arc around the head
    grey[ring & (yy > 160)] = 255
    bone, cavity = skull_and_cavity(grey)
    assert cavity[160, 160] and not cavity[300, 160]
    assert not (cavity & bone).any()


def test_unlabelled_slices_load_with_patient_ids(realdata_root: Path) -> None:
    slices = load_unlabelled(realdata_root / "sich-negatives" / "images")
    assert [s.patient_id for s in slices] == ["0001", "0002", "0003"]
    assert all(not s.boxes for s in slices)
