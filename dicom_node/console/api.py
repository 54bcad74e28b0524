"""``/api/v1``: the JSON behind every page of the console (documents from ``console.views``)."""
from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from dicom_node.console import actions
from dicom_node.console.auth import api_user
from dicom_node.httpstatus import iso
from dicom_node.observability import audit
from dicom_node.retention import retention_status

router = APIRouter(prefix="/api/v1", tags=["api"], dependencies=[Depends(api_user)])
legacy = APIRouter(tags=["api"], dependencies=[Depends(api_user)])

State = Literal["received", "complete", "queued", "running", "done", "failed", "not_analysed", "delivered"]
Category = Literal["critical", "positive", "failed", "not_analysed", "pending", "negative"]


@router.get("/studies", summary="Worklist: studies by triage category, then newest arrival")
def studies(request: Request, day: date | None = Query(None, alias="date", description="arrival day (local), YYYY-MM-DD"),
            days: int = Query(7, ge=1, le=3660, description="without date: arrivals in the last N days"),
            state: State | None = Query(None, description="studies with a series in this state"),
            category: Category | None = None,
            accession: str | None = Query(None, max_length=64, description="accession number contains (any case)"),
            limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
    console = request.app.state.console
    audit.record("worklist_viewed", token_name=request.state.user, api=True, searched=bool(accession))
    return console.views.worklist(day=day, days=days, state=state, category=category, accession=accession,
                                  limit=limit, now=console.clock())


@router.get("/studies/{study_uid}", summary="One study: its series, findings, timelines and deliveries")
def study(request: Request, study_uid: str) -> dict[str, Any]:
    doc = request.app.state.console.views.study(study_uid)
    if doc is None:
        raise HTTPException(404, "no such study on this node")
    audit.record("study_viewed", token_name=request.state.user, api=True, study_uid=study_uid)
    return doc


@router.get("/jobs/{job_id}", summary="One series' job: findings, key image, timeline, stage latencies, deliveries")
def job(request: Request, job_id: int) -> dict[str, Any]:
    console = request.app.state.console
    doc = console.views.series(actions.job_or_404(console, job_id))
    audit.record("job_viewed", token_name=request.state.user, api=True, job=job_id)
    return doc


@router.get("/jobs/{job_id}/key-image.png", summary="Key image (PNG), rendered from the SEG and the source slice",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def key_image(request: Request, job_id: int, overlay: bool = True) -> Response:
    return actions.key_image(request.app.state.console, job_id, overlay)


@router.post("/jobs/{job_id}/retry", summary="Requeue the job's dead-lettered deliveries (or one, by id)")
def retry(request: Request, job_id: int, delivery: int | None = None) -> dict[str, Any]:
    count = actions.retry(request.app.state.console, job_id, request.state.user, delivery)
    return {"job": job_id, "delivery": delivery, "requeued": count}


@router.post("/jobs/{job_id}/reanalyse", summary="Run a failed job's analysis again (409 when it cannot be)")
def reanalyse(request: Request, job_id: int) -> dict[str, Any]:
    job = actions.reanalyse(request.app.state.console, job_id, request.state.user)
    return {"job": job_id, "state": job.state.value}


@router.get("/problems", summary="Failed and not-analysed series, dead-lettered deliveries, with reasons")
def problems(request: Request, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    return request.app.state.console.views.problems(limit)


@router.get("/system", summary="Node, receiver, queue, readiness and retention")
def system(request: Request) -> dict[str, Any]:
    return system_doc(request)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@legacy.get("/status", summary="The status document of `dicom-node status --json`")
def status(request: Request) -> dict[str, Any]:
    return request.app.state.console.status()


def system_doc(request: Request) -> dict[str, Any]:
    """The status document plus readiness and retention, for the system panel."""
    console = request.app.state.console
    doc = console.status()
    retention = retention_status()
    if retention.get("last_run_at") is not None:
        retention["last_run_at"] = iso(float(retention["last_run_at"]))
    if isinstance(retention.get("last_run"), dict) and retention["last_run"].get("started_at") is not None:
        retention["last_run"] = {**retention["last_run"], "started_at": iso(float(retention["last_run"]["started_at"]))}
    doc["readiness"] = console.readiness()
    doc["retention"] = retention
    return doc
