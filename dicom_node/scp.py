"""The DICOM receiver: the C-STORE/C-ECHO server, built and started.

``start_receiver`` prepares the spool (partial writes dropped, the receive journal replayed, files
the ledger missed recorded) and starts the server with the handlers of
:mod:`dicom_node.receive_handlers`, which write every instance durably before it is acknowledged.
pynetdicom's receive path is tuned in :mod:`dicom_node.netfast` (why: see there).
"""
from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from pydicom.filereader import read_file_meta_info
from pynetdicom import _config as pynetdicom_config
from pynetdicom import AE, evt

from dicom_node import netfast
from dicom_node.config import Config
from dicom_node.counting_server import CountingServer, start_server
from dicom_node.group_record import GroupRecorder
from dicom_node.journal import Journal
from dicom_node.journal_mover import JournalMover
from dicom_node.ledger import Ledger
from dicom_node.names import JOURNAL_DIR
from dicom_node.receive_helper import HandedServer
from dicom_node.receive_pool import ReceivePool
from dicom_node.receive_handlers import (MOVER_WAIT_S, ReceiverState, handle_accepted, handle_closed, handle_echo,
                                         handle_rejected, handle_store, store_instance)
from dicom_node.spool import Spool
from dicom_node.tls import server_context
from dicom_node.tls_server import TlsAssociationServer, start_tls_server

logger = logging.getLogger(__name__)

#: Bytes left free beyond ``node.min_free_disk_gb`` when the journal grows by a segment.
JOURNAL_DISK_MARGIN = 64 * 1024 * 1024


# -- building and starting ----------------------------------------------------------------------
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


def rescan(spool: Spool, ledger: Ledger) -> int:
    """Record spool files the ledger does not know (a crash between rename and commit)."""
    known = ledger.known_paths()
    added = 0
    for path in spool.iter_files():
        if str(path) in known:
            continue
        try:
            sop_class = str(read_file_meta_info(path).MediaStorageSOPClassUID)
        except Exception:  # noqa: BLE001 - report and go on with the others
            logger.exception("spool file unreadable at start-up; left in place", extra={"path": str(path)})
            continue
        if ledger.record_instance(path.stem, path.parent.parent.name, path.parent.name, sop_class, path, None):
            added += 1
    if added:
        logger.warning("recorded spool files missing from the ledger", extra={"count": added})
    return added


@dataclass
class Receiver:
    """A running receiver: the server, its spool and its state."""

    server: CountingServer
    spool: Spool
    state: ReceiverState
    #: The unencrypted listener beside a TLS one (``node.plain_port``), if configured.
    plain_server: CountingServer | None = None
    #: Moves journalled instances into the spool; None when the receiver writes them directly.
    mover: JournalMover | None = None
    #: Helper receive processes (``node.receive_processes`` above 1).
    pool: ReceivePool | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def status(self) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        if self.mover is not None:
            snapshot.update(self.mover.status())
        if self.pool is not None:
            snapshot.update(self.pool.status())
        return snapshot

    def shutdown(self) -> None:
        self.server.shutdown()
        if self.plain_server is not None:
            self.plain_server.shutdown()
        if self.pool is not None:
            self.pool.stop()  # the helpers' associations end before the journal's last move
        if self.mover is not None:
            self.mover.stop()  # every acknowledged instance into the spool and the ledger


def start_receiver(cfg: Config, ledger: Ledger, spool: Spool | None = None,
                   on_release: Callable[[], None] | None = None, *, tuned: bool = True,
                   journalled: bool = True) -> Receiver:
    """Prepare the spool (drop partial writes, replay the journal, rescan) and start listening.

    Run once at start, before anything else uses the ledger's association records: every
    association of a previous run is closed, instances a crash left in the receive journal are
    moved into the spool and the ledger, and an instance renamed into the spool but not committed
    to the ledger before a crash is recorded now, so no acknowledged instance is lost.
    ``journalled=False`` writes each instance straight into the spool instead (fsync file and
    folder before the acknowledgement), for measuring what the journal is worth
    (``bench/receive.py --receiver direct``).
    """
    spool = spool or Spool(cfg.data_dir)
    spool.clean_tmp()
    ledger.close_all_associations()
    mover = None
    if journalled:
        reserve = cfg.node.min_free_disk_gb * 1e9 + JOURNAL_DISK_MARGIN

        def may_grow(nbytes: int) -> bool:  # a new segment never takes the spool's last space
            return shutil.disk_usage(spool.data_dir).free - nbytes >= reserve

        mover = JournalMover(Journal(cfg.data_dir / JOURNAL_DIR, may_grow=may_grow), spool, ledger)
        mover.replay()
    rescan(spool, ledger)
    state = ReceiverState(cfg.node.min_free_disk_gb, on_release=on_release,
                          journal=mover.journal if mover is not None else None)
    state.disk_checked(spool.free_gb())
    if mover is not None:
        mover.start()
    ae = make_ae(cfg)
    try:
        server = make_server(cfg, spool, ledger, state, tuned=tuned, ae=ae)
    except BaseException:
        if mover is not None:
            mover.stop()
        raise
    plain = None
    if cfg.node.tls is not None and cfg.node.plain_port is not None:
        try:
            plain = make_server(cfg, spool, ledger, state, tuned=tuned, ae=ae, port=cfg.node.plain_port, plain=True)
        except OSError:
            server.shutdown()  # leave nothing listening behind
            if mover is not None:
                mover.stop()
            raise
        logger.warning("unencrypted listener open beside the TLS one (node.plain_port)",
                       extra={"bind": cfg.node.bind, "port": plain.server_address[1]})
    if mover is not None:
        journal = mover.journal
        for listener in (server, plain):
            if listener is not None:
                # A released association's instances are all in the spool and the ledger (tuned servers).
                listener.before_release = lambda: journal.wait_moved(MOVER_WAIT_S)  # type: ignore[attr-defined]
    pool = None
    if tuned and cfg.node.receive_processes > 1:
        pool = ReceivePool(cfg, state, mover.journal if mover is not None else None)
        state.remote_open = ae.others = pool.remote_open  # type: ignore[method-assign]
        pool.attach(server, tls=cfg.node.tls is not None)
        if plain is not None:
            pool.attach(plain, tls=False)
        pool.start()
    logger.info("receiver listening", extra={"ae_title": cfg.node.ae_title, "bind": cfg.node.bind,
                                             "port": server.server_address[1], "tls": cfg.node.tls is not None,
                                             "receive_processes": cfg.node.receive_processes if tuned else 1})
    return Receiver(server=server, spool=spool, state=state, plain_server=plain, mover=mover, pool=pool)

