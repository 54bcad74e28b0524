"""A float32 HU volume kept in a scratch file and read a slab of slices at a time.

A 600-slice thin series is 600 MiB of float32 HU; held in memory beside its decoded source
data sets and the network's working arrays, a worker's peak grew by several MiB a slice.
Here the volume lives in an anonymous file (``O_TMPFILE``: it has no name, and the kernel
frees it when the file is closed or the process dies, so a crash leaves nothing behind) and
every access is an explicit read of the slices it needs. Reads go through ``preadv`` into a
fresh array, not ``mmap``: mapped pages would count against the worker's resident memory until
unmapped, while the page cache behind plain reads is the kernel's to reclaim.

Indexing mirrors a numpy array for what the analysis needs: ``vol[k]`` is slice ``k``,
``vol[z0:z1]`` and ``vol[z0:z1, ys, xs]`` read slices ``z0..z1-1`` (step 1 along z).
``np.asarray(vol)`` reads the whole volume; only small volumes should be used that way.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SlabVolume"]

_DTYPE = np.dtype(np.float32)


class SlabVolume:
    """A (slices, rows, cols) float32 volume in an unnamed scratch file under ``folder``.

    Parameters
    ----------
    shape:
        ``(slices, rows, cols)``.
    folder:
        Where the scratch file is created (on the disk that holds the job, not a RAM-backed
        ``/tmp``); the file has no name there.
    """

    ndim = 3
    dtype = _DTYPE

    def __init__(self, shape: tuple[int, int, int], folder: str | os.PathLike[str]) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive sizes (slices, rows, cols); got {shape}")
        self.shape = tuple(int(v) for v in shape)
        self._plane = self.shape[1] * self.shape[2] * _DTYPE.itemsize
        self._file = tempfile.TemporaryFile(dir=Path(folder))
        os.ftruncate(self._file.fileno(), self.shape[0] * self._plane)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._plane

    def write_slice(self, k: int, hu: np.ndarray) -> None:
        """Store slice ``k`` (cast to float32; must be ``(rows, cols)``)."""
        plane = np.ascontiguousarray(hu, dtype=_DTYPE)
        if plane.shape != self.shape[1:]:
            raise ValueError(f"slice {k} must have shape {self.shape[1:]}; got {plane.shape}")
        if not 0 <= k < self.shape[0]:
            raise IndexError(f"slice {k} is outside 0..{self.shape[0] - 1}")
        view = memoryview(plane).cast("B")
        offset, done = k * self._plane, 0
        while done < len(view):
            done += os.pwrite(self._file.fileno(), view[done:], offset + done)

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0..z1-1`` as a new (z1 - z0, rows, cols) array (clipped to the volume)."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        out = np.empty((max(0, z1 - z0),) + self.shape[1:], _DTYPE)
        if out.size == 0:
            return out
        view = memoryview(out.reshape(-1)).cast("B")
        offset, done = z0 * self._plane, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"scratch volume ended early at byte {offset + done}")
            done += got
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= k < self.shape[0]:
                raise IndexError(f"slice {int(key)} is outside a volume of {self.shape[0]} slices")
            plane = self.read(k, k + 1)[0]
            return plane[rest] if rest else plane
        if isinstance(key, slice):
            z0, z1, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("a scratch volume is read in runs of whole slices (step 1)")
            block = self.read(z0, z1)
            return block[(slice(None),) + rest] if rest else block
        raise TypeError(f"index a scratch volume by an int or a slice along z; got {type(key).__name__}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SlabVolume":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
