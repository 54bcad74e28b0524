"""Receive-journal segments: the record format, reading and creating segment files.

Record layout (little endian)::

    magic "DNJ1" | names length u32 | epoch u64 | seq u64 | payload length u64 |
    received_at f64 | payload CRC-32 u32 | header CRC-32 u32 | names (UTF-8) | payload

``names`` is study, series, SOP instance, SOP class UID and association id, newline-separated;
``payload`` is the spool file (file meta + data set as received). Reading a segment
(:func:`read_segment`) stops at the first record that is not valid: wrong magic or CRC, another
epoch (a run of the node, so records of an earlier run left behind a recycled head never count)
or a sequence number that does not follow the previous record's. A record torn by a crash had
no completed ``fdatasync``, so it was never acknowledged, and neither was any later record.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# zlib's CRC-32, computed with ISA-L's carry-less multiply: ~14x faster than zlib's on a CT slice
# (0.13 -> 0.009 ms for 526 kB), and the same value, so segments read the same either way.
from isal.isal_zlib import crc32

_HEADER = struct.Struct("<4sIQQQdII")
_MAGIC = b"DNJ1"
_ZEROS = bytes(1 << 20)
#: Bytes of a record header, and the most bytes its names may take.
HEADER_BYTES = _HEADER.size
MAX_NAMES = 1024


@dataclass(frozen=True)
class Entry:
    """What a record says about its instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    assoc_id: str | None
    received_at: float

    def encode(self) -> bytes:
        return "\n".join((self.study_uid, self.series_uid, self.sop_uid, self.sop_class_uid,
                          self.assoc_id or "")).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes, received_at: float) -> "Entry":
        study, series, sop, sop_class, assoc = raw.decode("utf-8").split("\n")
        return cls(study, series, sop, sop_class, assoc or None, received_at)


class Segment:
    """One preallocated journal file."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        self.write_pos = 0
        self.unmoved = 0  # records not yet in the spool
        self.dirty = False  # written since its last fdatasync


@dataclass(frozen=True)
class Record:
    """A record's place in its segment: the mover copies ``length`` bytes from ``offset``."""

    seq: int
    entry: Entry
    segment: Segment
    offset: int
    length: int


def read_segment(segment: Segment) -> list[Record]:
    """The valid records at the start of ``segment``, in order (see the module docstring)."""
    records: list[Record] = []
    pos = 0
    epoch = None
    while pos + _HEADER.size <= segment.size:
        head = os.pread(segment.fd, _HEADER.size, pos)
        magic, names_len, rec_epoch, seq, length, received_at, payload_crc, header_crc = _HEADER.unpack(head)
        end = pos + _HEADER.size + names_len + length
        if magic != _MAGIC or names_len > MAX_NAMES or end > segment.size:
            break
        if (epoch is not None and rec_epoch != epoch) or (records and seq != records[-1].seq + 1):
            break
        names = os.pread(segment.fd, names_len, pos + _HEADER.size)
        if crc32(names, crc32(head[:-4])) != header_crc:
            break
        if _crc_of(segment.fd, pos + _HEADER.size + names_len, length) != payload_crc:
            break
        try:
            entry = Entry.decode(names, received_at)
        except (UnicodeDecodeError, ValueError):
            break
        epoch = rec_epoch
        records.append(Record(seq, entry, segment, pos + _HEADER.size + names_len, length))
        pos = end
    return records


def _crc_of(fd: int, offset: int, length: int) -> int:
    crc = 0
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 22), offset)
        if not chunk:
            return -1
        crc = crc32(chunk, crc)
        offset += len(chunk)
        length -= len(chunk)
    return crc


def encode_header(names: bytes, epoch: int, seq: int, length: int, received_at: float, crc: int) -> bytes:
    """A record's header, its own CRC-32 (covering the names too) last."""
    head = _HEADER.pack(_MAGIC, len(names), epoch, seq, length, received_at, crc, 0)[:-4]
    return head + struct.pack("<I", crc32(names, crc32(head)))


def payload_crc(parts: Sequence[bytes | bytearray | memoryview]) -> int:
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    return crc


def open_segments(folder: Path, segment_bytes: int) -> tuple[list[Segment], list[Segment], list[Record]]:
    """The segment files in ``folder``: all of them, the free ones, and the valid records of the
    others, oldest first (in use until moved). A file of another size, left by a crash while it
    was created, is removed."""
    segments: list[Segment] = []
    for path in sorted(folder.glob("segment-*.bin")):
        fd = os.open(path, os.O_RDWR)
        segments.append(Segment(path, fd, os.fstat(fd).st_size))
    free: list[Segment] = []
    recovered: list[Record] = []
    for segment in list(segments):
        records = read_segment(segment)
        if records:
            segment.write_pos, segment.unmoved = segment.size, len(records)
            recovered += records
        elif segment.size != segment_bytes:
            os.close(segment.fd)
            segment.path.unlink()
            segments.remove(segment)
        else:
            free.append(segment)
    recovered.sort(key=lambda r: r.seq)
    return segments, free, recovered


def create_segment(folder: Path, segment_bytes: int) -> Segment:
    """A new zero-filled segment file, flushed with its folder entry."""
    index = 0
    while True:
        path = folder / f"segment-{index:03d}.bin"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:  # in use, or being created by another thread
            index += 1
    try:
        # Written, not fallocated: an fdatasync into unwritten extents still commits metadata.
        for start in range(0, segment_bytes, len(_ZEROS)):
            os.write(fd, _ZEROS[: min(len(_ZEROS), segment_bytes - start)])
        os.fsync(fd)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return Segment(path, fd, segment_bytes)
