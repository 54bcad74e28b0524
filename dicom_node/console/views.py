"""The console's read model: JSON-able documents for the worklist, a study and its series.

The HTML pages and ``/api/v1`` render the same documents, so the API carries everything the
dashboard shows. Times are ISO-8601 UTC strings; durations are seconds.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from dicom_node.console.identifiers import IdentifierCache
from dicom_node.httpstatus import iso
from dicom_node.ledger import OPEN_STATES, Delivery, Job, Ledger

#: Worklist order: most urgent first. A series without a result yet, or without an analysis,
#: may hide a bleed, so it ranks above a negative one.
CATEGORY_ORDER = ("critical", "positive", "failed", "not_analysed", "pending", "negative")
CLASSES = ("SDH", "EDH")
#: Named stages of a job's life: (name, from state, to state), timed by their first events.
STAGES = (("assembly", "received", "complete"), ("scheduling", "complete", "queued"),
          ("queue wait", "queued", "running"), ("analysis", "running", "done"),
          ("delivery", "done", "delivered"))


def job_category(job: Job) -> str:
    """The triage category recorded with the job's result, else what its state implies."""
    if job.triage:
        return job.triage
    outcome = job.outcome or job.state.value
    return outcome if outcome in ("failed", "not_analysed") else "pending"


def _rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def findings(job: Job) -> list[dict[str, Any]]:
    """Per class: present, volume (mL), largest thickness (mm), side and mean confidence."""
    found = (job.worker_outcome or {}).get("findings") or {}
    rows = []
    for name in CLASSES:
        item = found.get(name)
        if item is None:
            continue
        rows.append({"class": name, "present": bool(item.get("present")),
                     "volume_ml": round(float(item.get("volume_ml") or 0), 2),
                     "max_thickness_mm": round(float(item.get("max_thickness_mm") or 0), 1),
                     "laterality": item.get("laterality"),
                     "confidence": round(float(item.get("confidence") or 0), 3)})
    return rows


