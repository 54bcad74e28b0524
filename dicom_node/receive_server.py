"""The receiver's DICOM servers: the acceptor AE, its event handlers and the listeners.

:func:`make_server` starts a listener (plain or DICOM TLS) whose associations are served by the
handlers of :mod:`dicom_node.receive_handlers`, with pynetdicom's receive path tuned by
:mod:`dicom_node.netfast`. :func:`make_handed_server` builds the same server for connections
another process accepted (:mod:`dicom_node.receive_helper`). :mod:`dicom_node.scp` starts the
receiver around them.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

from pynetdicom import _config as pynetdicom_config
from pynetdicom import AE, evt

from dicom_node import netfast
from dicom_node.config import Config
from dicom_node.counting_server import CountingServer, start_server
from dicom_node.group_record import GroupRecorder
from dicom_node.ledger import Ledger
from dicom_node.receive_handlers import (ReceiverState, handle_accepted, handle_closed, handle_echo, handle_rejected,
                                         handle_store, store_instance)
from dicom_node.spool import Spool
from dicom_node.tls import server_context
from dicom_node.tls_server import TlsAssociationServer, start_tls_server


logger = logging.getLogger(__name__)

#: Seconds open associations get to finish when the receiver stops, before they are aborted.
DRAIN_GRACE_S = 5.0
#: Seconds then given to the aborted associations' threads (each finishes the instance in hand).
DRAIN_ABORT_WAIT_S = 10.0


def end_associations(ae: AE, grace_s: float = DRAIN_GRACE_S, wait_s: float = DRAIN_ABORT_WAIT_S) -> int:
    """Let the associations ``ae`` accepted finish for ``grace_s``, then abort those still open
    and wait up to ``wait_s`` for their threads. The thread storing an instance finishes it
    (written and recorded, or not at all) before its association ends, so nothing is left
    half-written. Returns how many were aborted."""

    def still_open() -> list[Any]:
        return [assoc for assoc in ae.active_associations if assoc.is_acceptor]

    deadline = time.monotonic() + grace_s
    while still_open() and time.monotonic() < deadline:
        time.sleep(0.05)
    aborted = still_open()
    for assoc in aborted:
        assoc.abort()
    deadline = time.monotonic() + wait_s
    while still_open() and time.monotonic() < deadline:
        time.sleep(0.05)
    if aborted:
        logger.warning("associations still open when the receiver stopped were aborted; their senders resend",
                       extra={"count": len(aborted), "grace_s": grace_s})
    return len(aborted)


class HandedServer(CountingServer):
    """A server for connections accepted elsewhere: it binds and listens to nothing."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class NodeAE(AE):
    """The acceptor AE; its ``maximum_associations`` leaves room for the associations other
    receive processes hold (:mod:`dicom_node.receive_pool`), so that ``node.max_associations``
    counts them all. pynetdicom reads it only when deciding whether to reject an association."""

    others: Callable[[], int] = staticmethod(lambda: 0)

    @property  # type: ignore[override]
    def maximum_associations(self) -> int:
        return int(self._maximum_associations) - self.others()

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)  # type: ignore[attr-defined]


def make_ae(cfg: Config) -> AE:
    """The acceptor AE: every storage SOP class in every transfer syntax, limits from config."""
    node = cfg.node
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        # pynetdicom's standard handlers format every PDU and DIMSE message for its debug log
        # (~0.2 ms per instance) even when nothing would be printed.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    ae = NodeAE(ae_title=node.ae_title)
    ae.supported_contexts = netfast.storage_contexts()
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = netfast.MAX_PDU
    ae.require_calling_aet = list(node.allowed_calling_aets)
    return ae


def server_handlers(cfg: Config, spool: Spool, ledger: Ledger, state: ReceiverState) -> list[Any]:
    """The receiver's event handlers, bound to its spool, ledger and state."""
    return [
        (evt.EVT_C_STORE, handle_store, [spool, ledger, state]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ACCEPTED, handle_accepted, [ledger, state]),
        (evt.EVT_CONN_CLOSE, handle_closed, [ledger, state]),
        (evt.EVT_REJECTED, handle_rejected, [list(cfg.node.allowed_calling_aets), cfg.node.max_associations]),
    ]


def _tune(server: CountingServer, spool: Spool, ledger: Ledger, state: ReceiverState) -> None:
    netfast.tune_server(server)
    # C-STORE requests of this server's associations bypass pynetdicom's DIMSE layer.
    server.store_function = functools.partial(  # type: ignore[attr-defined]
        store_instance, spool=spool, ledger=ledger, state=state)


def make_server(cfg: Config, spool: Spool, ledger: Ledger, state: ReceiverState | None = None, *,
                tuned: bool = True, ae: AE | None = None, port: int | None = None,
                plain: bool = False) -> CountingServer:
    """Start a non-blocking C-STORE/C-ECHO server; stop it with ``server.shutdown()``.

    It listens on ``port`` (default ``node.port``) and speaks TLS only when ``node.tls`` is set,
    unless ``plain`` (the ``node.plain_port`` listener). Servers sharing ``ae`` share its
    ``node.max_associations``. ``tuned=False`` leaves pynetdicom's receive path as shipped (no
    :func:`netfast.tune_server`), for measuring what the tuning is worth
    (``bench/receive.py --receiver stock``).
    """
    state = state or ReceiverState(cfg.node.min_free_disk_gb)
    if state.recorder is None:
        state.recorder = GroupRecorder(ledger, state.lock)
    handlers = server_handlers(cfg, spool, ledger, state)
    ae = ae or make_ae(cfg)
    address = (cfg.node.bind, cfg.node.port if port is None else port)
    tls = None if plain else cfg.node.tls
    if tls is None:
        server = start_server(ae, address, handlers)
    else:
        server = start_tls_server(ae, address, handlers, server_context(tls), cfg.node.acse_timeout_s)
    if tuned:
        _tune(server, spool, ledger, state)
    return server


def make_handed_server(cfg: Config, spool: Spool, ledger: Ledger, state: ReceiverState, ae: AE, *,
                       tls: bool) -> CountingServer:
    """A tuned server for connections accepted by another process (:mod:`dicom_node.receive_helper`);
    ``tls``: they came to the TLS port, and the handshake is this server's to do."""
    state.recorder = state.recorder or GroupRecorder(ledger, state.lock)
    handlers = server_handlers(cfg, spool, ledger, state)
    address = (cfg.node.bind, cfg.node.port)
    if tls:
        assert cfg.node.tls is not None
        server_class = type("HandedTlsServer", (TlsAssociationServer, HandedServer), {})
        server = ae.make_server(address, evt_handlers=handlers, server_class=server_class,
                                ssl_context=server_context(cfg.node.tls), handshake_timeout=cfg.node.acse_timeout_s)
    else:
        server = ae.make_server(address, evt_handlers=handlers, server_class=HandedServer)
    _tune(server, spool, ledger, state)
    return server
