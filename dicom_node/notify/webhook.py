"""The JSON webhook: body, signature and POST.

The body is signed as sent: ``X-Dural-Signature: sha256=<hex HMAC-SHA256 of the raw body>``
with the shared secret from the environment variable ``notify.webhooks[].secret_env``. The
body carries ``sent_at`` (covered by the signature) so that a receiver can refuse a replayed
old message, and ``id``, the same on every retry, so that it can drop a duplicate.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

from dicom_node.notify.notice import Notice

__all__ = ["SIGNATURE_HEADER", "HttpError", "body", "post", "sign", "verify"]

SIGNATURE_HEADER = "X-Dural-Signature"
#: Status codes worth another attempt besides 5xx: request timeout and too many requests.
RETRY_4XX = frozenset({408, 429})


class HttpError(RuntimeError):
    """The receiver answered with a status other than 2xx; ``permanent`` for a 4xx that a
    retry cannot fix (a wrong URL or secret: ``dicom-node retry`` once fixed)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}" + (f": {text}" if text else ""))
        self.status = status
        self.permanent = 400 <= status < 500 and status not in RETRY_4XX


def body(notice: Notice, api_url: str, now: float | None = None) -> bytes:
    """The JSON document for one notice (UTF-8, keys sorted)."""
    api = api_url.rstrip("/")
    doc: dict[str, Any] = {
        "id": notice.control_id,
        "event": "correction" if notice.correction else "result",
        "sent_at": round(now or time.time(), 3),
        "job_id": notice.job_id,
        "study_uid": notice.study_uid,
        "series_uid": notice.series_uid,
        "accession_number": notice.accession_number,
        "triage": notice.category,
        "priority_category": notice.priority_category,
        "previous_triage": notice.previous_category,
        "state": notice.state,
        "reason": notice.reason,
        "caveat": notice.caveat,
        "findings": notice.findings,
        "model": notice.model,
        "objects": notice.objects,
        "links": {"status": f"{api}/status", "health": f"{api}/healthz"},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(secret: bytes, raw: bytes) -> str:
    """The ``X-Dural-Signature`` value for ``raw``."""
    return "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()


def verify(secret: bytes, raw: bytes, header: str | None) -> bool:
    """Whether ``header`` signs ``raw`` with ``secret``, compared in constant time (for
    receivers written in Python, and the tests)."""
    return header is not None and hmac.compare_digest(sign(secret, raw), header)


def post(url: str, raw: bytes, signature: str, timeout_s: float) -> int:
    """POST ``raw``; returns the 2xx status.

    Raises
    ------
    HttpError
        On any other status.
    OSError
        When the receiver cannot be reached or does not answer within ``timeout_s``.
    """
    request = urllib.request.Request(url, data=raw, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: signature, "User-Agent": "dicom-node"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        text = exc.read(200).decode("utf-8", "replace").strip() if exc.fp else ""
        raise HttpError(exc.code, text) from None
