"""Corpus kinds whose instances the node stores: each series must end analysed, not eligible
(the assembler's checks, with a status SR for CT images) or not analysed by the worker (pixel
values that are not HU, pixel data that cannot be decoded), and never as a silent result."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless)

from dicom_node.contract import ENHANCED_CT_IMAGE_STORAGE
from tests.corpus.files import N, SIZE, ct, edit, encapsulated, new_uid, signed_read_as_unsigned, stored_as_8bit
from tests.corpus.kind import Kind, Sample, Series

MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
TILT_20 = (1, 0, 0, 0, math.cos(math.radians(20)), math.sin(math.radians(20)))
HU_HINT = "PixelRepresentation or RescaleSlope/RescaleIntercept may be wrong"


def one(paths: list[Path]) -> Sample:
    return Sample([paths])


def _set(**values: object):
    def change(ds: Dataset, k: int) -> None:
        for keyword, value in values.items():
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
    return change


def _two_sizes(folder: Path) -> Sample:
    uid, study = new_uid(), new_uid()
    first = ct(folder, n=N // 2, series_uid=uid, study_uid=study)
    second = ct(folder, n=N - N // 2, size=SIZE + 16, series_uid=uid, study_uid=study,
                origin=(-120.0, -120.0, 5.0 * (N // 2)))
    return Sample([first + second])


def _mixed_orientations(folder: Path) -> Sample:
    return one(edit(ct(folder), _set(ImageOrientationPatient=list(TILT_20)), only=range(N // 2, N)))


def _stray_sr(folder: Path) -> Sample:
    paths = ct(folder, n=N + 1)
    return one(edit(paths, _set(SOPClassUID=BASIC_TEXT_SR, Modality="SR", PixelData=None), only=[N]))


def _jp2_truncated(folder: Path) -> Sample:
    paths = ct(folder, transfer_syntax=JPEG2000Lossless)

    def cut(ds: Dataset, k: int) -> None:
        from pydicom.encaps import encapsulate, generate_fragments

        frame = b"".join(generate_fragments(ds.PixelData))
        ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    return one(edit(paths, cut))


def _pixels(change_bytes):
    def change(ds: Dataset, k: int) -> None:
        ds.PixelData = change_bytes(ds.PixelData)
    return change


def _halves(folder: Path) -> Sample:
    paths = ct(folder)
    return Sample([paths[0::2], paths[1::2]])  # neither half is contiguous on its own


def _twice(folder: Path) -> Sample:
    paths = ct(folder)
    return Sample([paths + paths[:3]])


def _reversed_numbers_one(folder: Path) -> Sample:
    return Sample([list(reversed(edit(ct(folder), _set(InstanceNumber=1))))])


def _padding(folder: Path) -> Sample:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    outside = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) > (SIZE / 2) ** 2
    return one(ct(folder, pixel_padding_value=-2000, padding_mask=np.broadcast_to(outside, (N, SIZE, SIZE))))


def _charset(charset: str, name: str):
    return lambda d: one(edit(ct(d), _set(SpecificCharacterSet=charset, PatientName=name)))


def _japanese(folder: Path) -> Sample:
    def change(ds: Dataset, k: int) -> None:
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # first value empty, as Japanese scanners send it
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    return one(edit(ct(folder), change))


NOT_ELIGIBLE = [
    Kind("too few slices", lambda d: one(ct(d, n=N // 2)), series=Series.NOT_ELIGIBLE,
         reason=f"too few slices: {N // 2}"),
    Kind("position missing on one slice", lambda d: one(edit(ct(d), _set(ImagePositionPatient=None), only=[3])),
         series=Series.NOT_ELIGIBLE, reason="ImageOrientationPatient or ImagePositionPatient missing or malformed"),
    Kind("position with two values", lambda d: one(edit(ct(d), _set(ImagePositionPatient=[1.0, 2.0]), only=[3])),
         series=Series.NOT_ELIGIBLE, reason="ImageOrientationPatient or ImagePositionPatient missing or malformed"),
    Kind("duplicate positions", lambda d: one(ct(d, slice_offsets_mm=[0, 5, 10, 10] + [5.0 * k for k in range(3, N - 1)])),
         series=Series.NOT_ELIGIBLE, reason="duplicate slice positions"),
    Kind("non-orthogonal orientation", lambda d: one(ct(d, orientation=(1, 0, 0, 0.3, 0.954, 0))),
         series=Series.NOT_ELIGIBLE, reason="must be orthogonal"),
    Kind("mixed orientations", _mixed_orientations, series=Series.NOT_ELIGIBLE, reason="inconsistent orientation"),
    Kind("huge spacing gap", lambda d: one(ct(d, slice_offsets_mm=[5.0 * k for k in range(N - 1)] + [300.0])),
         series=Series.NOT_ELIGIBLE, reason="gap"),
    Kind("sagittal", lambda d: one(ct(d, orientation=(0, 1, 0, 0, 0, -1))), series=Series.NOT_ELIGIBLE,
         reason="not axial"),
    Kind("sheared beyond a gantry tilt", lambda d: one(ct(d, gantry_tilt_deg=60.0)), series=Series.NOT_ELIGIBLE,
         reason="beyond any gantry tilt"),
    Kind("rows and columns differ across slices", _two_sizes, series=Series.NOT_ELIGIBLE,
         reason="inconsistent or missing Rows/Columns"),
    Kind("pixel spacing differs across slices",
         lambda d: one(edit(ct(d), _set(PixelSpacing=[0.5, 0.5]), only=range(N // 2))),
         series=Series.NOT_ELIGIBLE, reason="inconsistent PixelSpacing"),
    Kind("pixel spacing missing", lambda d: one(ct(d, omit=("PixelSpacing",))), series=Series.NOT_ELIGIBLE,
         reason="PixelSpacing missing or malformed"),
    Kind("pixel data missing", lambda d: one(ct(d, omit=("PixelData",))), series=Series.NOT_ELIGIBLE,
         reason=f"{N} instance(s) without pixel data"),
    Kind("MR images", lambda d: one(ct(d, extra={"Modality": "MR", "SOPClassUID": MR})),
         series=Series.NOT_ELIGIBLE, reason="modality must be CT; got MR", status_sr=False),
    Kind("wrong SOP class: secondary capture labelled CT", lambda d: one(ct(d, extra={"SOPClassUID": SC})),
         series=Series.NOT_ELIGIBLE, reason=f"not a CT image object: SOP class {SC}", status_sr=False),
    Kind("CT series with a stray SR in it", _stray_sr, series=Series.NOT_ELIGIBLE,
         reason="modality must be CT; got CT, SR"),
    Kind("enhanced (multi-frame) CT", lambda d: one(ct(d, n=1, extra={"SOPClassUID": ENHANCED_CT_IMAGE_STORAGE,
                                                                     "NumberOfFrames": N})),
         series=Series.NOT_ELIGIBLE, reason="multi-frame (Enhanced) CT is not supported"),
    Kind("localizer", lambda d: one(ct(d, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})),
         series=Series.NOT_ELIGIBLE, reason="ImageType contains LOCALIZER"),
    Kind("scout by its description", lambda d: one(ct(d, series_description="Topogram 0.6 T20s")),
         series=Series.NOT_ELIGIBLE, reason="excluded by series.exclude.series_description[0]"),
]

NOT_ANALYSED = [
    Kind("signed HU stored with PixelRepresentation 0", lambda d: one(signed_read_as_unsigned(ct(d))),
         series=Series.NOT_ANALYSED, reason=f"above 4000 HU, which no head CT shows: the pixel data, {HU_HINT}"),
    Kind("RescaleSlope 0", lambda d: one(edit(ct(d), _set(RescaleSlope=0))), series=Series.NOT_ANALYSED,
         reason="pixel values are almost constant"),
    Kind("RescaleIntercept +1024 instead of 0", lambda d: one(edit(ct(d), _set(RescaleIntercept=1024))),
         series=Series.NOT_ANALYSED, reason="does not look like a head CT in HU: 0.00% of voxels are air"),
    Kind("8-bit windowed data", lambda d: one(stored_as_8bit(ct(d), slope=1.0, intercept=0.0)),
         series=Series.NOT_ANALYSED, reason="does not look like a head CT in HU: 0.00% of voxels are air"),
    Kind("blank images", lambda d: one(ct(d, volume_hu=np.zeros((N, SIZE, SIZE), np.float32))),
         series=Series.NOT_ANALYSED, reason="pixel values are almost constant"),
    Kind("JPEG lossless with garbage fragments",
         lambda d: one(encapsulated(ct(d), JPEGLosslessSV1, lambda k: [bytes(range(256)) * 8])),
         series=Series.NOT_ANALYSED, reason="pixel data could not be decoded"),
    Kind("RLE with garbage fragments",
         lambda d: one(encapsulated(ct(d), RLELossless, lambda k: [b"\x01\x00\x00\x00" + b"\xff" * 60])),
         series=Series.NOT_ANALYSED, reason="pixel data could not be decoded"),
    Kind("JPEG 2000 codestream cut short", _jp2_truncated, series=Series.NOT_ANALYSED,
         reason="pixel data could not be decoded"),
    Kind("pixel data shorter than Rows x Columns", lambda d: one(edit(ct(d), _pixels(lambda b: b[:-512]))),
         series=Series.NOT_ANALYSED, reason="pixel data could not be decoded"),
]

ANALYSED = [
    Kind("control: a plain series", lambda d: one(ct(d)), series=Series.ANALYSED),
    Kind("ISO 2022 IR 87 with an empty first value", _japanese, series=Series.ANALYSED),
    Kind("GB18030", _charset("GB18030", "Wang^XiaoDong=王^小東"), series=Series.ANALYSED),
    Kind("ISO_IR 192 (UTF-8)", _charset("ISO_IR 192", "Müller^Zoë"), series=Series.ANALYSED),
    Kind("MONOCHROME1", lambda d: one(edit(ct(d), _set(PhotometricInterpretation="MONOCHROME1"))),
         series=Series.ANALYSED),
    Kind("8-bit data rescaled to HU", lambda d: one(stored_as_8bit(ct(d), slope=8.0, intercept=-1024.0)),
         series=Series.ANALYSED),
    Kind("gantry tilt 20 degrees, sheared stack", lambda d: one(ct(d, gantry_tilt_deg=20.0)), series=Series.ANALYSED),
    Kind("two slice spacings", lambda d: one(ct(d, slice_offsets_mm=[0, 4, 8, 12, 16, 21, 28, 35, 42, 49][:N],
                                                slice_thickness_mm=([4.0] * 5 + [7.0] * 5)[:N])),
         series=Series.ANALYSED),
    Kind("feet-first, flipped orientation", lambda d: one(ct(d, orientation=(-1, 0, 0, 0, -1, 0))),
         series=Series.ANALYSED),
    Kind("RLE lossless", lambda d: one(ct(d, transfer_syntax=RLELossless)), series=Series.ANALYSED),
    Kind("JPEG 2000 lossless", lambda d: one(ct(d, transfer_syntax=JPEG2000Lossless)), series=Series.ANALYSED),
    Kind("implicit VR little endian", lambda d: one(ct(d, transfer_syntax=ImplicitVRLittleEndian)),
         series=Series.ANALYSED),
    Kind("series over two associations, interleaved", _halves, series=Series.ANALYSED),
    Kind("same instances twice in one association", _twice, series=Series.ANALYSED),
    Kind("every InstanceNumber 1, sent in reverse", _reversed_numbers_one, series=Series.ANALYSED),
    Kind("type 2 attributes missing", lambda d: one(ct(d, omit=("PatientBirthDate", "PatientSex", "AccessionNumber",
                                                                "StudyID", "SliceThickness", "ReferringPhysicianName"))),
         series=Series.ANALYSED),
    Kind("padding value outside the scan circle", _padding, series=Series.ANALYSED),
    Kind("pixel data longer than Rows x Columns", lambda d: one(edit(ct(d), _pixels(lambda b: b + b"\0" * 512))),
         series=Series.ANALYSED),
]

SERIES_KINDS = NOT_ELIGIBLE + NOT_ANALYSED + ANALYSED
