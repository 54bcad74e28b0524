"""The files a worker reads and writes in ``results/<job id>/``: the job manifest, the outcome,
the heartbeat and the start counter.

The node (which owns the ledger) and the workers (which may run on other hosts that mount the
same ``data_dir``) talk only through these files and the task name: the node writes
``job.json`` and submits ``(job_id, "results/<job id>/job.json")``; the worker touches
``heartbeat`` while it runs and writes ``outcome.json`` last, atomically. Every path inside
them is relative to ``data_dir`` so the folder may be mounted anywhere on a worker host as long
as its own config names it.

This module is plain standard library: the node side (``dicom_node.submit``) writes manifests
and reads outcomes as JSON without importing it, and the format version below guards both.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from dicom_node.names import HEARTBEAT_FILE, OUTCOME_FILE, RESULTS_DIR

__all__ = [
    "FORMAT", "MANIFEST_FILE", "STARTS_FILE", "Manifest", "ManifestError", "count_start", "heartbeat",
    "job_dir", "read_manifest", "read_outcome", "write_json_atomic",
]

#: Version of the manifest and outcome layout; both sides refuse another one.
FORMAT = 1
MANIFEST_FILE = "job.json"
#: One line per task start, so a series that kills its worker cannot be redelivered forever.
STARTS_FILE = "starts"
MODES = ("analyse", "report")
STATES = ("done", "failed", "not_analysed")


class ManifestError(ValueError):
    """A manifest is missing, unreadable or not of this format; the message says which file."""


def job_dir(data_dir: str | Path, job_id: int) -> Path:
    """``data_dir/results/<job id>``: the only folder a worker writes to for a job."""
    return Path(data_dir) / RESULTS_DIR / str(int(job_id))


@dataclass(frozen=True)
class Manifest:
    """What to do for one job, as written by the node.

    Attributes
    ----------
    job_id:
        Ledger job id.
    series_uid, study_uid:
        The source series and its study.
    instances:
        Paths of the series' files relative to ``data_dir`` (sorted).
    lane:
        Queue lane it was submitted on (``stat``, ``routine`` or ``batch``).
    mode:
        ``"analyse"`` runs the model; ``"report"`` only writes the status SR for a job the node
        already decided (``state`` and ``reason`` say what the report states).
    state, reason, fail_stage:
        For ``"report"``: ``"not_analysed"`` or ``"failed"``, why, and the failed stage.
    """

    job_id: int
    series_uid: str
    study_uid: str
    instances: tuple[str, ...]
    lane: str = "stat"
    mode: str = "analyse"
    state: str | None = None
    reason: str | None = None
    fail_stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ManifestError(f"mode must be one of {MODES}; got {self.mode!r} (job {self.job_id})")
        if self.mode == "report" and self.state not in ("failed", "not_analysed"):
            raise ManifestError(f"a report manifest must state failed or not_analysed; got {self.state!r}")
        for path in self.instances:
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise ManifestError(f"instances must be relative to data_dir; got {path!r} (job {self.job_id})")

    @property
    def digest(self) -> str:
        """SHA-256 over what decides the result (not the lane), to recognise a finished job."""
        key = {"job_id": self.job_id, "series_uid": self.series_uid, "instances": sorted(self.instances),
               "mode": self.mode, "state": self.state, "reason": self.reason, "fail_stage": self.fail_stage}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["instances"] = list(self.instances)
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<manifest>") -> "Manifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ManifestError(f"{source}: format must be {FORMAT}; got {got!r} (node and worker versions differ?)")
        try:
            return cls(job_id=int(data["job_id"]), series_uid=str(data["series_uid"]),
                       study_uid=str(data["study_uid"]), instances=tuple(data["instances"]),
                       lane=str(data.get("lane", "stat")), mode=str(data.get("mode", "analyse")),
                       state=data.get("state"), reason=data.get("reason"), fail_stage=data.get("fail_stage"),
                       extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: not a valid job manifest ({exc})") from None


def read_manifest(path: str | Path) -> Manifest:
    """Read ``job.json``; raises ``ManifestError`` naming the file when it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the job manifest ({exc})") from None
    return Manifest.from_dict(data, str(path))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], *, sync_folder: bool = True) -> Path:
    """Write ``path`` through a temporary file in the same folder: ``write(handle)``, fsync,
    rename over ``path`` and (by default) fsync the folder, so a reader sees the old file or the
    whole new one, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> Path:
    """``write_atomic`` for a JSON document."""
    text = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(text))


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_outcome(folder: str | Path, manifest: Manifest | None = None) -> dict[str, Any] | None:
    """The outcome in ``folder``, or None when there is none, it is unreadable, of another
    format, or (given ``manifest``) was made for a different manifest."""
    try:
        data = json.loads((Path(folder) / OUTCOME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("state") not in STATES:
        return None
    if manifest is not None and data.get("manifest_digest") != manifest.digest:
        return None
    return data


def count_start(folder: str | Path) -> int:
    """Record one start of a job's task and return how many there have been.

    ``O_APPEND`` of a short line is atomic on local filesystems and NFS appends from one client,
    which is enough for a guard that only has to stop an endless loop.
    """
    path = Path(folder) / STARTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{time.time():.3f} {socket.gethostname()} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return len(path.read_bytes().splitlines())


@contextlib.contextmanager
def heartbeat(folder: str | Path, interval_s: float = 2.0) -> Iterator[Path]:
    """Touch ``folder/heartbeat`` now and every ``interval_s`` until the block ends.

    The node reads the file's mtime: fresh means running, stale means the worker died.
    """
    path = Path(folder) / HEARTBEAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    stamp = f"{socket.gethostname()} {os.getpid()}\n"

    staging = path.with_name(f".{HEARTBEAT_FILE}.{os.getpid()}.tmp")

    def touch() -> None:
        # Rename over the file rather than rewrite it: a reader (the node, a watchdog script)
        # must never catch it truncated and empty. No fsync: only the mtime matters, and only
        # while this process lives.
        staging.write_text(stamp, encoding="utf-8")
        os.replace(staging, path)

    def beat() -> None:
        while True:
            try:
                touch()
            except OSError:
                pass  # a full disk must not kill the job; the node then sees a stale heartbeat
            if stop.wait(interval_s):
                return

    touch()
    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=interval_s + 1)
