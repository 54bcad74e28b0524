"""The job contract between the node and its workers: names, files and broker settings.

The node (which owns the ledger) and the workers (which may run on other hosts that mount the
same ``data_dir``) share only what this module defines:

- the task name :data:`TASK_NAME`, published on one of the :data:`LANES` with the arguments
  ``(job_id, "results/<job id>/job.json")``;
- ``results/<job id>/job.json``, a :class:`Manifest` the node writes;
- the heartbeat a worker keeps while it runs: with a Redis broker a key with a time to live
  (:func:`redis_heartbeat`), with the embedded queue the ``heartbeat`` file (:func:`heartbeat`),
  both from :mod:`dicom_node.heartbeats`;
- ``starts``, one line per task start (:func:`count_start`);
- ``outcome.json``, an :class:`Outcome` the worker writes last, atomically;
- the Celery/kombu settings both sides connect with (:func:`broker_options`).

Every path inside the files is relative to ``data_dir``, so the folder may be mounted anywhere
on a worker host as long as its own config names it. :data:`FORMAT` versions both documents;
each side refuses another one. No third-party imports, except kombu inside :func:`broker_options`.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.atomic import write_json_atomic
from dicom_node.heartbeats import (
    HEARTBEAT_INTERVAL_S, HEARTBEAT_KEY_PREFIX, heartbeat, heartbeat_age, heartbeat_interval, heartbeat_key,
    redis_heartbeat,
)
from dicom_node.names import HEARTBEAT_FILE, OUTCOME_FILE, RESULTS_DIR

if TYPE_CHECKING:
    from dicom_node.config import Config

__all__ = [
    "CT_FAMILY", "CT_IMAGE_STORAGE", "ENHANCED_CT_IMAGE_STORAGE", "FINAL_STATES", "FORMAT",
    "LANES", "LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE", "MANIFEST_FILE", "MODES", "STARTS_FILE",
    "TASK_NAME", "Manifest", "ManifestError", "Outcome", "broker_options", "count_start", "heartbeat",
    "HEARTBEAT_INTERVAL_S", "HEARTBEAT_KEY_PREFIX", "heartbeat_age", "heartbeat_interval", "heartbeat_key",
    "job_dir", "redis_heartbeat", "manifest_ref", "read_manifest", "read_outcome", "write_manifest",
    "write_outcome",
]  # fmt: skip

#: The node submits by this name and never imports the worker package.
TASK_NAME = "worker.tasks.segment_series"
#: Queue lanes, most urgent first. Workers consume them in this order (strictly: see
#: ``queue_order_strategy`` in :func:`broker_options`), which is more predictable than Redis
#: message priorities.
LANES = ("stat", "routine", "batch")
#: Version of the manifest and outcome layout.
FORMAT = 1
MANIFEST_FILE = "job.json"
#: One line per task start, so a series that kills its worker cannot be redelivered forever.
STARTS_FILE = "starts"
#: ``analyse`` runs the model; ``report`` only writes the status SR of a series the node decided.
MODES = ("analyse", "report")
#: The states an outcome may report.
FINAL_STATES = ("done", "failed", "not_analysed")

# SOP classes of CT images (PS3.4 B.5). Only the first is analysed; the family decides which
# failed series are CT, and so get a status report.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_FAMILY = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})


class ManifestError(ValueError):
    """A manifest is missing, unreadable or not of this format; the message says which file."""


def job_dir(data_dir: str | Path, job_id: int) -> Path:
    """``data_dir/results/<job id>``: the only folder a worker writes to for a job."""
    return Path(data_dir) / RESULTS_DIR / str(int(job_id))


def manifest_ref(job_id: int) -> str:
    """The manifest's path relative to ``data_dir``, as the task receives it."""
    return f"{RESULTS_DIR}/{int(job_id)}/{MANIFEST_FILE}"


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
        Queue lane it was submitted on (one of :data:`LANES`).
    mode:
        ``"analyse"`` runs the model; ``"report"`` only writes the status SR for a job the node
        already decided (``state`` and ``reason`` say what the report states).
    state, reason, fail_stage:
        For ``"report"``: ``"not_analysed"`` or ``"failed"``, why, and the failed stage.
    caveat:
        For ``"analyse"``: what the report must say about the series itself (its transfer was
        interrupted, so it may be incomplete); None when nothing.
    extra:
        Free-form annotations; nothing in the contract reads them.
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
    caveat: str | None = None
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
        if self.caveat is not None:
            key["caveat"] = self.caveat
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
                       caveat=data.get("caveat"), extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: not a valid job manifest ({exc})") from None


