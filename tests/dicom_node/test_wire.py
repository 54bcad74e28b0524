"""Header scan of encoded data sets: UIDs out, incomplete or foreign bytes refused."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless)

from dicom_node.wire import MalformedDataset, file_meta, scan


def body(raw: bytes) -> bytes:
    """The data set bytes after preamble and file meta."""
    group_length = struct.unpack_from("<L", raw, 140)[0]
    return raw[144 + group_length:]


def encode(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    if syntax == ExplicitVRBigEndian:
        # pydicom refuses to re-encode a little-endian file as big endian; a fresh data set works.
        fresh = Dataset()
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows"):
            setattr(fresh, keyword, getattr(ds, keyword))
        fresh.file_meta = ds.file_meta
        pydicom.filewriter.dcmwrite(buf, fresh, implicit_vr=False, little_endian=False, enforce_file_format=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return body(buf.getvalue())


@pytest.fixture(scope="module")
def ct(series_factory) -> list[Path]:  # type: ignore[no-untyped-def]
    return series_factory("wire_ct", n_slices=1)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless,
                                    JPEGLSLossless])
def test_scan_reads_uids_in_each_syntax(series_factory, syntax: str) -> None:  # type: ignore[no-untyped-def]
    path = series_factory(f"wire_{syntax}", n_slices=1, transfer_syntax=syntax)[0]
    ds = pydicom.dcmread(path)
    header = scan(body(path.read_bytes()), syntax)
    assert (header.sop_class_uid, header.sop_instance_uid, header.study_uid, header.series_uid) == (
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_scan_deflated_and_big_endian(ct: list[Path], syntax: str) -> None:
    ds = pydicom.dcmread(ct[0])
    encoded = encode(ds, syntax)
    assert scan(encoded, syntax).series_uid == ds.SeriesInstanceUID


def _with_sequences(ds: Dataset) -> Dataset:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-A0100", "SRT", "Brain"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.3", "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    for it in ds.ReferencedImageSequence:
        it.is_undefined_length_sequence_item = True
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_scan_walks_undefined_length_sequences(ct: list[Path], syntax: str) -> None:
    ds = _with_sequences(pydicom.dcmread(ct[0]))
    encoded = encode(ds, syntax)
    assert b"\xfe\xff\xdd\xe0" in encoded  # a sequence delimiter was written
    assert scan(encoded, syntax).sop_instance_uid == ds.SOPInstanceUID
    # Cut inside the undefined-length sequence: its delimiter is missing.
    cut = encoded.index(b"\xfe\xff\xdd\xe0")
    with pytest.raises(MalformedDataset):
        scan(encoded[:cut], syntax)


def test_missing_uids_come_back_empty(ct: list[Path]) -> None:
    ds = pydicom.dcmread(ct[0])
    del ds.SeriesInstanceUID
    header = scan(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert header.series_uid == "" and header.study_uid == ds.StudyInstanceUID


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_data_sets_are_refused(series_factory, syntax: str, keep: float) -> None:  # type: ignore[no-untyped-def]
    path = series_factory(f"wire_cut_{syntax}", n_slices=1, transfer_syntax=syntax)[0]
    encoded = body(path.read_bytes())
    with pytest.raises(MalformedDataset):
        scan(encoded[: int(len(encoded) * keep)], syntax)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_random_bytes_are_refused(seed: int, syntax: str) -> None:
    import random

    data = random.Random(seed).randbytes(4096)
    with pytest.raises(MalformedDataset):
        scan(data, syntax)


def test_empty_and_text_are_refused() -> None:
    with pytest.raises(MalformedDataset):
        scan(b"", ExplicitVRLittleEndian)
    with pytest.raises(MalformedDataset):
        scan(b"This is a README, not a DICOM data set.\n" * 20, ExplicitVRLittleEndian)


def test_file_meta_reads_back_with_pydicom(ct: list[Path], tmp_path: Path) -> None:
    raw_body = body(ct[0].read_bytes())
    ds = pydicom.dcmread(ct[0])
    meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "1.2.826.0.1.3680043.9.3811.3.0.4",
                     "PYNETDICOM_304", "SENDER")
    out = tmp_path / "x.dcm"
    out.write_bytes(meta + raw_body)
    back = pydicom.dcmread(out)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "SENDER"
    assert back.PixelData == ds.PixelData
    assert body(out.read_bytes()) == raw_body
    assert os.path.getsize(out) == len(meta) + len(raw_body)
