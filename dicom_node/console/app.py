"""The console's ASGI app: public probes, login, the HTML pages and ``/api/v1``.

Routes without authentication: ``/healthz``, ``/readyz``, ``/metrics`` and ``/login``. Every
other route sits on a router whose dependency demands a token or a session
(:mod:`dicom_node.console.auth`); the OpenAPI schema is served at ``/api/v1/openapi.json``
behind it too, and FastAPI's own docs pages (which load scripts from the internet) are off.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from dicom_node import __version__
from dicom_node.console import api, pages, public
from dicom_node.console.auth import LoginRequired
from dicom_node.console.context import Console
from dicom_node.console.views import CATEGORY_ORDER

TEMPLATES = Path(__file__).parent / "templates"
#: No script runs on any page; images come from this server only.
_CSP = "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def _local_time(value: str | None) -> str:
    """ISO-8601 UTC (as the documents carry it) to the node's local time, for people."""
    if not value:
        return ""
    moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _person_name(value: str | None) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as people write it: ``Family, Given Middle``."""
    parts = [p.strip() for p in (value or "").split("=")[0].split("^")]
    family, rest = (parts[0], " ".join(p for p in parts[1:3] if p)) if parts else ("", "")
    return f"{family}, {rest}" if family and rest else family or rest


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["local"] = _local_time
    templates.env.filters["seconds"] = _seconds
    templates.env.filters["pn"] = _person_name
    templates.env.globals["CATEGORIES"] = CATEGORY_ORDER
    templates.env.globals["version"] = __version__
    return templates


def make_app(console: Console) -> FastAPI:
    """The ASGI app serving ``console``."""
    app = FastAPI(title="dicom-node operator console", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, description="Worklist, results, deliveries and retries of a dicom-node. "
                  "Every route except /healthz, /readyz, /metrics and /login needs 'Authorization: Bearer <token>' "
                  "(dicom-node token create NAME) or a browser session from POST /login.")
    app.state.console = console
    app.state.templates = make_templates()
    app.include_router(public.router)
    app.include_router(api.router)
    app.include_router(api.legacy)
    app.include_router(pages.router)

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await call_next(request)
        except Exception:  # pragma: no cover - Starlette's ServerErrorMiddleware answers first
            response = JSONResponse({"detail": "internal error; see the node log"}, status_code=500)
        # Pages and API answers carry PHI: no shared or browser cache keeps them.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = _CSP
        return response

    return app