def read_manifest(path: str | Path) -> Manifest:
    """Read ``job.json``; raises ``ManifestError`` naming the file when it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the job manifest ({exc})") from None
    return Manifest.from_dict(data, str(path))


def write_manifest(data_dir: str | Path, manifest: Manifest) -> str:
    """Write ``manifest`` into its job folder; returns its path relative to ``data_dir``.

    A heartbeat left by an earlier task of the job is removed: it would read as "running".
    """
    folder = job_dir(data_dir, manifest.job_id)
    write_json_atomic(folder / MANIFEST_FILE, manifest.to_dict())
    (folder / HEARTBEAT_FILE).unlink(missing_ok=True)
    return manifest_ref(manifest.job_id)


@dataclass(frozen=True)
class Outcome:
    """What a worker made of one job (``outcome.json``), or of one series offline.

    Attributes
    ----------
    state:
        One of :data:`FINAL_STATES`.
    reason, fail_stage:
        Why a series was not analysed or failed, and at which stage (``load``, ``inference``,
        ``results``, ...).
    findings:
        Per class (``SDH``, ``EDH``): ``segmenter.findings.Finding.to_dict()``.
    model:
        ``segmenter.findings.ModelInfo.to_dict()`` of the model that ran (or would have).
    files:
        The result objects: ``type`` (seg, sr, sc, kos), ``path`` (relative to ``data_dir``),
        ``sop_class_uid``, ``sop_instance_uid``, ``series_uid``.
    timings:
        Seconds per stage, plus ``total``.
    started_at, finished_at, worker:
        When and where (``host:pid``) it ran.
    job_id, manifest_digest:
        The job and :attr:`Manifest.digest` it answers; absent for offline runs.
    inference_timings, excluded_components, preview:
        For analysed series: the model's own timings, the components the decision rule removed,
        and the PNG preview's path; absent otherwise.
    caveat:
        The manifest's caveat, as the report states it; absent when there was none.
    """

    state: str
    reason: str | None = None
    fail_stage: str | None = None
    findings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    files: tuple[dict[str, str], ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    job_id: int | None = None
    manifest_digest: str | None = None
    inference_timings: dict[str, float] | None = None
    excluded_components: tuple[dict[str, Any], ...] | None = None
    preview: str | None = None
    caveat: str | None = None

    _OPTIONAL = ("job_id", "manifest_digest", "inference_timings", "excluded_components", "preview", "caveat")

    def __post_init__(self) -> None:
        if self.state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}; got {self.state!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; optional keys that are not set are left out."""
        data: dict[str, Any] = {"format": FORMAT}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name in self._OPTIONAL:
                continue
            data[item.name] = [dict(v) for v in value] if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Outcome":
        """Parse an outcome document; raises ``ValueError`` when it is not one of this format."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT}; got {data.get('format') if isinstance(data, dict) else data!r}")
        known = {item.name for item in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["files"] = tuple(dict(f) for f in values.get("files") or ())
            if values.get("excluded_components") is not None:
                values["excluded_components"] = tuple(dict(e) for e in values["excluded_components"])
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"not an outcome document: {exc}") from None


def read_outcome(folder: str | Path, manifest: Manifest | None = None) -> Outcome | None:
    """The outcome in ``folder``, or None when there is none, it is unreadable, of another
    format, or (given ``manifest``) was made for a different manifest."""
    try:
        outcome = Outcome.from_dict(json.loads((Path(folder) / OUTCOME_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    if manifest is not None and outcome.manifest_digest != manifest.digest:
        return None
    return outcome


def write_outcome(folder: str | Path, outcome: Outcome) -> Path:
    """Write ``outcome.json`` atomically; its folder fsync also makes the result files durable."""
    return write_json_atomic(Path(folder) / OUTCOME_FILE, outcome.to_dict())


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


def broker_options(cfg: "Config") -> dict[str, Any]:
    """Celery settings shared by the node's publisher and the workers.

    ``visibility_timeout`` must exceed the worst-case wait plus run time: with ``acks_late`` an
    unacknowledged message older than this is handed to a second worker. ``priority`` keeps the
    lane order on every poll; kombu's default ``round_robin`` would rotate it for fairness and
    let a batch backlog delay a stat series.
    """
    from kombu import Queue

    return {
        "broker_url": cfg.queue.broker_url,
        "broker_transport_options": {
            "visibility_timeout": cfg.queue.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 5,
            # A publish on a half-open connection blocks the node's scheduler loop (assembly,
            # outcomes, deliveries) for this long, so it is short. Workers wait for messages
            # with BRPOP, which kombu bounds by its own 1 s brpop timeout, so 10 s never cuts
            # an idle consumer off either.
            "socket_timeout": 10,
        },
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(lane, routing_key=lane) for lane in LANES],
        "task_default_queue": LANES[0],
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # The node's loop must not hang on a dead broker: fail the publish fast and retry the
        # submission on its next pass instead.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 1},
    }
