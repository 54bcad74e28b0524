"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every stage that hands a file to another (the node's job manifests and state file, a worker's
result objects and outcome, the preview PNG) writes it here: a temporary file in the same folder,
flushed and fsynced, renamed over the target with ``os.replace`` and, by default, the folder
fsynced so that the rename itself survives a power cut. The spool's receive path keeps its own
loop (it writes into ``tmp/`` and group-commits folder fsyncs) but shares :func:`fsync_dir`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["fsync_dir", "write_atomic", "write_json_atomic"]


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, making the renames and creations inside it durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *, sync: bool = True,
                 sync_folder: bool = True) -> Path:
    """Write ``path`` through a temporary file in the same folder.

    Parameters
    ----------
    path:
        The target; its folder is created when missing.
    write:
        Called with the open binary temporary file; writes the whole content.
    sync:
        fsync the file before the rename. Off only for files whose loss in a power cut costs
        nothing (the node's state file, rewritten every loop pass).
    sync_folder:
        fsync the folder after the rename. Off when a later write into the same folder syncs it
        (a worker's result objects, followed by the outcome).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        When the disk is full or not writable; the temporary file is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync and sync_folder:
        fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, data: Any, *, sync: bool = True) -> Path:
    """:func:`write_atomic` for a JSON document (keys sorted, so reruns give identical files)."""
    text = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(text), sync=sync)
