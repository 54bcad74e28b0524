"""What a reprocess run does with each series the PACS holds: decided from the query alone.

A series is kept when the eligibility rules would accept it from the attributes a C-FIND returns
(Modality, the descriptions and BodyPartExamined matched against ``series.include``/``exclude``,
the instance count against ``series.min_slices``); the full checks run again on the retrieved
headers, as for any series. Then the ledger says whether the node has analysed it before, and
with which model.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from dicom_node.config import SeriesConfig
from dicom_node.eligibility import rules_problem
from dicom_node.headers import HeaderSummary
from dicom_node.ledger import Job, JobState, Ledger
from dicom_node.ledger.reprocessing import ALREADY_DONE, FOUND, INELIGIBLE

_OPEN = (JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING)
_ANALYSED = (JobState.DONE, JobState.DELIVERED)


@dataclass(frozen=True)
class Params:
    """One run's parameters; the same parameters resume the same run."""

    source: str
    since: dt.date | None = None
    until: dt.date | None = None
    accessions: tuple[str, ...] = ()
    force: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.accessions and self.since is None:
            raise ValueError("since must be given when no accession numbers are; got neither")
        if self.since and self.until and self.until < self.since:
            raise ValueError(f"until must not be before since; got {self.since} to {self.until}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1; got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(since=self.since and self.since.isoformat(), until=self.until and self.until.isoformat(),
                    accessions=list(self.accessions))
        return data

    @property
    def key(self) -> str:
        """Identifies the run in the ledger; accession numbers enter only as a digest."""
        data = self.to_dict()
        data["accessions"] = hashlib.sha256("\n".join(sorted(self.accessions)).encode()).hexdigest()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ModelIdentity:
    """The model the workers run now (``segmenter.findings.ModelInfo``'s version and hash)."""

    version: str
    weights_sha256: str

    def made(self, job: Job) -> bool:
        """Whether ``job``'s result came from this model (same weights; same version where the
        job's weights hash is unknown)."""
        model = (job.worker_outcome or {}).get("model") or {}
        sha = str(model.get("weights_sha256") or "")
        if sha and set(sha) != {"0"} and set(self.weights_sha256) != {"0"}:
            return sha == self.weights_sha256
        return str(model.get("version")) == self.version


def header_problem(series: dict[str, Any], study: dict[str, Any], cfg: SeriesConfig) -> str | None:
    """Why a series found by C-FIND cannot be analysed, judged from its attributes, or None."""
    modality = series.get("Modality") or "none"
    if modality != "CT":
        return f"modality must be CT; got {modality}"
    summary = HeaderSummary(sop_uid="", modality="CT", series_description=series.get("SeriesDescription") or "",
                            study_description=study.get("StudyDescription") or "",
                            body_part=series.get("BodyPartExamined") or "")
    problem = rules_problem([summary], cfg.include, cfg.exclude)
    if problem:
        return problem
    count = series.get("NumberOfSeriesRelatedInstances")
    if count is not None and count < cfg.min_slices:
        return f"too few slices: {count} (series.min_slices is {cfg.min_slices})"
    return None


def decide(ledger: Ledger, series_uid: str, model: ModelIdentity, force: bool) -> dict[str, Any]:
    """``action``, ``state``, ``reason`` and ``previous_job_id`` for an eligible series.

    - not in the ledger: retrieve it;
    - a job under way: follow it (nothing is fetched twice);
    - analysed by this model, or decided not analysable: already done, unless ``force``;
    - analysed by another model version, or failed: analyse again; the new result supersedes.
    """
    job = ledger.latest_job(series_uid)
    if job is None:
        return {"action": "retrieve", "state": FOUND, "reason": None, "previous_job_id": None}
    if job.state in _OPEN:
        return {"action": "follow", "state": FOUND, "reason": f"already {job.state.value} at the node",
                "previous_job_id": None}
    redo = {"action": "redo", "state": FOUND, "previous_job_id": job.id}
    if force:
        return {**redo, "reason": "--force"}
    if job.state in _ANALYSED:
        if model.made(job):
            return {"action": "skip", "state": ALREADY_DONE, "previous_job_id": job.id,
                    "reason": f"analysed by this model version ({model.version})"}
        old = ((job.worker_outcome or {}).get("model") or {}).get("version", "unknown")
        return {**redo, "reason": f"analysed by model version {old}; now {model.version}"}
    if job.state == JobState.NOT_ANALYSED:
        return {"action": "skip", "state": ALREADY_DONE, "previous_job_id": job.id,
                "reason": f"not analysed before: {job.reason}"}
    return {**redo, "reason": f"failed before: {job.reason}"}


def plan_study(ledger: Ledger, study: dict[str, Any], series: list[dict[str, Any]], cfg: SeriesConfig,
               model: ModelIdentity, force: bool, first_ordinal: int) -> list[dict[str, Any]]:
    """Rows for ``Ledger.add_reprocess_series``: one per series of the study, in series order."""
    rows = []
    ordered = sorted(series, key=lambda s: (s.get("SeriesNumber") is None, s.get("SeriesNumber") or 0,
                                            s.get("SeriesInstanceUID") or ""))
    for offset, item in enumerate(ordered):
        uid = item.get("SeriesInstanceUID")
        if not uid:
            continue
        row = {"series_uid": uid, "study_uid": study["StudyInstanceUID"], "ordinal": first_ordinal + offset,
               "instances": item.get("NumberOfSeriesRelatedInstances")}
        problem = header_problem(item, study, cfg)
        if problem:
            row.update(action="skip", state=INELIGIBLE, reason=problem, previous_job_id=None)
        else:
            row.update(decide(ledger, uid, model, force))
        rows.append(row)
    return rows


def in_hours(hours: str | None, now: dt.datetime) -> bool:
    """Whether local time ``now`` lies in ``HH:MM-HH:MM`` (which may wrap midnight); None: always."""
    if hours is None:
        return True
    start_text, end_text = hours.split("-")
    start = dt.time.fromisoformat(start_text)
    end = dt.time.fromisoformat(end_text)
    t = now.time()
    return start <= t < end if start < end else (t >= start or t < end)
