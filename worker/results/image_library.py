"""TID 1600 Image Library for a single CT series, with the shared descriptors stated once.

highdicom's ``ImageLibrary`` repeats every TID 1602/1604 descriptor (modality, frame of
reference, rows, columns, pixel spacing, slice thickness, six orientation cosines, three
position coordinates) under every image: 16 content items per slice, which made the Image
Library about 80% of the report's content and of its build time (1.3 s of SR building for 33
slices on the CPU we measure on, most of it highdicom copying and re-parsing those items).

TID 1600 lets descriptors common to a group of images sit once on the Image Library Group
(row 3, TID 1602 at group level), so this module puts everything a CT series shares on the
group and leaves only Image Position (Patient) X/Y/Z on each entry (TID 1601 row 2). A
reader learns the same geometry from fewer items. Sources whose shared attributes are not
in fact identical fall back to highdicom's per-image library, which is always correct.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.sr.codedict import codes

__all__ = ["IMAGE_LIBRARY", "add_image_library", "image_library"]

IMAGE_LIBRARY = codes.DCM.ImageLibrary
_ACQ = RelationshipTypeValues.HAS_ACQ_CONTEXT
_CONTAINS = RelationshipTypeValues.CONTAINS
_PIXELS = hd.sr.CodedConcept(value="{pixels}", meaning="Pixels", scheme_designator="UCUM")
_COSINE = hd.sr.CodedConcept(value="{-1:1}", meaning="{-1:1}", scheme_designator="UCUM")
_SOURCE = hd.sr.CodedConcept(value="260753009", meaning="Source", scheme_designator="SCT")
_SHARED = ("Modality", "FrameOfReferenceUID", "Rows", "Columns", "PixelSpacing", "SliceThickness",
           "ImageOrientationPatient", "SpacingBetweenSlices", "SOPClassUID")


def _num(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=float(value), unit=unit, relationship_type=_ACQ)


def _shares_geometry(headers: Sequence[pydicom.Dataset]) -> bool:
    first = headers[0]
    if first.get("Modality") != "CT" or any(first.get(k) is None for k in _SHARED[:7]):
        return False
    return all(
        [str(h.get(k)) for k in _SHARED] == [str(first.get(k)) for k in _SHARED] for h in headers[1:]
    )


def _group_descriptors(first: pydicom.Dataset) -> list[hd.sr.ContentItem]:
    spacing, cosines = first.PixelSpacing, first.ImageOrientationPatient
    mm = codes.UCUM.Millimeter
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=codes.DCM.Modality, value=codes.cid29.ComputedTomography, relationship_type=_ACQ),
        hd.sr.UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=first.FrameOfReferenceUID,
                                relationship_type=_ACQ),
        _num(codes.DCM.PixelDataRows, first.Rows, _PIXELS),
        _num(codes.DCM.PixelDataColumns, first.Columns, _PIXELS),
        _num(codes.DCM.HorizontalPixelSpacing, spacing[1], mm),
        _num(codes.DCM.VerticalPixelSpacing, spacing[0], mm),
        _num(codes.DCM.SliceThickness, first.SliceThickness, mm),
    ]
    names = (codes.DCM.ImageOrientationPatientRowX, codes.DCM.ImageOrientationPatientRowY,
             codes.DCM.ImageOrientationPatientRowZ, codes.DCM.ImageOrientationPatientColumnX,
             codes.DCM.ImageOrientationPatientColumnY, codes.DCM.ImageOrientationPatientColumnZ)
    items.extend(_num(name, value, _COSINE) for name, value in zip(names, cosines))
    if first.get("SpacingBetweenSlices") is not None:
        items.append(_num(codes.DCM.SpacingBetweenSlices, first.SpacingBetweenSlices, mm))
    return items


def _entry(ds: pydicom.Dataset) -> hd.sr.ImageContentItem:
    item = hd.sr.ImageContentItem(name=_SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                                  referenced_sop_instance_uid=ds.SOPInstanceUID, relationship_type=_CONTAINS)
    mm = codes.UCUM.Millimeter
    x, y, z = ds.ImagePositionPatient
    item.ContentSequence = hd.sr.ContentSequence([
        _num(codes.DCM.ImagePositionPatientX, x, mm),
        _num(codes.DCM.ImagePositionPatientY, y, mm),
        _num(codes.DCM.ImagePositionPatientZ, z, mm),
    ])
    return item


def image_library(headers: Sequence[pydicom.Dataset]) -> hd.sr.ContainerContentItem:
    """The Image Library container for the sorted, header-only source slices of one series."""
    if not headers:
        raise ValueError("headers must contain at least one dataset; got 0")
    if not _shares_geometry(headers):
        return hd.sr.templates.ImageLibrary(headers)[0]
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence(_group_descriptors(headers[0]) + [_entry(h) for h in headers])
    library = hd.sr.ContainerContentItem(name=IMAGE_LIBRARY, relationship_type=_CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def add_image_library(report: hd.sr.MeasurementReport, headers: Sequence[pydicom.Dataset]) -> None:
    """Insert the library where TID 1500 puts it: row 5, just before Imaging Measurements."""
    content = report[0].ContentSequence
    measurements = next(i for i, item in enumerate(content) if item.name == codes.DCM.ImagingMeasurements)
    content.insert(measurements, image_library(headers))
