"""Routes open without a token: the probes, the metrics and the login form."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from dicom_node.console.auth import SESSION_COOKIE, digest, safe_next
from dicom_node.observability import audit
from dicom_node.observability.metrics import exposition

router = APIRouter()


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("/healthz", tags=["probes"], summary="Alive: the scheduler loop runs and the receiver accepts")
def healthz(request: Request) -> JSONResponse:
    problems = request.app.state.console.health()
    return JSONResponse({"ok": not problems, "problems": problems}, status_code=503 if problems else 200)


@router.get("/readyz", tags=["probes"], summary="Ready: ledger, queue and model usable")
def readyz(request: Request) -> JSONResponse:
    problems = request.app.state.console.readiness()
    return JSONResponse({"ready": not problems, "problems": problems}, status_code=503 if problems else 200)


@router.get("/metrics", tags=["probes"], summary="Prometheus metrics (dural_*)")
def metrics(request: Request) -> Response:
    body, content_type = exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002 - the query parameter's name
    return request.app.state.templates.TemplateResponse(request, "login.html", {"next": safe_next(next),
                                                                                "error": None})


@router.post("/login", tags=["session"], summary="Open a browser session with an API token (form field 'token')")
def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:  # noqa: A002
    console = request.app.state.console
    now = console.clock()
    name = console.ledger.token_name(digest(token.strip()), now) if token.strip() else None
    if name is None:
        audit.record("login", ok=False, client=_client(request))
        return request.app.state.templates.TemplateResponse(
            request, "login.html", {"next": safe_next(next), "error": "That token is not valid (or was revoked)."},
            status_code=401)
    session = secrets.token_urlsafe(32)
    minutes = console.cfg.http.session_minutes
    console.ledger.add_session(digest(session), name, now + minutes * 60, now)
    audit.record("login", ok=True, token_name=name, client=_client(request))
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, session, max_age=max(1, int(minutes * 60)), httponly=True, samesite="lax",
                        secure=console.cfg.http.cookie_secure, path="/")
    return response
