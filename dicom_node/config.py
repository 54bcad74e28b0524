"""The node's configuration: one typed object, loaded once at start and passed down.

``load_config`` reads ``config.yaml`` (or ``--config PATH`` / ``$DICOM_NODE_CONFIG``), validates
every key and raises ``ConfigError`` with messages that name the key, the bad value and the fix.
Nothing here is read at import time and nothing reloads on its own.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicom_node import tls as tls_files
from dicom_node.tls import PeerTlsConfig, TlsConfig
from dicom_node.worklist_config import NotifyConfig, TriageConfig

ENV_VAR = "DICOM_NODE_CONFIG"
DEFAULT_CONFIG = Path("config.yaml")

Port = Annotated[int, Field(ge=1, le=65535)]
ObjectType = Literal["seg", "sr", "sc", "kos"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and how to fix it."""


def _check_ae_title(value: str) -> str:
    # PS3.8 9.3.1: 1-16 characters of the default character repertoire, no backslash or control
    # characters, not all spaces. Leading/trailing spaces are not significant.
    stripped = value.strip()
    if not stripped or len(value) > 16:
        raise ValueError(f"must be 1 to 16 characters; got {value!r}")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ValueError(f"must be printable ASCII without backslash; got {value!r}")
    return stripped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    ae_title: str = "DURAL_AI"
    bind: str = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aets: list[str] = Field(default_factory=list)
    data_dir: Path = Path("var")
    min_free_disk_gb: float = Field(default=2.0, ge=0)
    max_associations: int = Field(default=16, ge=1, le=1000)
    #: Processes that serve concurrent associations (``dicom_node.receive_pool``); 1: the node's own only.
    receive_processes: int = Field(default=1, ge=1, le=64)
    acse_timeout_s: float = Field(default=30, gt=0)
    dimse_timeout_s: float = Field(default=60, gt=0)
    network_timeout_s: float = Field(default=60, gt=0)
    #: DICOM TLS: with it, ``port`` speaks TLS only (``dicom_node.tls``).
    tls: TlsConfig | None = None
    #: An unencrypted listener beside the TLS one, for modalities that cannot do TLS.
    plain_port: Port | None = None

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]

    @model_validator(mode="after")
    def _plain_port(self) -> "NodeConfig":
        if self.plain_port is not None and self.tls is None:
            raise ValueError("node.plain_port only applies beside node.tls (without tls:, node.port is already "
                             "plain DICOM); remove it")
        if self.plain_port is not None and self.plain_port == self.port:
            raise ValueError(f"node.plain_port must differ from node.port; both are {self.port}")
        return self


class TextRules(_Strict):
    """Regular expressions (Python ``re``, searched, case-insensitive) per header field."""

    series_description: list[str] = Field(default_factory=list)
    study_description: list[str] = Field(default_factory=list)
    body_part_examined: list[str] = Field(default_factory=list)

    @field_validator("series_description", "study_description", "body_part_examined")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"must be a valid regular expression; got {pattern!r} ({exc})")
        return patterns


class SeriesConfig(_Strict):
    quiet_seconds: float = Field(default=5, gt=0)
    min_slices: int = Field(default=10, ge=1)
    max_axial_angle_deg: float = Field(default=30, ge=0, le=90)
    #: Slice positions along the normal closer than this are duplicates. Gantry tilt and uneven
    #: spacing are analysed; duplicates and gaps are refused (segmenter.spacing).
    spacing_tolerance_mm: float = Field(default=0.1, gt=0)
    #: A series only counts as included when it matches every non-empty include list.
    include: TextRules = TextRules()
    #: Scouts, dose reports and bone/lung kernels carry no brain window worth segmenting.
    exclude: TextRules = TextRules(
        series_description=[r"scout|topogram|localizer|surview|dose|report|mip"],
    )


class Destination(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: Port
    send: list[ObjectType] = Field(default_factory=lambda: ["seg", "sr", "sc", "kos"])
    #: Transfer syntax UID to send in; the file's own syntax is always offered too.
    transfer_syntax: str = "1.2.840.10008.1.2.1"
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=5, gt=0)
    backoff_max_s: float = Field(default=600, gt=0)
    timeout_s: float = Field(default=30, gt=0)
    #: How ``dicom-node reprocess`` retrieves from this destination when it serves
    #: query/retrieve: ``move`` (C-MOVE to node.ae_title, C-GET when the PACS refuses) or
    #: ``get`` (C-GET only, for a PACS that cannot be told about the node).
    retrieve: Literal["move", "get"] = "move"
    #: DICOM TLS to this peer, for every association (store, echo, query/retrieve).
    tls: PeerTlsConfig | None = None

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))

    @field_validator("transfer_syntax")
    @classmethod
    def _known_syntax(cls, value: str) -> str:
        from pydicom.uid import UID

        if not UID(value).is_transfer_syntax:
            raise ValueError(f"must be a transfer syntax UID such as 1.2.840.10008.1.2.1; got {value!r}")
        return value


