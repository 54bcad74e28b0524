"""The HTML pages: worklist, study, problems and system, server-rendered, with plain forms."""
from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.console import actions
from dicom_node.console.api import system_doc
from dicom_node.console.auth import SESSION_COOKIE, digest, page_user
from dicom_node.console.views import CATEGORY_ORDER
from dicom_node.ledger import JobState
from dicom_node.observability import audit

router = APIRouter(dependencies=[Depends(page_user)], include_in_schema=False)


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", request.state.user)
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, date: str = "", days: int = 7, state: str = "", category: str = "",  # noqa: A002
             accession: str = "") -> HTMLResponse:
    console = request.app.state.console
    states = [s.value for s in JobState if s != JobState.SUPERSEDED]
    state = state if state in states else ""
    category = category if category in CATEGORY_ORDER else ""
    doc = console.views.worklist(day=_day(date), days=max(1, min(days, 3660)), state=state or None,
                                 category=category or None, accession=accession.strip()[:64] or None,
                                 now=console.clock())
    audit.record("worklist_viewed", token_name=request.state.user, api=False, searched=bool(accession.strip()))
    form = {"date": date if _day(date) else "", "days": days, "state": state, "category": category,
            "accession": accession}
    return _page(request, "worklist.html", doc=doc, form=form, states=states)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study(request: Request, study_uid: str, retried: int | None = None,
          reanalysed: int | None = None) -> HTMLResponse:
    doc = request.app.state.console.views.study(study_uid)
    if doc is None:
        return _page(request, "missing.html", status_code=404, what="study")
    audit.record("study_viewed", token_name=request.state.user, api=False, study_uid=study_uid)
    return _page(request, "study.html", study=doc, retried=retried, reanalysed=reanalysed)


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: int) -> RedirectResponse:
    found = actions.job_or_404(request.app.state.console, job_id)
    return RedirectResponse(f"/studies/{quote(found.study_uid)}#job-{job_id}", status_code=303)


@router.get("/jobs/{job_id}/key-image.png")
def key_image(request: Request, job_id: int, overlay: bool = True) -> Response:
    return actions.key_image(request.app.state.console, job_id, overlay)


@router.post("/jobs/{job_id}/retry")
def retry(request: Request, job_id: int, delivery: str = Form("")) -> RedirectResponse:
    console = request.app.state.console
    count = actions.retry(console, job_id, request.state.user, int(delivery) if delivery.isdigit() else None)
    study_uid = console.ledger.job(job_id).study_uid
    return RedirectResponse(f"/studies/{quote(study_uid)}?retried={count}#job-{job_id}", status_code=303)


@router.post("/jobs/{job_id}/reanalyse")
def reanalyse(request: Request, job_id: int) -> RedirectResponse:
    job = actions.reanalyse(request.app.state.console, job_id, request.state.user)
    return RedirectResponse(f"/studies/{quote(job.study_uid)}?reanalysed={job_id}#job-{job_id}", status_code=303)


@router.get("/problems", response_class=HTMLResponse)
def problems(request: Request) -> HTMLResponse:
    return _page(request, "problems.html", problems=request.app.state.console.views.problems())


@router.get("/system", response_class=HTMLResponse)
def system(request: Request) -> HTMLResponse:
    return _page(request, "system.html", system=system_doc(request))


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        request.app.state.console.ledger.end_session(digest(cookie))
    audit.record("logout", token_name=request.state.user)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
