"""A helper receive process: serves the connections the node's process hands it.

Started by :class:`dicom_node.receive_pool.ReceivePool` (``node.receive_processes``). It never
listens: each connection arrives as a descriptor over its Unix socket to the node, with the
address it came from and whether it came to the TLS port (the helper then does the handshake
with the node's certificate, as the node would). Each instance is written into the spool (file
and folder flushed) and recorded in the ledger before Success, by the handlers the node uses.

Everything the node reports about receiving goes back to it as a message: the calls to
:mod:`dicom_node.observability.events`, each released association, and the end of every
connection, from which the node counts who holds how many. Told to stop, or when the node's end
of the socket closes, it gives its associations the node's grace to finish, aborts the rest after
the instance each has in hand (:func:`dicom_node.receive_server.end_associations`) and exits,
leaving nothing half-written; SIGTERM does the same.
"""
from __future__ import annotations

import logging
import pickle
import signal
import socket
import threading
from typing import Any

import pydicom

from dicom_node.config import Config
from dicom_node.counting_server import CountingServer
from dicom_node.ledger import Ledger
from dicom_node.logs import setup_logging
from dicom_node.names import LEDGER_FILE
from dicom_node.observability import events as observed
from dicom_node.receive_handlers import ReceiverState
from dicom_node.receive_server import end_associations, make_ae, make_handed_server
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

#: Seconds between the servers' housekeeping while no connection arrives (serve_forever's poll).
SERVICE_INTERVAL_S = 0.5

class _Tag(logging.Filter):
    """Marks the helper's log lines with its number (``receive_process=N``)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.receive_process = self.index
        return True


class _Channel:
    """The helper's end of the socket to the node: messages are pickled tuples, one per packet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        data = pickle.dumps(message)
        with self._lock:
            try:
                self.sock.send(data)
            except OSError:
                pass  # the node is gone; the receive loop ends on its own

    def relay_events(self) -> None:
        """Send the receiver's metric and audit calls to the node instead of recording them here."""
        for name in observed.__all__:
            setattr(observed, name, lambda *args, _name=name: self.send("event", _name, args))


def run(cfg: Config, index: int, sock: socket.socket, log_level: str, debug: bool) -> None:
    """The helper's main function (``multiprocessing`` spawn target)."""
    setup_logging(log_level, debug)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Tag(index))
    # A terminal's Ctrl-C reaches the whole process group; the node's process stops its helpers.
    # SIGTERM (systemd stopping the service, multiprocessing at the node's exit) stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_stop)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    channel = _Channel(sock)
    channel.relay_events()
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    spool = Spool(cfg.data_dir)
    state = ReceiverState(cfg.node.min_free_disk_gb, on_release=lambda: channel.send("released"))
    state.disk_checked(spool.free_gb())
    ae = make_ae(cfg)
    servers = {False: make_handed_server(cfg, spool, ledger, state, ae, tls=False)}
    if cfg.node.tls is not None:
        servers[True] = make_handed_server(cfg, spool, ledger, state, ae, tls=True)
    for server in servers.values():
        server.on_connection_end = lambda: channel.send("ended")
    channel.send("ready")
    logger.info("receive process ready")  # _Tag adds receive_process=N
    try:
        _serve(sock, servers)
    except _Stop:
        pass
    _drain(list(servers.values()))
    logger.info("receive process stopped")


class _Stop(Exception):
    """SIGTERM arrived."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def _serve(sock: socket.socket, servers: dict[bool, CountingServer]) -> None:
    """Serve handed connections until told to stop or the node's end closes."""
    # As serve_forever would, pynetdicom's housekeeping runs between connections and every
    # half second: it collects finished associations' reference cycles now and then.
    sock.settimeout(SERVICE_INTERVAL_S)
    while True:
        for server in servers.values():
            server.service_actions()
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 1)
        except TimeoutError:
            continue
        except OSError:
            data, fds = b"", []
        if not data:
            return  # the node's end closed
        kind, *args = pickle.loads(data)
        if kind == "stop":
            return
        tls, address = args
        conn = socket.socket(fileno=fds[0])
        server = servers[tls]
        if tls:
            conn = server.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        server.process_request(conn, address)


def _drain(servers: list[CountingServer]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping
    end_associations(servers[0].ae)
    for server in servers:
        server.server_close()