class QueueConfig(_Strict):
    broker_url: str = "embedded"
    #: Above the worst case of waiting in the batch lane plus a run, so that Redis does not
    #: hand an unacknowledged task to a second worker while the first is still busy.
    visibility_timeout_s: int = Field(default=4 * 3600, ge=60)
    soft_time_limit_s: int = Field(default=600, ge=1)
    time_limit_s: int = Field(default=900, ge=1)
    max_submissions: int = Field(default=3, ge=1)
    #: A running job whose worker has not beaten for this long is treated as lost: the time to
    #: live of the worker's Redis key (renewed every 2 s at most), or the age of its heartbeat
    #: file with the embedded queue.
    heartbeat_timeout_s: float = Field(default=60, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "embedded" and not re.match(r"^rediss?://", value):
            raise ValueError(f"must be 'embedded' or a redis:// URL; got {value!r}")
        return value

    @model_validator(mode="after")
    def _limits(self) -> "QueueConfig":
        if self.soft_time_limit_s >= self.time_limit_s:
            raise ValueError(
                f"queue.soft_time_limit_s must be below queue.time_limit_s; got "
                f"{self.soft_time_limit_s} >= {self.time_limit_s}"
            )
        if self.visibility_timeout_s <= self.time_limit_s:
            raise ValueError("queue.visibility_timeout_s must exceed queue.time_limit_s")
        return self


class ModelConfig(_Strict):
    #: None: the shipped weights in segmenter/weights/.
    weights: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1)
    #: bf16 autocast on the CPU. None: as the weights' manifest says (``bf16_cpu``). Worth
    #: turning on only where the CPU computes bf16 natively (AMX): see the README's model card.
    bf16: bool | None = None


class ResultsConfig(_Strict):
    #: Also render ``preview.png`` (the slice with the largest bleed) into each job's folder.
    #: Off by default: nothing on the way to the PACS reads it, and it costs time there.
    #: ``dicom-node demo`` turns it on; ``dicom-node process`` writes one unless ``--no-preview``.
    preview_png: bool = False


_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class ReprocessConfig(_Strict):
    """``dicom-node reprocess``: batch runs over studies already in the PACS."""

    #: Destination queried and retrieved from when ``--source`` is not given (the nightly timer).
    source: str | None = None
    #: A run without ``--since`` (the nightly timer) takes studies from this many days back.
    lookback_days: int = Field(default=1, ge=1)
    #: Studies whose retrieval may start per minute.
    studies_per_minute: float = Field(default=10, gt=0)
    #: Studies retrieved at the same time.
    max_concurrent_retrieves: int = Field(default=2, ge=1, le=16)
    #: "HH:MM-HH:MM" (local time, may wrap midnight): a run without ``--since`` starts no
    #: retrieval outside it and stops there, to go on at the next run. None: any time.
    hours: str | None = None
    #: Seconds between looks while stat work waits (retrievals pause meanwhile).
    stat_poll_s: float = Field(default=5, gt=0)
    #: How long a run waits for the analyses it queued before it reports them as pending.
    wait_s: float = Field(default=6 * 3600, ge=0)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None and not _HOURS.match(value):
            raise ValueError(f"must be HH:MM-HH:MM such as 20:00-06:00; got {value!r}")
        return value


class HttpConfig(_Strict):
    """The operator console, API, metrics and health probes (``dicom_node.console``)."""

    bind: str = "127.0.0.1"
    port: Port = 8080
    enabled: bool = True
    #: A browser session ends this long after login; then the token must be entered again.
    session_minutes: float = Field(default=480, gt=0)
    #: Mark the session cookie Secure (sent over HTTPS only): turn on behind a TLS proxy.
    cookie_secure: bool = False


class RetentionConfig(_Strict):
    """Purging the spool and result files of jobs with nothing left to deliver (``dicom_node.retention``)."""

    enabled: bool = True
    #: A job's files go this many days after its last change (its delivery, for most jobs).
    #: None: never by age.
    max_age_days: float | None = Field(default=30, gt=0)
    #: While the data folder's disk is fuller than this, jobs go oldest first whatever their
    #: age, until it is not. None: never for disk space.
    disk_high_water_percent: float | None = Field(default=90, gt=0, le=100)
    interval_minutes: float = Field(default=60, gt=0)