def timeline(events: list[tuple[str, float, str | None]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events with the seconds since the one before, and the named stages' latencies."""
    rows, previous = [], None
    first: dict[str, float] = {}
    for state, at, detail in events:
        rows.append({"state": state, "at": iso(at), "detail": detail,
                     "after_s": None if previous is None else round(at - previous, 3)})
        previous = at
        first.setdefault(state, at)
    if "done" not in first:  # a failed or not-analysed job ends its analysis there
        for end in ("failed", "not_analysed"):
            if end in first:
                first["done"] = first[end]
                break
    stages = [{"stage": name, "seconds": round(first[b] - first[a], 3)}
              for name, a, b in STAGES if a in first and b in first and first[b] >= first[a]]
    if "received" in first and "delivered" in first:
        stages.append({"stage": "total", "seconds": round(first["delivered"] - first["received"], 3)})
    return rows, stages


def _key_image_note(job: Job, has_seg: bool) -> str | None:
    """Why a series shows no key image (None when it has one)."""
    if not job.worker_outcome:
        return "no analysis result"
    if not any(f["present"] for f in findings(job)):
        return "no bleed found"
    return None if has_seg else "no segmentation was sent for this result"


def delivery_doc(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "destination": d.destination, "kind": d.kind, "state": d.state.value, "attempts": d.attempts,
            "last_error": d.last_error, "updated_at": iso(d.updated_at),
            "next_attempt_at": iso(d.next_attempt_at) if d.state.value == "pending" else None}


@dataclass
class Views:
    """Builds the documents from the ledger and the study identifiers.

    Parameters
    ----------
    ledger:
        The node's ledger (read; retries go through ``Ledger.retry_dead``).
    identifiers:
        Accession number and patient identifiers per study (read from the spool).
    data_dir:
        Where relative paths in the ledger point.
    """

    ledger: Ledger
    identifiers: IdentifierCache
    data_dir: Path

    def path(self, recorded: str | Path) -> Path:
        recorded = Path(recorded)
        return recorded if recorded.is_absolute() else self.data_dir / recorded

    # -- worklist ------------------------------------------------------------------------------
    def worklist(self, *, day: date | None = None, days: int = 7, state: str | None = None,
                 category: str | None = None, accession: str | None = None, limit: int = 200,
                 now: float | None = None) -> dict[str, Any]:
        """Studies that arrived on ``day`` (local time) or in the last ``days``, most urgent
        category first, then newest arrival first; filtered by a job state, a category and an
        accession number (case-insensitive substring)."""
        now = now or time.time()
        if day is not None:
            start = datetime.combine(day, datetime.min.time()).timestamp()
            end = datetime.combine(day + timedelta(days=1), datetime.min.time()).timestamp()
        else:
            start, end = now - days * 86400, None
        by_study: dict[str, list[Job]] = {}
        for job in self.ledger.current_jobs(start, end):
            by_study.setdefault(job.study_uid, []).append(job)
        rows = []
        for study_uid, jobs in by_study.items():
            if state and not any(j.state.value == state for j in jobs):
                continue
            row = self._study_row(study_uid, jobs)
            if category and row["category"] != category:
                continue
            if accession and accession.strip().lower() not in row["accession_number"].lower():
                continue
            rows.append(row)
        rows.sort(key=lambda r: (_rank(r["category"]), -r["_arrived"]))
        total = len(rows)
        for row in rows:
            del row["_arrived"]
        return {"generated_at": iso(now), "window": {"from": iso(start), "to": iso(end)}, "total": total,
                "studies": rows[:limit], "filters": {"state": state, "category": category,
                                                    "accession": accession or None}}

    def _study_row(self, study_uid: str, jobs: list[Job]) -> dict[str, Any]:
        category = min((job_category(j) for j in jobs), key=_rank)
        deliveries = Counter(d.state.value for j in jobs for d in self.ledger.deliveries(j.id))
        present = [f for j in jobs for f in findings(j) if f["present"]]
        arrived = min(j.created_at for j in jobs)
        return {"study_uid": study_uid, **self.identifiers.get(study_uid).to_dict(), "category": category,
                "arrived_at": iso(arrived), "updated_at": iso(max(j.updated_at for j in jobs)),
                "series": len(jobs), "states": dict(Counter(j.state.value for j in jobs)), "findings": present,
                "deliveries": {s: deliveries.get(s, 0) for s in ("sent", "pending", "dead")},
                "jobs": [j.id for j in jobs], "_arrived": arrived}

    # -- one study -----------------------------------------------------------------------------
    def study(self, study_uid: str) -> dict[str, Any] | None:
        """The study's identifiers and every current series in it; None when unknown."""
        jobs = self.ledger.current_jobs(study_uid=study_uid)
        if not jobs:
            return None
        row = self._study_row(study_uid, jobs)
        del row["_arrived"]
        row["series"] = [self.series(j) for j in sorted(jobs, key=lambda j: (_rank(job_category(j)), j.id))]
        return row

    def series(self, job: Job) -> dict[str, Any]:
        """Everything about one job: findings, key image, timeline, stage latencies, deliveries."""
        headers = self.ledger.headers_for_job(job.id)
        summary = next((h["summary"] for h in headers if h["summary"]), None) or {}
        events, stages = timeline(self.ledger.events(job.id))
        outcome = job.worker_outcome or {}
        model = outcome.get("model") or {}
        seg = next((f for f in job.files or [] if f.get("type") == "seg"), None)
        return {
            "job": job.id, "study_uid": job.study_uid, "series_uid": job.series_uid,
            "series_description": summary.get("series_description", ""), "instances": len(headers),
            "state": job.state.value, "category": job_category(job), "lane": job.lane,
            "reason": job.reason, "fail_stage": job.fail_stage, "report_error": job.report_error,
            "caveat": outcome.get("caveat"), "reanalysable": job.reanalysable,
            "submissions": job.submissions, "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
            "last_instance_at": iso(job.last_instance_at), "open": job.state in OPEN_STATES,
            "findings": findings(job), "model": {k: model.get(k) for k in ("name", "version") if k in model},
            "worker": outcome.get("worker"), "timings": outcome.get("timings") or {},
            "timeline": events, "stages": stages,
            "deliveries": [delivery_doc(d) for d in self.ledger.deliveries(job.id)],
            "files": [{"type": f.get("type"), "sop_instance_uid": f.get("sop_instance_uid")} for f in job.files or []],
            "key_image": seg is not None and any(f["present"] for f in findings(job)),
            "key_image_note": _key_image_note(job, seg is not None),
            "purged_at": iso(getattr(job, "purged_at", None)),
        }

    def seg_path(self, job: Job) -> Path | None:
        seg = next((f for f in job.files or [] if f.get("type") == "seg"), None)
        return None if seg is None else self.path(seg["path"])

    def source_path(self, sop_uid: str) -> Path | None:
        recorded = self.ledger.instance_path(sop_uid)
        return None if recorded is None else self.path(recorded)

    # -- problems ------------------------------------------------------------------------------
    def problems(self, limit: int = 100) -> dict[str, Any]:
        """Failed and not-analysed series and dead-lettered deliveries, newest first, with reasons."""
        def job_row(job: Job) -> dict[str, Any]:
            return {"job": job.id, "study_uid": job.study_uid, "series_uid": job.series_uid, "state": job.state.value,
                    "outcome": job.outcome, "fail_stage": job.fail_stage, "reason": job.reason, "report_error": job.report_error,
                    "reanalysable": job.reanalysable, "updated_at": iso(job.updated_at)}

        dead = self.ledger.deliveries(states=["dead"])[-limit:][::-1]
        study_of = {}
        for d in dead:
            if d.job_id not in study_of:
                study_of[d.job_id] = self.ledger.job(d.job_id).study_uid
        return {"failed": [job_row(j) for j in self.ledger.recent_outcomes(["failed"], limit)],
                "not_analysed": [job_row(j) for j in self.ledger.recent_outcomes(["not_analysed"], limit)],
                "dead_letters": [{**delivery_doc(d), "job": d.job_id, "study_uid": study_of[d.job_id]} for d in dead]}
