"""Who may use the operator console: API tokens and browser sessions, kept as SHA-256 digests.

The ledger never sees a token or a session cookie, only its digest (``dicom_node.console.auth``
makes and hashes them). Tokens are long random strings, so one unsalted SHA-256 is enough to
make a stolen ledger useless for logging in. Revoking a token ends its sessions at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from dicom_node.ledger.store import Store

#: ``last_used_at`` is written at most this often per token (a write per request is wasteful).
LAST_USED_RESOLUTION_S = 60.0


@dataclass(frozen=True)
class TokenInfo:
    """One row of ``api_tokens``, without its digest."""

    name: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Access(Store):
    """API tokens by name and the browser sessions opened with them."""

    def add_token(self, name: str, sha256: str, now: float | None = None) -> None:
        """Store a new token's digest under ``name``; a revoked token of that name is replaced.

        Raises
        ------
        ValueError
            When an active token already has that name.
        """
        now = now or time.time()
        with self._tx() as db:
            row = db.execute("SELECT revoked_at FROM api_tokens WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ValueError(f"token name must be new; {name!r} is in use (revoke it first)")
            db.execute("DELETE FROM api_tokens WHERE name=?", (name,))
            db.execute("INSERT INTO api_tokens(name, sha256, created_at) VALUES (?,?,?)", (name, sha256, now))

    def tokens(self) -> list[TokenInfo]:
        rows = self._db().execute("SELECT name, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY name")
        return [TokenInfo(*r) for r in rows]

    def revoke_token(self, name: str, now: float | None = None) -> bool:
        """Revoke the active token ``name`` and end its sessions; False when there is none."""
        now = now or time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE api_tokens SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (now, name))
            db.execute("DELETE FROM console_sessions WHERE token_name=?", (name,))
            return cur.rowcount == 1

    def token_name(self, sha256: str, now: float | None = None) -> str | None:
        """The name of the active token with this digest (its use is recorded), or None."""
        now = now or time.time()
        row = self._db().execute("SELECT name, last_used_at FROM api_tokens WHERE sha256=? AND revoked_at IS NULL",
                                 (sha256,)).fetchone()
        if row is None:
            return None
        if row[1] is None or now - row[1] >= LAST_USED_RESOLUTION_S:
            with self._tx() as db:
                db.execute("UPDATE api_tokens SET last_used_at=? WHERE name=?", (now, row[0]))
        return str(row[0])

    def add_session(self, sha256: str, token_name: str, expires_at: float, now: float | None = None) -> None:
        """Open a browser session for ``token_name``; sessions that expired are dropped here."""
        now = now or time.time()
        with self._tx() as db:
            db.execute("DELETE FROM console_sessions WHERE expires_at<=?", (now,))
            db.execute("INSERT INTO console_sessions(sha256, token_name, created_at, expires_at) VALUES (?,?,?,?)",
                       (sha256, token_name, now, expires_at))

    def session_user(self, sha256: str, now: float | None = None) -> str | None:
        """The token name behind a live session (not expired, token not revoked), or None."""
        now = now or time.time()
        row = self._db().execute(
            "SELECT s.token_name FROM console_sessions s JOIN api_tokens t ON t.name = s.token_name "
            "WHERE s.sha256=? AND s.expires_at>? AND t.revoked_at IS NULL", (sha256, now)).fetchone()
        return None if row is None else str(row[0])

    def end_session(self, sha256: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM console_sessions WHERE sha256=?", (sha256,))