class AuditConfig(_Strict):
    """The audit trail in ``<data_dir>/audit/audit.jsonl`` (``dicom_node.observability.audit``)."""

    #: Size at which the file is rotated to ``audit.jsonl.1``.
    max_file_mb: float = Field(default=20, gt=0)
    #: Rotated files kept beside the current one.
    files_kept: int = Field(default=10, ge=1)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Strict):
    node: NodeConfig = NodeConfig()
    series: SeriesConfig = SeriesConfig()
    destinations: list[Destination] = Field(default_factory=list)
    queue: QueueConfig = QueueConfig()
    model: ModelConfig = ModelConfig()
    results: ResultsConfig = ResultsConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()
    audit: AuditConfig = AuditConfig()
    triage: TriageConfig = TriageConfig()
    notify: NotifyConfig = NotifyConfig()
    reprocess: ReprocessConfig = ReprocessConfig()

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        names = [d.name for d in self.destinations]
        for name in {n for n in names if names.count(n) > 1}:
            raise ValueError(f"destinations: name {name!r} is used twice; give each destination its own name")
        aets = [d.ae_title for d in self.destinations]
        for aet in {a for a in aets if aets.count(a) > 1}:
            raise ValueError(f"destinations: AE title {aet!r} is used twice; each peer needs its own AE title")
        if self.node.ae_title in aets:
            raise ValueError(
                f"destinations: AE title {self.node.ae_title!r} is the node's own node.ae_title; "
                "results would be sent to ourselves"
            )
        if self.reprocess.source is not None and self.reprocess.source not in names:
            raise ValueError(f"reprocess.source must be one of the names under destinations:; got "
                             f"{self.reprocess.source!r}")
        return self

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"destination must be one of the names under destinations:; got {name!r} ({known})")

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir


def _format(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or check its spelling")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)


def _check_data_dir(cfg: Config, source: str) -> None:
    path = cfg.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{source}: node.data_dir: cannot create {path} ({exc.strerror}); choose a writable folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{source}: node.data_dir: {path} is not writable by this user; fix its permissions")
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < 0:  # pragma: no cover - disk_usage never reports negative space
        raise ConfigError(f"{source}: node.data_dir: cannot read free space of {path}")


def _check_tls(cfg: Config, source: str, base_dir: Path | None) -> Config:
    """Resolve the ``tls:`` paths against ``base_dir`` and check their files."""
    node, dests = cfg.node, list(cfg.destinations)
    try:
        if node.tls is not None:
            if base_dir is not None:
                node = node.model_copy(update={"tls": tls_files.resolve(node.tls, base_dir)})
            tls_files.check_files(node.tls, "node.tls")
        for i, dest in enumerate(dests):
            if dest.tls is not None:
                if base_dir is not None:
                    dests[i] = dest = dest.model_copy(update={"tls": tls_files.resolve(dest.tls, base_dir)})
                tls_files.check_files(dest.tls, f"destinations.{i}.tls (destination {dest.name!r})")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg.model_copy(update={"node": node, "destinations": dests})


def parse_config(data: dict | None, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a mapping as read from YAML; relative paths are taken from ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must hold a mapping of sections (node:, series:, ...); got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None
    if base_dir is not None:
        node = cfg.node.model_copy(update={"data_dir": (base_dir / cfg.node.data_dir)})
        weights = cfg.model.weights
        model = cfg.model.model_copy(update={"weights": base_dir / weights if weights else None})
        cfg = cfg.model_copy(update={"node": node, "model": model})
    cfg = _check_tls(cfg, source, base_dir)
    _check_data_dir(cfg, source)
    return cfg


def resolve_config_path(path: str | Path | None = None) -> Path | None:
    """``--config`` wins over ``$DICOM_NODE_CONFIG``, which wins over ``./config.yaml``."""
    if path:
        return Path(path)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the configuration; embedded defaults when no file is found.

    Relative paths in the file (``node.data_dir``, ``model.weights``) are relative to the file's
    folder, so the node behaves the same whatever its working directory.
    """
    resolved = resolve_config_path(path)
    if resolved is None:
        return parse_config({}, "<embedded defaults>", Path.cwd())
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{resolved}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{resolved}: not valid YAML: {exc}") from None
    return parse_config(data, str(resolved), resolved.resolve().parent)
