"""Corpus kinds refused at receive: data sets that are not what their request says or cannot be
parsed (a named C-STORE failure status, nothing stored), and malformed PDUs on a raw socket."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicom_node.names import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH
from tests.corpus.files import N, body, ct, edit, new_uid, rewrite
from tests.corpus.kind import Kind, Sample, Series

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UNPARSABLE = "data set cannot be parsed"
A_ASSOCIATE_AC, A_ABORT = 0x02, 0x07


def _first(folder: Path, change=None) -> Path:
    path = ct(folder, n=1)[0]
    if change is not None:
        edit([path], change)
    return path


def _single(path: Path) -> Sample:
    return Sample([[path]])


def _truncated(folder: Path) -> Sample:
    path = _first(folder)
    data = body(path)
    return _single(rewrite(path, data[: len(data) * 6 // 10]))


def _invalid_vr(folder: Path) -> Sample:
    path = _first(folder)
    data = bytearray(body(path))
    assert data[4:6] == b"CS"  # (0008,0005) SpecificCharacterSet comes first
    data[4:6] = b"\x9c\x01"  # not letters: the reason quotes them with backslashes
    return _single(rewrite(path, bytes(data)))


def _open_sequence(folder: Path) -> Sample:
    """An undefined-length sequence with one item and no sequence delimiter: the data set ends."""
    path = _first(folder)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 4) + b"T-1 "
    item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    open_sq = struct.pack("<HH2sHL", 0x7FE1, 0x0010, b"SQ", 0, 0xFFFFFFFF) + item
    return _single(rewrite(path, body(path) + struct.pack("<HH2sH", 0x7FE1, 0x0000, b"UL", 4) + b"\0" * 4 + open_sq))


def _deep_sequences(folder: Path) -> Sample:
    """Sequences nested 70 deep, every level of undefined length and properly closed."""
    path = _first(folder)
    nested = b""
    for _ in range(70):
        nested = (struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
                  + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + nested
                  + struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    data = body(path)
    cut = data.index(struct.pack("<HH", 0x7FE0, 0x0010))  # (0040,A730) sorts before the pixel data
    return _single(rewrite(path, data[:cut] + nested + data[cut:]))


def _truncated_in_series(folder: Path) -> Sample:
    paths = ct(folder, n=N + 2)  # still N + 1 slices without the broken one: the gap is the reason
    data = body(paths[4])
    rewrite(paths[4], data[: len(data) // 2])
    return Sample([paths])


REFUSED = [
    Kind("data set cut short", _truncated, refused={0: (STATUS_CANNOT_UNDERSTAND, UNPARSABLE)}),
    Kind("random bytes as a data set", lambda d: _single(rewrite(_first(d), os.urandom(3000))),
         refused={0: (STATUS_CANNOT_UNDERSTAND, UNPARSABLE)}),
    Kind("invalid VR", _invalid_vr, refused={0: (STATUS_CANNOT_UNDERSTAND, "invalid VR")}),
    Kind("sequence without its delimiter", _open_sequence,
         refused={0: (STATUS_CANNOT_UNDERSTAND, "undefined-length value without its")}),
    Kind("sequences nested 70 deep", _deep_sequences,
         refused={0: (STATUS_CANNOT_UNDERSTAND, "sequences nested deeper than 64")}),
    Kind("deflated syntax, bytes that do not inflate",
         lambda d: _single(rewrite(_first(d), os.urandom(2000), syntax=DeflatedExplicitVRLittleEndian)),
         refused={0: (STATUS_CANNOT_UNDERSTAND, "does not inflate")}),
    Kind("SOP Instance UID differs from the request",
         lambda d: _single(rewrite(p := _first(d), body(p), sop_uid=new_uid())),
         refused={0: (STATUS_DATASET_MISMATCH, "SOPInstanceUID differs")}),
    Kind("SOP Class UID differs from the request (MR announced, CT sent)",
         lambda d: _single(rewrite(p := _first(d), body(p), sop_class=MR)),
         refused={0: (STATUS_DATASET_MISMATCH, "SOPClassUID differs")}),
    Kind("SeriesInstanceUID with letters", lambda d: _single(_first(d, lambda ds, k: setattr(
        ds, "SeriesInstanceUID", "1.2.840.abc.7"))), refused={0: (STATUS_DATASET_MISMATCH, "SeriesInstanceUID must be")}),
    Kind("StudyInstanceUID missing", lambda d: _single(_first(d, lambda ds, k: delattr(ds, "StudyInstanceUID"))),
         refused={0: (STATUS_DATASET_MISMATCH, "StudyInstanceUID must be 1-64 digits")}),
    Kind("unknown SOP class", lambda d: _single(rewrite(p := _first(d), body(p), sop_class="1.2.826.0.1.3680043.9.7433.9")),
         refused={0: (None, "presentation context rejected")}),
    Kind("one slice of a series cut short", _truncated_in_series,
         refused={4: (STATUS_CANNOT_UNDERSTAND, UNPARSABLE)}, series=Series.NOT_ELIGIBLE,
         reason="gap: 1 slice(s) missing"),
]


# -- raw PDUs ---------------------------------------------------------------------------------------
def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(contexts: tuple[str, ...] = (CT,), called: bytes = b"DURAL_AI", version: int = 1,
                 extra: bytes = b"") -> bytes:
    """A hand-encoded A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``contexts`` in explicit VR LE."""
    fixed = struct.pack(">HH", version, 0) + called.ljust(16) + b"CORPUS_RAW".ljust(16) + b"\0" * 32
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for number, uid in enumerate(contexts):
        sub = _item(0x30, uid.encode()) + _item(0x40, ExplicitVRLittleEndian.encode())
        items += _item(0x20, struct.pack(">BBBB", 2 * number + 1, 0, 0, 0) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">L", 16384))) + extra
    return pdu(0x01, fixed + items)


def pdu(kind: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", kind, 0, len(value) if length is None else length) + value


def _raw(*chunks: bytes):
    return lambda d: Sample(chunks=list(chunks))


GOOD_RQ = associate_rq()
#: A P-DATA-TF whose one PDV claims 4000 bytes in a 20-byte PDU.
BAD_PDV = pdu(0x04, struct.pack(">LBB", 4000, 1, 0x03) + b"\0" * 14)
#: A P-DATA-TF carrying a command set that is not a DICOM data set.
GARBAGE_COMMAND = pdu(0x04, struct.pack(">LBB", 34, 1, 0x03) + os.urandom(32))

PDUS = [
    Kind("connect and close without a byte", _raw(), answer=()),
    Kind("HTTP request on the DICOM port", _raw(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n"), answer=(A_ABORT,)),
    Kind("A-ASSOCIATE-RQ cut short", _raw(GOOD_RQ[: len(GOOD_RQ) // 2]), answer=(), closes=False),
    Kind("PDU length of 4 GiB", _raw(pdu(0x01, GOOD_RQ[6:], length=0xFFFFFFF0)), answer=(), closes=False),
    Kind("A-ASSOCIATE-RQ item length past its end",
         _raw(associate_rq(extra=struct.pack(">BBH", 0x50, 0, 0xFFF0))), answer=(A_ABORT,)),
    Kind("A-ASSOCIATE-RQ with no presentation context", _raw(associate_rq(contexts=())), answer=(A_ASSOCIATE_AC,),
         closes=False),  # accepted with nothing to do; the peer can only release it
    Kind("P-DATA-TF before any association", _raw(BAD_PDV), answer=(A_ABORT,)),
    Kind("A-RELEASE-RQ before any association", _raw(pdu(0x05, b"\0" * 4)), answer=(A_ABORT,)),
    Kind("PDV length past its PDU", _raw(GOOD_RQ, BAD_PDV), answer=(A_ASSOCIATE_AC, A_ABORT)),
    Kind("garbage command set", _raw(GOOD_RQ, GARBAGE_COMMAND), answer=(A_ASSOCIATE_AC, A_ABORT)),
]

WIRE_KINDS = REFUSED + PDUS
