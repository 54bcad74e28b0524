"""Real notification receivers on 127.0.0.1 for tests and the triage benchmark.

:class:`MllpListener` is a RIS stand-in: it reads MLLP blocks, parses and validates each ORU^R01
with hl7apy (strict, v2.5.1) and answers AA, AE or AR, or drops the connection, as told.
:class:`WebhookReceiver` is an HTTP server that checks ``X-Dural-Signature`` and answers 500 on
demand.
"""
from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from dicom_node.notify.hl7 import END_BLOCK, frame, unframe
from dicom_node.notify.webhook import SIGNATURE_HEADER, verify


@dataclass
class Received:
    er7: str
    message: Any
    at: float


def ack(control_id: str, code: str, text: str = "") -> str:
    msg = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    msg.msh.msh_9, msg.msh.msh_10, msg.msh.msh_11 = "ACK^R01^ACK", f"A{control_id}"[:20], "P"
    msg.msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
    msg.msa.msa_1, msg.msa.msa_2 = code, control_id
    if text:
        msg.msa.msa_3 = text
    return str(msg.to_er7())


class MllpListener:
    """``answers``: codes used in turn (``AA``, ``AE``, ``AR``, ``drop``, ``hang`` (no answer for
    ``hang_s``), ``wrong`` (an ACK to another message)), then
    ``default`` for ever. Every message received is parsed strictly; one that does not parse
    or validate is answered AR and kept in ``invalid``."""

    def __init__(self, answers: list[str] | None = None, default: str = "AA", hang_s: float = 2.0) -> None:
        self.answers: deque[str] = deque(answers or [])
        self.hang_s = hang_s
        self.default = default
        self.received: list[Received] = []
        self.invalid: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while END_BLOCK not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                outer._answer(self.request, unframe(data))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, sock: socket.socket, er7: str) -> None:
        try:
            message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            message.validate()
        except Exception as exc:  # noqa: BLE001 - reported to the test through `invalid`
            self.invalid.append(f"{type(exc).__name__}: {exc}")
            control = er7.split("\r")[0].split("|")[9] if er7.count("|") > 9 else ""
            sock.sendall(frame(ack(control, "AR", "invalid message")))
            return
        code = self.answers.popleft() if self.answers else self.default
        self.received.append(Received(er7, message, time.time()))
        if code == "drop":
            return
        if code == "hang":
            time.sleep(self.hang_s)
            return
        control = message.msh.msh_10.to_er7()
        sock.sendall(frame(ack("other" if code == "wrong" else control, "AA" if code == "wrong" else code,
                               "test says no" if code in ("AE", "AR") else "")))

    def wait_received(self, count: int, timeout: float = 10.0) -> int:
        """How many messages were received once ``count`` were, or after ``timeout`` seconds. A
        message the sender gave up on (no ACK in its timeout) may still be being parsed here."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.received)

    def __enter__(self) -> "MllpListener":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Hook:
    body: bytes
    doc: dict[str, Any]
    signature_ok: bool
    at: float


class WebhookReceiver:
    """Answers ``statuses`` in turn (e.g. ``[500]``), then 200; a bad signature gets 401."""

    def __init__(self, secret: bytes, statuses: list[int] | None = None) -> None:
        self.secret = secret
        self.statuses: deque[int] = deque(statuses or [])
        self.received: list[Hook] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = verify(outer.secret, raw, self.headers.get(SIGNATURE_HEADER))
                outer.received.append(Hook(raw, json.loads(raw), ok, time.time()))
                status = 401 if not ok else (outer.statuses.popleft() if outer.statuses else 200)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
