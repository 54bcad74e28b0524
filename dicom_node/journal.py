"""The receive journal: each instance made durable by one append and a shared fdatasync.

Writing every instance as its own spool file costs two flushes before the acknowledgement (the
file, then its folder) and the file system's metadata work for a new file. The receiver instead
appends the instance's file bytes as one record to a journal segment and answers Success once an
``fdatasync`` covering the record has returned. Segments are preallocated and zero-filled, so
that flush writes data only: no block allocation, no size change, no metadata.

Concurrent associations share flushes (group commit): a record written while another thread's
``fdatasync`` runs waits for it to end, and the next ``fdatasync`` covers every record written
meanwhile. A background mover (:mod:`dicom_node.journal_mover`) copies committed records into
the spool files the rest of the node reads and records them in the ledger; once every record of
a full segment is in the spool and the spool is flushed, the segment's first record is zeroed
and the segment is reused.

The record format and the segment files are in :mod:`dicom_node.journal_segments`.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

from dicom_node.journal_segments import (HEADER_BYTES, MAX_NAMES, Entry, Record, Segment, create_segment,
                                         encode_header, open_segments, payload_crc, read_segment)

__all__ = ["Entry", "Journal", "JournalUnavailable", "Record", "Segment", "read_segment"]

logger = logging.getLogger(__name__)

#: Bytes per segment file; an instance larger than a segment bypasses the journal.
SEGMENT_BYTES = 32 * 1024 * 1024
#: Segments created at most; appends wait for the mover when all are in use.
MAX_SEGMENTS = 8
#: Segments created when the journal opens; the mover adds one whenever none is free, up to
#: MAX_SEGMENTS, and segments are kept across restarts.
INITIAL_SEGMENTS = 1
#: Seconds an append waits for a free segment before the instance is refused (0xA700).
SPACE_TIMEOUT_S = 10.0


class JournalUnavailable(OSError):
    """The journal cannot take the record now (full for too long, closed, or a failed flush)."""


class Journal:
    """Append-only, group-committed record store in ``folder`` (``segment-NNN.bin`` files).

    Parameters
    ----------
    folder:
        Created when missing; existing segments are reused (read them with :meth:`recover`).
    segment_bytes, max_segments, initial_segments:
        Size of each segment file, the most segments to create, and how many to create at once.
    may_grow:
        Asked before a segment beyond the first is created, with its size: False leaves the disk
        space to the spool (the receiver passes its ``node.min_free_disk_gb`` check).
    """

    def __init__(self, folder: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES,
                 max_segments: int = MAX_SEGMENTS, initial_segments: int = INITIAL_SEGMENTS,
                 may_grow: Callable[[int], bool] = lambda nbytes: True) -> None:
        self.folder = Path(folder)
        self.may_grow = may_grow
        self.segment_bytes = segment_bytes
        self.max_segments = max(max_segments, 2)
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # segments, records for the mover, moves
        # Appends waiting for their flush wait here alone, so that the mover's frequent moves do
        # not wake every association thread (each wake-up contends for the interpreter lock).
        self._synced = threading.Condition(lock)
        # The mover waits here alone, woken when records arrive after a pause, when a batch is
        # full or when somebody waits for the moves: not at every flush while it lingers.
        self._mover_wakeup = threading.Condition(lock)
        self._mover_batch = 1
        self._segments, free, self._recovered = open_segments(self.folder, segment_bytes)
        self._free: deque[Segment] = deque(free)
        while len(self._segments) < min(initial_segments, self.max_segments) and may_grow(segment_bytes):
            self._segments.append(self._create())
            self._free.append(self._segments[-1])
        self._active: Segment | None = None
        # A new epoch per run: records an earlier run left behind a recycled head never chain on.
        self._epoch = secrets.randbits(64)
        self._next_seq = self._recovered[-1].seq + 1 if self._recovered else 1
        self._synced_seq = 0
        self._moved_seq = 0
        self._syncing = False
        self._pending: list[Record] = []  # written, awaiting fdatasync
        self._committed: deque[Record] = deque()  # durable, awaiting the mover
        self._failure: str | None = None
        self._closed = False
        self._waiting_moved = 0
        self._creating = 0
        self._unmoved_bytes = sum(r.length for r in self._recovered)

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> list[Record]:
        """Every valid record an earlier run left in the segments, oldest first.

        The caller moves them into the spool and reports them with :meth:`moved`; their segments
        then show up in :meth:`recyclable`.
        """
        records, self._recovered = self._recovered, []
        return records

    def _create(self) -> Segment:
        return create_segment(self.folder, self.segment_bytes)

    # -- appending -----------------------------------------------------------------------------
    def fits(self, nbytes: int) -> bool:
        """Whether a payload of ``nbytes`` fits in one segment with its header (never while the
        journal has no segment: a first start on a nearly full disk)."""
        return bool(self._segments) and HEADER_BYTES + MAX_NAMES + nbytes <= self.segment_bytes

    def append(self, entry: Entry, parts: Sequence[bytes | bytearray | memoryview],
               timeout: float = SPACE_TIMEOUT_S) -> Record:
        """Write one record and return once it is durable (flushed by this or another thread).

        Raises
        ------
        JournalUnavailable
            No segment became free within ``timeout``, the journal is closed, or a flush failed
            (the record may or may not be durable: it was not acknowledged, the sender resends).
        OSError
            The write itself failed; nothing was appended.
        """
        names = entry.encode()
        if len(names) > MAX_NAMES:
            raise ValueError(f"record names must be at most {MAX_NAMES} bytes; got {len(names)}")
        length = sum(len(p) for p in parts)
        crc = payload_crc(parts)
        size = HEADER_BYTES + len(names) + length
        with self._cond:
            segment = self._reserve(size, time.monotonic() + timeout)
            seq, offset = self._next_seq, segment.write_pos
            head = encode_header(names, self._epoch, seq, length, entry.received_at, crc)
            _write_all(segment.fd, [head, names, *parts], offset)  # under the lock: appends stay in order
            self._next_seq += 1
            segment.write_pos += size
            segment.unmoved += 1
            self._unmoved_bytes += length
            segment.dirty = True
            record = Record(seq, entry, segment, offset + HEADER_BYTES + len(names), length)
            self._pending.append(record)
            self._commit(seq)
        return record

    def _reserve(self, size: int, deadline: float) -> Segment:
        if size > self.segment_bytes:
            raise ValueError(f"record must fit in one segment ({self.segment_bytes} bytes); got {size}")
        while True:
            self._check_open()
            active = self._active
            if active is not None and active.write_pos + size <= active.size:
                return active
            if active is not None:  # full: the mover recycles it once its records are moved
                self._active = None
                self._mover_wakeup.notify()
            if self._free:
                self._active = self._free.popleft()
                continue
            if len(self._segments) + self._creating < self.max_segments and self.may_grow(self.segment_bytes):
                self._segments.append(self._create())
                self._active = self._segments[-1]
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise JournalUnavailable(errno.ENOSPC, "receive journal full: the spool mover is behind")
            self._cond.wait(left)

    def _commit(self, seq: int) -> None:
        """Wait (lock held) until ``seq`` is flushed, flushing for every waiter when nobody is."""
        while self._synced_seq < seq:
            self._check_open(closing_ok=True)
            if self._syncing:
                self._synced.wait()
                continue
            self._syncing = True
            batch, self._pending = self._pending, []
            dirty = [s for s in self._segments if s.dirty]
            for segment in dirty:
                segment.dirty = False
            self._cond.release()
            failure = None
            try:
                for segment in dirty:
                    os.fdatasync(segment.fd)
            except OSError as exc:
                failure = exc
            finally:
                self._cond.acquire()
                self._syncing = False
                self._synced.notify_all()
            if failure is not None:
                # After a failed flush the page cache no longer says what is on disk: take nothing more.
                self._failure = f"journal flush failed: {failure}"
                logger.error("receive journal flush failed; refusing instances until restart",
                             extra={"error": str(failure)})
                self._cond.notify_all()  # wait_moved gives up
                raise JournalUnavailable(failure.errno or errno.EIO, self._failure)
            self._synced_seq = batch[-1].seq if batch else self._synced_seq
            first = not self._committed
            self._committed.extend(batch)
            if batch and (first or len(self._committed) >= self._mover_batch or self._waiting_moved):
                self._mover_wakeup.notify()

    def _check_open(self, closing_ok: bool = False) -> None:
        if self._failure is not None:
            raise JournalUnavailable(errno.EIO, self._failure)
        if self._closed and not closing_ok:
            raise JournalUnavailable(errno.ESHUTDOWN, "receiver stopping; retry later")

    # -- the mover's side ------------------------------------------------------------------------
    def take(self, timeout: float, batch: int = 1, linger: float = 0.0) -> list[Record]:
        """Committed records not yet taken, oldest first.

        Waits up to ``timeout`` for the first, then up to ``linger`` seconds more while fewer than
        ``batch`` are there and nobody waits in :meth:`wait_moved` (larger batches cost the mover
        less per record: one ledger transaction, fewer wake-ups).
        """
        with self._cond:
            self._mover_batch = batch
            deadline = time.monotonic() + timeout
            while not self._committed and not self._closed and time.monotonic() < deadline:
                self._mover_wakeup.wait(deadline - time.monotonic())
            deadline = time.monotonic() + linger
            while (self._committed and len(self._committed) < batch and not self._closed
                   and not self._waiting_moved and time.monotonic() < deadline):
                self._mover_wakeup.wait(deadline - time.monotonic())
            taken = list(self._committed)
            self._committed.clear()
            return taken

    def moved(self, records: Sequence[Record]) -> None:
        """The records are in the spool and the ledger (not necessarily flushed yet)."""
        with self._cond:
            for record in records:
                record.segment.unmoved -= 1
                self._unmoved_bytes -= record.length
                self._moved_seq = max(self._moved_seq, record.seq)
            self._cond.notify_all()

    def recyclable(self) -> list[Segment]:
        """Used segments no longer appended to whose records are all moved."""
        with self._cond:
            return [s for s in self._segments
                    if s is not self._active and s not in self._free and s.write_pos and not s.unmoved]

    def add_spare(self) -> bool:
        """Create a segment when none is free and fewer than the maximum exist; True if it did.

        The mover calls this, so that appends seldom wait for a new segment's zeros.
        """
        with self._cond:
            if self._free or len(self._segments) + self._creating >= self.max_segments:
                return False
            self._creating += 1
        if not self.may_grow(self.segment_bytes):
            with self._cond:
                self._creating -= 1
            return False
        try:
            segment = self._create()
        finally:
            with self._cond:
                self._creating -= 1
        with self._cond:
            self._segments.append(segment)
            self._free.append(segment)
            self._cond.notify_all()
        return True

    def seal_if_moved(self) -> None:
        """Stop appending to the active segment when all its records are moved (the node is
        idle), so that it can be recycled instead of keeping moved records until it fills."""
        with self._cond:
            active = self._active
            if active is not None and active.write_pos and not active.unmoved and not self._syncing:
                self._active = None

    def recycle(self, segment: Segment) -> None:
        """Zero the segment's first record and make it free; only once its records are flushed
        into the spool (a crash before this replays them again, which rewrites the same bytes)."""
        os.pwrite(segment.fd, bytes(HEADER_BYTES), 0)
        os.fdatasync(segment.fd)
        with self._cond:
            segment.write_pos = 0
            if segment not in self._free:
                self._free.append(segment)
            self._cond.notify_all()

    def free_segments(self) -> int:
        """Segments ready for appending, plus those that may still be created (none while the
        disk has no room for another, see ``may_grow``)."""
        with self._cond:
            free, creatable = len(self._free), self.max_segments - len(self._segments) - self._creating
        return free + (creatable if creatable > 0 and self.may_grow(self.segment_bytes) else 0)

    def unmoved_bytes(self) -> int:
        """Bytes of acknowledged instances not yet in the spool: disk space they will still take."""
        return self._unmoved_bytes

    def idle(self) -> bool:
        """Nothing written that the mover has not taken."""
        with self._cond:
            return not (self._syncing or self._pending or self._committed)

    def wait_moved(self, timeout: float) -> bool:
        """Wait until every record committed so far is moved; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._synced_seq
            self._waiting_moved += 1
            self._mover_wakeup.notify()  # a lingering mover moves what it has now
            try:
                while self._moved_seq < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._failure is not None:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._waiting_moved -= 1

    def close(self) -> None:
        """Refuse new appends; appends already waiting for a flush still complete."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._mover_wakeup.notify_all()
            self._synced.notify_all()

    def release(self) -> None:
        """Close the segment files (after the mover has finished)."""
        with self._cond:
            for segment in self._segments:
                os.close(segment.fd)
            self._segments.clear()

    def iter_state(self) -> Iterator[tuple[str, int, int]]:
        """(file name, bytes written, records not yet moved) per segment, for status and tests."""
        with self._cond:
            for segment in self._segments:
                yield segment.path.name, segment.write_pos, segment.unmoved


def _write_all(fd: int, parts: list[bytes | bytearray | memoryview], offset: int) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
