"""TID 1600 Image Library (worker.results.image_library): one group, shared geometry once."""
from __future__ import annotations

import copy

import highdicom as hd
import pytest
from pydicom.sr.codedict import codes

from segmenter.dicom_io import CTSeries
from worker.results.image_library import image_library


def _concept_values(items) -> dict[str, object]:
    return {item.name.meaning: getattr(item, "value", None) for item in items}


def _headers(ct: CTSeries):
    return [copy.deepcopy(ds) for ds in ct.datasets]


def test_shared_descriptors_once_positions_per_image(ct: CTSeries) -> None:
    headers = _headers(ct)
    library = hd.sr.ContainerContentItem.from_dataset(image_library(headers))
    assert library.name == codes.DCM.ImageLibrary
    (group,) = library.ContentSequence
    assert group.name == codes.DCM.ImageLibraryGroup
    shared = [item for item in group.ContentSequence if item.RelationshipType == "HAS ACQ CONTEXT"]
    entries = [item for item in group.ContentSequence if item.RelationshipType == "CONTAINS"]
    values = _concept_values(shared)
    first = headers[0]
    assert values["Frame of Reference UID"] == first.FrameOfReferenceUID
    assert values["Pixel Data Rows"] == first.Rows and values["Pixel Data Columns"] == first.Columns
    assert values["Vertical Pixel Spacing"] == pytest.approx(float(first.PixelSpacing[0]))
    assert values["Image Orientation (Patient) Column Y"] == pytest.approx(float(first.ImageOrientationPatient[4]))
    assert [e.referenced_sop_instance_uid for e in entries] == [h.SOPInstanceUID for h in headers]
    for entry, header in zip(entries, headers):
        position = _concept_values(entry.ContentSequence)
        assert len(position) == 3  # only what differs between slices
        assert position["Image Position (Patient) Z"] == pytest.approx(float(header.ImagePositionPatient[2]))


def test_sources_that_do_not_share_geometry_get_full_per_image_descriptors(ct: CTSeries) -> None:
    headers = _headers(ct)
    headers[3].SliceThickness = float(headers[0].SliceThickness) + 1.0
    library = hd.sr.ContainerContentItem.from_dataset(image_library(headers))
    entries = [item for group in library.ContentSequence for item in group.ContentSequence
               if item.RelationshipType == "CONTAINS"]
    assert len(entries) == len(headers)
    thickness = [_concept_values(e.ContentSequence)["Slice Thickness"] for e in entries]
    assert thickness[3] == pytest.approx(thickness[0] + 1.0)


def test_empty_sources_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one dataset"):
        image_library([])
