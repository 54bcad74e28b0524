"""Who may use the console: API tokens, browser sessions, and the checks every route runs.

API clients send ``Authorization: Bearer <token>``. A browser logs in once with the same token
(``POST /login``, form field ``token``) and then carries a session cookie: random, HttpOnly,
SameSite=Lax (so another site cannot make the browser send it with a POST), expiring after
``http.session_minutes``. The ledger holds only SHA-256 digests of tokens and cookies.

Tokens are made by ``dicom-node token create NAME`` (:func:`create_token`); the name is what the
audit trail and the page header show, never the token.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from dicom_node.ledger import Ledger, TokenInfo
from dicom_node.observability import audit

if TYPE_CHECKING:
    from dicom_node.console.context import Console

__all__ = ["SESSION_COOKIE", "LoginRequired", "api_user", "create_token", "digest", "page_user", "request_user",
           "revoke_token", "token_name_problem"]

SESSION_COOKIE = "dural_session"
TOKEN_PREFIX = "dn_"  # lets secret scanners and people recognise a leaked token
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def digest(secret: str) -> str:
    """SHA-256 (hex) of a token or session id: what the ledger stores."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a token, or None when it can."""
    if not _NAME.match(name):
        return (f"token name must be 1-64 letters, digits or ._@- starting with a letter or digit; got {name!r}")
    return None


def create_token(ledger: Ledger, name: str) -> str:
    """Make a new token for ``name`` and store its digest; returns the token (shown once).

    Raises
    ------
    ValueError
        When the name is malformed or an active token already has it.
    """
    problem = token_name_problem(name)
    if problem:
        raise ValueError(problem)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ledger.add_token(name, digest(token))
    return token


def revoke_token(ledger: Ledger, name: str) -> bool:
    """Revoke ``name`` and end its browser sessions; False when no active token has that name."""
    return ledger.revoke_token(name)


def list_tokens(ledger: Ledger) -> list[TokenInfo]:
    return ledger.tokens()


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def request_user(request: Request) -> str | None:
    """The token name behind the request's bearer token or session cookie, or None.

    A bearer header that is present decides alone: a wrong token is not rescued by a cookie.
    """
    console: Console = request.app.state.console
    now = console.clock()
    token = _bearer(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if token is not None:
        user, kind = console.ledger.token_name(digest(token), now), "bearer"
    elif cookie:
        user, kind = console.ledger.session_user(digest(cookie), now), "session"
    else:
        return None
    if user is None:
        # The path only: query strings may carry a searched accession number.
        audit.record("auth_failed", credential=kind, path=request.url.path,
                     client=request.client.host if request.client else None)
    return user


class LoginRequired(Exception):
    """A page was asked for without a valid session; the app answers with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def api_user(request: Request) -> str:
    """FastAPI dependency for ``/api/v1``: the caller's token name, or 401."""
    user = request_user(request)
    if user is None:
        raise HTTPException(401, "a valid API token is required: send 'Authorization: Bearer <token>' "
                                 "(dicom-node token create NAME makes one)",
                            headers={"WWW-Authenticate": 'Bearer realm="dicom-node"'})
    request.state.user = user
    return user


def page_user(request: Request) -> str:
    """FastAPI dependency for HTML pages: the caller's token name, or a redirect to the login page."""
    user = request_user(request)
    if user is None:
        raise LoginRequired(request.url.path)
    request.state.user = user
    return user


def safe_next(path: str | None) -> str:
    """Where to go after login: a path on this server only (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
