"""Moves committed receive-journal records into the spool and the ledger, and recycles segments.

The receiver acknowledges an instance once its journal record is flushed
(:mod:`dicom_node.journal`); this thread turns records into what the rest of the node reads: a
spool file (written and renamed without fsync) and a ledger row. The spool file is made durable
in bulk: before a segment is recycled, one ``syncfs`` flushes the spool's file system (an fsync of
every file and folder written where ``syncfs`` is missing), so a power cut never loses an instance
that is neither flushed in the spool nor still in the journal.

Recycling waits for a quiet moment (:data:`IDLE_RECYCLE_S` without new records) unless fewer
than :data:`MIN_FREE_SEGMENTS` segments are free. During a burst the ``syncfs`` would write back
every spool file moved so far while the receivers wait for their own flushes behind it: the
journal holds the burst instead, and the spool files are written to disk once, afterwards.

At start, :meth:`JournalMover.replay` moves what a crashed run left in the journal before the
receiver listens again. Replaying a record that was already moved rewrites the same bytes and
finds the ledger row present; segments are recycled as soon as the node is idle, so only records
of the last moments before a crash are ever replayed twice.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from dicom_node.journal import Journal, Record
from dicom_node.ledger import Ledger
from dicom_node.logs import short_uid
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

#: Seconds without new records after which a partly used segment whose records are all moved is
#: recycled, so that moved records do not wait in the journal for the segment to fill.
IDLE_RECYCLE_S = 1.0
#: Free segments below which used ones are recycled at once, even while records keep arriving.
MIN_FREE_SEGMENTS = 2
#: Seconds between retries after a failure to move (disk full, ledger locked).
RETRY_S = 1.0
#: Instances recorded per ledger transaction at most, and the batch the mover waits for...
LEDGER_BATCH = 64
#: ...for at most this many seconds after the first record (not while a release waits for it).
LINGER_S = 0.01

_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


class JournalMover:
    """The background step between the journal and the spool.

    Parameters
    ----------
    journal, spool, ledger:
        Where records come from, where their files go, where they are recorded.
    """

    def __init__(self, journal: Journal, spool: Spool, ledger: Ledger) -> None:
        self.journal, self.spool, self.ledger = journal, spool, ledger
        self._unflushed: list[Path] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: str | None = None

    # -- start-up ------------------------------------------------------------------------------
    def replay(self) -> int:
        """Move the records a previous run left in the journal; returns how many."""
        records = self.journal.recover()
        try:
            if records:
                self._move(records)
                logger.warning("replayed acknowledged instances from the receive journal",
                               extra={"count": len(records)})
            self._recycle(idle=True)
        except OSError as exc:
            # They stay in the journal; refusing to start beats accepting more on a broken disk.
            logger.error("cannot replay the receive journal into the spool; free disk space or fix the disk "
                         "and start again", extra={"waiting": len(records), "error": str(exc)})
            raise
        return len(records)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal-mover", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new records, move every committed one, flush the spool, recycle, close."""
        self.journal.close()
        deadline = time.monotonic() + timeout
        while not self.journal.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 1.0))
            if self._thread.is_alive():
                logger.error("journal mover did not finish in time; the journal is replayed at the next start")
                return
        try:
            self._move(self.journal.take(0))
            self._recycle(idle=True)
        except Exception:  # noqa: BLE001 - what is left is replayed at the next start
            logger.exception("cannot empty the receive journal at stop; it is replayed at the next start")
        self.journal.release()

    def status(self) -> dict[str, Any]:
        return {"journal_error": self._error,
                "journal_unmoved": sum(unmoved for _, _, unmoved in self.journal.iter_state())}

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        backlog: list[Record] = []
        idle_since = time.monotonic()
        while not self._stop.is_set():
            try:
                backlog += self.journal.take(0.0 if backlog else 0.2, batch=LEDGER_BATCH, linger=LINGER_S)
                if backlog:
                    self._move(backlog)
                    backlog = []
                    idle_since = time.monotonic()
                idle = time.monotonic() - idle_since >= IDLE_RECYCLE_S
                self._recycle(idle=idle)
                self._add_spare()
                if self._error is not None:
                    logger.info("journal mover recovered")
                    self._error = None
            except Exception as exc:  # noqa: BLE001 - the records stay in the journal; try again
                if self._error != repr(exc):
                    logger.exception("cannot move journal records into the spool; retrying",
                                     extra={"waiting": len(backlog)})
                self._error = repr(exc)
                self._stop.wait(RETRY_S)

    def _add_spare(self) -> None:
        try:
            self.journal.add_spare()
        except OSError as exc:  # the journal still works with the segments it has
            logger.warning("cannot create a spare receive journal segment", extra={"error": str(exc)})

    def _move(self, records: Sequence[Record]) -> None:
        """Spool file, then ledger row, for each record; safe to repeat after a failure."""
        rows = []
        for record in records:
            entry = record.entry
            path = self.spool.put_copy(entry.study_uid, entry.series_uid, entry.sop_uid,
                                       lambda fd, r=record: _copy_out(r, fd))
            self._unflushed.append(path)
            rows.append((entry.sop_uid, entry.study_uid, entry.series_uid, entry.sop_class_uid, path,
                         entry.assoc_id, entry.received_at))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("moved", extra={"sop": short_uid(entry.sop_uid), "seq": record.seq})
        for start in range(0, len(rows), LEDGER_BATCH):
            self.ledger.record_instances(rows[start:start + LEDGER_BATCH])
        self.journal.moved(records)

    def _recycle(self, idle: bool = False) -> None:
        if idle:
            self.journal.seal_if_moved()
        elif self.journal.free_segments() >= MIN_FREE_SEGMENTS:
            return  # busy, with room left: recycle when it is quiet (see the module docstring)
        segments = self.journal.recyclable()
        if not segments:
            return
        self._flush_spool()
        for segment in segments:
            self.journal.recycle(segment)

    def _flush_spool(self) -> None:
        """Make every spool file moved so far durable."""
        if _syncfs is not None:
            fd = os.open(self.spool.spool_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"syncfs: {os.strerror(err)}")
            finally:
                os.close(fd)
        else:  # pragma: no cover - Linux has syncfs
            from dicom_node.atomic import fsync_dir

            for path in self._unflushed:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in {p.parent for p in self._unflushed}:
                fsync_dir(folder)
        self._unflushed = []


def _copy_out(record: Record, dst: int) -> None:
    """Copy the record's payload into the open file ``dst`` (in the kernel where it can)."""
    src, offset, left = record.segment.fd, record.offset, record.length
    while left:
        try:
            n = os.copy_file_range(src, dst, left, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = 0
        if n <= 0:
            chunk = os.pread(src, min(left, 1 << 22), offset)
            if not chunk:
                raise OSError(errno.EIO, f"journal record {record.seq} ends early")
            n = os.write(dst, chunk)
        offset += n
        left -= n
