"""Serving the console from the node process: uvicorn on its own thread, on a socket bound at
construction (so a port in use fails the node's start, as before, and port 0 is resolved)."""
from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from dicom_node.console.app import Console, make_app

logger = logging.getLogger(__name__)


class ConsoleServer:
    """The console on ``http.bind:http.port``; ``start`` returns once it accepts connections.

    Raises
    ------
    OSError
        From the constructor, when the address cannot be bound.
    """

    def __init__(self, console: Console) -> None:
        cfg = console.cfg.http
        family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((cfg.bind, cfg.port))
        except OSError:
            self._socket.close()
            raise
        # No access log: request lines carry study UIDs and search terms. uvicorn's own
        # loggers propagate to the node's handlers; log_config=None leaves those alone.
        config = uvicorn.Config(make_app(console), log_config=None, access_log=False, log_level="warning",
                                timeout_keep_alive=5, server_header=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="http-console", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the console did not start on port {self.port}; see the log above")
            time.sleep(0.02)

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
