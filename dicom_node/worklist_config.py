"""The ``triage:`` and ``notify:`` sections of ``config.yaml``: lanes, critical thresholds and
the RIS and on-call receivers of results.

Validated with the rest of the configuration at start (``dicom_node.config``); messages name the
key and the fix. The webhook secrets themselves live in the environment, never in the file:
:func:`missing_secrets` lists the variables a node that sends needs and lacks.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_node.triage import EDH_CRITICAL_VOLUME_ML, SDH_CRITICAL_THICKNESS_MM

__all__ = ["CriticalThresholds", "Hl7Endpoint", "LaneRule", "NotifyConfig", "TriageConfig", "Webhook",
           "missing_secrets", "parse_hours"]

Port = Annotated[int, Field(ge=1, le=65535)]
#: The lanes of ``dicom_node.contract.LANES`` (a test keeps the two equal).
Lane = Literal["stat", "routine", "batch"]
#: ``dicom_node.triage.RESULT_CATEGORIES``.
Category = Literal["critical", "positive", "negative", "not_analysed", "failed"]
_HOURS = re.compile(r"^(\d{1,2})-(\d{1,2})$")
_NAME = r"^[A-Za-z0-9_.-]+$"
#: What a site's RIS receives when it has not said otherwise: HL7 table 0027 codes S (stat),
#: A (as soon as possible), R (routine).
DEFAULT_PRIORITY = {"critical": "S", "positive": "A", "negative": "R", "not_analysed": "R", "failed": "R"}
DEFAULT_ON: list[Category] = ["critical", "positive", "not_analysed", "failed"]

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hours(value: str) -> tuple[int, int]:
    """``"22-07"`` -> ``(22, 7)``: from the first hour up to, not including, the second (local
    time); a range past midnight wraps. Raises ``ValueError`` with the fix."""
    match = _HOURS.match(value.strip())
    if not match:
        raise ValueError(f"must be 'HH-HH' (e.g. '22-07', local time, end not included); got {value!r}")
    start, end = int(match.group(1)), int(match.group(2))
    if not (0 <= start <= 23 and 0 <= end <= 24) or start == end:
        raise ValueError(f"hours must run from 0-23 to 0-24 and differ; got {value!r}")
    return start, end


def _compile(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"must be a valid regular expression; got {pattern!r} ({exc})") from None
    return patterns


class LaneRule(_Strict):
    """One routing rule: every condition given must hold (AE titles exactly, text fields by a
    case-insensitive regular expression search, ``hours`` by the local hour of completion)."""

    lane: Lane
    calling_aets: list[str] = Field(default_factory=list)
    called_aets: list[str] = Field(default_factory=list)
    study_description: list[str] = Field(default_factory=list)
    series_description: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)
    station_name: list[str] = Field(default_factory=list)
    hours: str | None = None

    _patterns = field_validator("study_description", "series_description", "body_part",
                                "station_name")(lambda cls, v: _compile(v))

    @field_validator("calling_aets", "called_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [v.strip() for v in value]

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hours(value)
        return value

    @model_validator(mode="after")
    def _has_condition(self) -> "LaneRule":
        conditions = (self.calling_aets, self.called_aets, self.study_description, self.series_description,
                      self.body_part, self.station_name, self.hours)
        if not any(conditions):
            raise ValueError(f"a rule for lane {self.lane!r} must have at least one condition (calling_aets, "
                             "called_aets, study_description, series_description, body_part, station_name, "
                             "hours); use triage.default_lane for everything else")
        return self


class CriticalThresholds(_Strict):
    """A result is ``critical`` at or above either threshold (see ``dicom_node.triage``)."""

    sdh_thickness_mm: float = Field(default=SDH_CRITICAL_THICKNESS_MM, gt=0)
    edh_volume_ml: float = Field(default=EDH_CRITICAL_VOLUME_ML, gt=0)


class TriageConfig(_Strict):
    default_lane: Lane = "routine"
    rules: list[LaneRule] = Field(default_factory=list)
    critical: CriticalThresholds = CriticalThresholds()


class _Receiver(_Strict):
    """What every notification receiver has: a name, the categories it wants, the retry plan."""

    name: str = Field(min_length=1, max_length=40, pattern=_NAME)
    on: list[Category] = Field(default_factory=lambda: list(DEFAULT_ON))
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=5, gt=0)
    backoff_max_s: float = Field(default=600, gt=0)
    timeout_s: float = Field(default=10, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: object) -> object:
        # YAML 1.1 (PyYAML) reads the bare key ``on`` as the boolean true.
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class Hl7Endpoint(_Receiver):
    """A RIS that takes HL7 v2.5.1 ORU^R01 over MLLP."""

    host: str = Field(min_length=1)
    port: Port
    #: MSH-3..MSH-6.
    sending_application: str = "DURAL_AI"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    #: Category -> priority code sent in TQ1-9 and OBR-5 (HL7 table 0027: S, A, R, ...).
    priority: dict[Category, str] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY))

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: dict[str, str]) -> dict[str, str]:
        for category, code in value.items():
            if not re.match(r"^[A-Za-z0-9]{1,10}$", code):
                raise ValueError(f"priority.{category} must be a code of 1-10 letters or digits such as S, A or "
                                 f"R (HL7 table 0027); got {code!r}")
        return {**DEFAULT_PRIORITY, **value}


class Webhook(_Receiver):
    """An on-call system that takes a signed JSON POST."""

    url: str
    #: Name of the environment variable holding the shared HMAC secret.
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL; got {value!r}")
        return value

    def secret(self) -> bytes:
        """The shared secret from the environment; ``KeyError`` naming the variable when unset."""
        value = os.environ.get(self.secret_env)
        if not value:
            raise KeyError(f"notify.webhooks[{self.name}].secret_env: environment variable {self.secret_env} "
                           "must hold the shared secret; it is not set")
        return value.encode()


class NotifyConfig(_Strict):
    hl7: list[Hl7Endpoint] = Field(default_factory=list)
    webhooks: list[Webhook] = Field(default_factory=list)
    #: Base URL of this node's HTTP API as receivers reach it (links in the webhook body);
    #: None: built from ``http.bind`` and ``http.port``.
    api_url: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> "NotifyConfig":
        for kind, receivers in (("hl7", self.hl7), ("webhooks", self.webhooks)):
            names = [r.name for r in receivers]
            for name in sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"notify.{kind}: name {name!r} is used twice; give each receiver its own name")
        return self

    def receivers(self) -> list[tuple[str, Hl7Endpoint | Webhook]]:
        """``(kind, receiver)`` for every receiver, HL7 first."""
        return [("hl7", r) for r in self.hl7] + [("webhook", w) for w in self.webhooks]


def missing_secrets(notify: NotifyConfig) -> list[str]:
    """Messages for each webhook whose secret variable is not set (empty when all are)."""
    problems = []
    for hook in notify.webhooks:
        try:
            hook.secret()
        except KeyError as exc:
            problems.append(str(exc.args[0]))
    return problems
