"""The durable spool: every acknowledged instance ends up as one complete file.

Layout under ``node.data_dir``::

    tmp/<random>-<n>.part                      partial writes (removed by ``clean_tmp`` at start)
    spool/<study uid>/<series uid>/<sop uid>.dcm
    journal/segment-NNN.bin                    receive journal (:mod:`dicom_node.journal`)

A file only appears under ``spool/`` by ``os.replace`` from ``tmp/`` (same filesystem), so a
reader sees the whole file or none. ``put_file`` fsyncs the file before the rename and the folder
after it; the journal mover skips both (``put_copy``) because its instances stay in the
journal until one flush of the file system has made its spool files durable. No pydicom here:
callers hand over bytes.

Idempotency: storing the same SOP Instance UID twice replaces the file atomically (last write
wins, as a PACS does when an instance is resent); a reader never sees a mix of both versions.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

from dicom_node.atomic import fsync_dir
from dicom_node.names import DICOM_SUFFIX, SPOOL_DIR, TMP_DIR

logger = logging.getLogger(__name__)

#: PS3.5 9.1: digits and dots, components without leading zeros are not checked here (some
#: vendors emit them and they are still unique), at most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PART_SUFFIX = ".part"

WriteFn = Callable[[BinaryIO], None]
Payload = Union[bytes, bytearray, memoryview, BinaryIO, WriteFn]


def clean_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` as a UID safe to use as a path component.

    Trailing NUL and space padding (PS3.5 9.1) is removed; anything but digits and dots is
    refused rather than rewritten, so two different UIDs can never map to the same file.

    Raises
    ------
    ValueError
        When the value is empty, longer than 64 characters or not digits and dots.
    """
    text = str(value if value is not None else "").rstrip("\x00 ").strip()
    if not text or len(text) > 64 or not _UID.match(text):
        raise ValueError(f"{what} must be 1-64 digits and dots; got {text[:80]!r}")
    return text


class _GroupSync:
    """Folder fsync with group commit: one fsync covers every rename made before it started.

    Associations storing into the same series folder at once would otherwise queue one folder
    fsync each (several milliseconds apiece on a busy disk); here a caller whose rename is
    already covered by an fsync that started after it just waits for that one to finish.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: dict[Path, list[int]] = {}  # folder -> [tickets issued, tickets synced, running]

    def sync(self, folder: Path) -> None:
        with self._cond:
            state = self._state.setdefault(folder, [0, 0, 0])
            state[0] += 1
            ticket = state[0]
            while state[1] < ticket:
                if state[2]:
                    self._cond.wait()
                    continue
                state[2], target = 1, state[0]
                try:
                    self._cond.release()
                    try:
                        fsync_dir(folder)
                    finally:
                        self._cond.acquire()
                finally:
                    state[2] = 0
                    self._cond.notify_all()
                state[1] = target
            if state[0] == state[1] and not state[2]:
                self._state.pop(folder, None)


class Spool:
    """Atomic, fsynced instance storage under ``data_dir``.

    Parameters
    ----------
    data_dir : str or pathlib.Path
        The node's data folder; ``spool/`` and ``tmp/`` are created in it.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.spool_dir = self.data_dir / SPOOL_DIR
        self.tmp_dir = self.data_dir / TMP_DIR
        self._group_sync = _GroupSync()
        # Temporary names: random per Spool (several processes share tmp/), then a counter.
        self._tmp_prefix = uuid.uuid4().hex[:16] + "-"
        self._tmp_count = itertools.count()
        for path in (self.spool_dir, self.tmp_dir):
            self._makedirs(path)

    # -- paths ---------------------------------------------------------------------------
    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The final path of an instance; raises ``ValueError`` for unsafe UIDs."""
        return (self.spool_dir / clean_uid(study_uid, "StudyInstanceUID")
                / clean_uid(series_uid, "SeriesInstanceUID")
                / (clean_uid(sop_uid, "SOPInstanceUID") + DICOM_SUFFIX))

    def _makedirs(self, path: Path) -> None:
        """Create ``path`` and its missing parents, fsyncing each parent that gained an entry."""
        missing: list[Path] = []
        probe = path
        while not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # another association created it first; its creator fsyncs the parent
            fsync_dir(folder.parent)

    # -- writing -------------------------------------------------------------------------
    def put_file(self, study_uid: str, series_uid: str, sop_uid: str, data: Payload) -> Path:
        """Store one instance durably and return its path.

        Parameters
        ----------
        study_uid, series_uid, sop_uid : str
            Name the folder and file; sanitised with :func:`clean_uid`.
        data : bytes, binary file object or callable
            The complete file content; a callable receives the open temporary file and writes
            into it (so large payloads need not be joined in memory first).

        Returns
        -------
        pathlib.Path
            ``spool/<study>/<series>/<sop>.dcm``, complete and fsynced (file and folder).

        Raises
        ------
        ValueError
            A UID is not digits and dots.
        OSError
            The disk is full or not writable; the temporary file is removed first.
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        tmp = self._tmp_path()
        try:
            with open(tmp, "xb") as fh:
                if callable(data):
                    data(fh)
                elif isinstance(data, (bytes, bytearray, memoryview)):
                    fh.write(data)
                else:
                    shutil.copyfileobj(data, fh, 1 << 20)
                fh.flush()
                os.fsync(fh.fileno())
            self._place(tmp, final)
            self._group_sync.sync(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def put_copy(self, study_uid: str, series_uid: str, sop_uid: str, copy: Callable[[int], None]) -> Path:
        """``put_file`` without its two fsyncs, for a payload that ``copy(fd)`` writes into the new
        file's descriptor (the journal mover's ``copy_file_range``). The file is complete and
        atomically renamed but survives a power cut only after a later flush of the spool. No
        Python file object: its ``fstat``, ``isatty`` and ``lseek`` would double the system calls
        per instance."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        tmp = self._tmp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                copy(fd)
            finally:
                os.close(fd)
            self._place(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _tmp_path(self) -> Path:
        return self.tmp_dir / f"{self._tmp_prefix}{next(self._tmp_count)}{_PART_SUFFIX}"

    def _place(self, tmp: Path, final: Path) -> None:
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            # First instance of the series (or its folder was moved away meanwhile).
            self._makedirs(final.parent)
            os.replace(tmp, final)

    # -- start-up and housekeeping ----------------------------------------------------------
    def clean_tmp(self) -> int:
        """Remove partial writes left by a crash; returns how many files were removed."""
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(_PART_SUFFIX):
                os.unlink(entry.path)
                removed += 1
        if removed:
            fsync_dir(self.tmp_dir)
            logger.warning("removed partial writes from an earlier run", extra={"count": removed})
        return removed

    def free_gb(self) -> float:
        """Free space for this user on the spool's filesystem, in GB (1e9 bytes)."""
        return shutil.disk_usage(self.spool_dir).free / 1e9

    def iter_files(self) -> Iterator[Path]:
        """Every ``spool/<study>/<series>/<sop>.dcm`` file (for the start-up rescan)."""
        for study in sorted(os.scandir(self.spool_dir), key=lambda e: e.name):
            if not study.is_dir(follow_symlinks=False):
                continue
            for series in sorted(os.scandir(study.path), key=lambda e: e.name):
                if not series.is_dir(follow_symlinks=False):
                    continue
                for entry in sorted(os.scandir(series.path), key=lambda e: e.name):
                    if entry.name.endswith(DICOM_SUFFIX) and entry.is_file(follow_symlinks=False):
                        yield Path(entry.path)


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors that mean 'no space' (the sender should retry later)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
