"""Receive processes: concurrent associations served by more than one interpreter.

One Python process receives at most one core's worth of instances however many associations are
open: its threads take turns holding the interpreter lock (with 8 concurrent associations on a
2-core machine, 45-52 context switches per instance against 9-10 with one; docs/benchmarks.md).
With ``node.receive_processes`` above 1 the node starts that many minus one helper processes
(:mod:`dicom_node.receive_helper`).

The node's own process still accepts every connection. A lone association is always served
there (through the receive journal, the fastest path for one sender). A connection that arrives
while others are open goes to whichever process holds the fewest connections: the node keeps
it, or sends the connected socket's descriptor to a helper over a Unix socket (SCM_RIGHTS) and
closes its own copy. A helper serves the association with the node's handlers, writing each
instance into the spool (file and folder flushed) and the ledger before Success, exactly as the
node does while several associations are open. What the node reports about receiving comes
back over the same socket: metrics and audit records (:mod:`dicom_node.observability.events`),
the ``dicom-node status`` counters, and each released association, which wakes the assembler.
``node.max_associations`` counts the connections of all processes together.

A helper that dies is logged and started again; its open associations are lost to their
senders (no Success was sent for anything not on disk), which retry. One that stopped cleanly
on SIGTERM (systemd stopping the service signals every process of it) is not restarted.
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from dicom_node import receive_helper
from dicom_node.config import Config
from dicom_node.counting_server import CountingServer
from dicom_node.journal import Journal
from dicom_node.observability import events as observed
from dicom_node.receive_handlers import MOVER_WAIT_S, ReceiverState

logger = logging.getLogger(__name__)

#: Seconds a stopping helper has to end its associations and exit before it is killed
#: (receive_server.DRAIN_GRACE_S + DRAIN_ABORT_WAIT_S, and its start-up if it was starting).
STOP_TIMEOUT_S = 20.0
#: A helper that exited is started again at most this often.
RESTART_INTERVAL_S = 10.0


@dataclass
class _Helper:
    index: int
    process: Any  # multiprocessing.Process
    channel: socket.socket
    ready: bool = False
    alive: bool = True
    #: Connections handed over and not yet reported ended.
    open: int = 0
    started_at: float = 0.0


class ReceivePool:
    """The node's helper receive processes and the choice of who serves a new connection.

    Parameters
    ----------
    cfg : Config
        The node's configuration (the helpers get the same one).
    state : ReceiverState
        The node's receiver counters; helpers' receptions are counted into it.
    journal : Journal or None
        The node's receive journal: records of an association the node served alone are in the
        spool before any helper may write the same instance.
    """

    def __init__(self, cfg: Config, state: ReceiverState, journal: Journal | None) -> None:
        self.cfg = cfg
        self.state = state
        self.journal = journal
        self._servers: list[CountingServer] = []
        self._helpers: list[_Helper] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._restarts = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start ``node.receive_processes - 1`` helpers; connections go to each once it is ready."""
        for index in range(1, self.cfg.node.receive_processes):
            self._helpers.append(self._spawn(index))

    def attach(self, server: CountingServer, tls: bool) -> None:
        """Let ``server``'s new connections be handed to helpers (``tls``: it is the TLS port)."""
        self._servers.append(server)
        server.dispatch = lambda request, address: self._dispatch(request, address, tls)

    def begin_stop(self) -> None:
        """Tell every helper to end its associations (as the node's process does its own)."""
        if self._stopping:
            return
        self._stopping = True
        for helper in self._helpers:
            try:
                helper.channel.send(pickle.dumps(("stop",)))
            except OSError:
                pass

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """:meth:`begin_stop`, then wait for every helper to exit (killed after ``timeout``)."""
        self.begin_stop()
        deadline = time.monotonic() + timeout
        for helper in self._helpers:
            helper.process.join(max(0.0, deadline - time.monotonic()))
            if helper.process.is_alive():
                logger.error("receive process did not stop in time; killing it",
                             extra={"receive_process": helper.index, "timeout_s": timeout})
                helper.process.kill()
                helper.process.join(5)
            helper.channel.close()

    # -- who serves a connection ---------------------------------------------------------------
    def remote_open(self) -> int:
        """Connections the helpers hold (counted from hand-over to their end)."""
        return sum(helper.open for helper in self._helpers)

    def _dispatch(self, request: Any, address: Any, tls: bool) -> bool:
        with self._lock:
            local = sum(server.connections for server in self._servers)
            ready = [h for h in self._helpers if h.ready and h.alive]
            if self._stopping or not ready or local + self.remote_open() >= self.cfg.node.max_associations:
                return False  # over the limit: served here, where the association is rejected
            helper = min(ready, key=lambda h: h.open)
            if local <= helper.open:
                return False
            helper.open += 1
        if self.journal is not None and self.journal.unmoved_bytes():
            # A helper writes straight into the spool; the mover must not later put an older
            # journalled copy of the same instance over it.
            self.journal.wait_moved(MOVER_WAIT_S)
        try:
            socket.send_fds(helper.channel, [pickle.dumps(("connection", tls, address))], [request.fileno()])
        except OSError:
            logger.exception("cannot hand a connection to a receive process; serving it here",
                             extra={"receive_process": helper.index})
            with self._lock:
                helper.open -= 1
            return False
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Helper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = logging.getLogger()
        debug = logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)
        # spawn, not fork: a forked child would inherit the listening socket, the ledger's
        # connections and every thread's locks in whatever state they were.
        process = multiprocessing.get_context("spawn").Process(
            target=receive_helper.run, args=(self.cfg, index, theirs, logging.getLevelName(root.level), debug),
            name=f"dicom-node-receive-{index}", daemon=True)
        process.start()
        theirs.close()
        helper = _Helper(index, process, ours, started_at=time.monotonic())
        threading.Thread(target=self._listen, args=(helper,), name=f"receive-process-{index}", daemon=True).start()
        return helper

    def _listen(self, helper: _Helper) -> None:
        handle: dict[str, Callable[..., None]] = {
            "ready": lambda: setattr(helper, "ready", True),
            "ended": lambda: self._ended(helper),
            "released": lambda: self.state.on_release() if self.state.on_release is not None else None,
            "event": self._event,
        }
        while True:
            try:
                message = helper.channel.recv(1 << 16)
            except OSError:
                message = b""
            if not message:
                break
            kind, *args = pickle.loads(message)
            try:
                handle[kind](*args)
            except Exception:  # noqa: BLE001 - a report must not end the channel
                logger.exception("cannot take a receive process's report", extra={"report": kind})
        helper.alive, helper.ready = False, False
        with self._lock:
            helper.open = 0
        if self._stopping:
            return
        helper.process.join(5)
        if helper.process.exitcode == 0:
            # It drained and stopped on SIGTERM: systemd stopping the service signals every process.
            logger.info("receive process stopped on SIGTERM", extra={"receive_process": helper.index})
            return
        logger.error("receive process exited; its open associations were lost and their senders retry",
                     extra={"receive_process": helper.index, "exit_code": helper.process.exitcode})
        self._restart(helper)

    def _ended(self, helper: _Helper) -> None:
        with self._lock:
            helper.open = max(0, helper.open - 1)

    def _event(self, name: str, args: tuple[Any, ...]) -> None:
        getattr(observed, name)(*args)
        if name == "instance_stored":
            self.state.count("stored")
        elif name == "instance_refused":
            self.state.count("refused_low_disk" if args[0] == "low_disk" else "failed")

    def _restart(self, helper: _Helper) -> None:
        wait = RESTART_INTERVAL_S - (time.monotonic() - helper.started_at)
        if wait > 0:
            time.sleep(wait)
        if self._stopping:
            return
        helper.channel.close()
        try:
            replacement = self._spawn(helper.index)
        except Exception:  # noqa: BLE001 - the node goes on receiving in its own process
            logger.exception("cannot start the receive process again; the node serves every connection itself",
                             extra={"receive_process": helper.index})
            return
        self._restarts += 1
        with self._lock:
            self._helpers[self._helpers.index(helper)] = replacement

    def status(self) -> dict[str, Any]:
        """For ``dicom-node status``: processes running and the connections each holds."""
        return {"receive_processes": 1 + sum(1 for h in self._helpers if h.alive and h.ready),
                "receive_process_connections": [h.open for h in self._helpers],
                "receive_process_restarts": self._restarts}
