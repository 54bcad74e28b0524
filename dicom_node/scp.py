"""The DICOM receiver, started.

``start_receiver`` prepares the spool (partial writes dropped, the receive journal replayed, files
the ledger missed recorded) and starts the servers of :mod:`dicom_node.receive_server`, whose
handlers (:mod:`dicom_node.receive_handlers`) write every instance durably before it is
acknowledged, and with ``node.receive_processes`` above 1 the helper receive processes
(:mod:`dicom_node.receive_pool`).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from pydicom.filereader import read_file_meta_info

from dicom_node.config import Config
from dicom_node.counting_server import CountingServer
from dicom_node.journal import Journal
from dicom_node.journal_mover import JournalMover
from dicom_node.ledger import Ledger
from dicom_node.names import JOURNAL_DIR
from dicom_node.receive_handlers import MOVER_WAIT_S, ReceiverState
from dicom_node.receive_pool import ReceivePool
from dicom_node.receive_server import end_associations, make_ae, make_server
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

#: Bytes left free beyond ``node.min_free_disk_gb`` when the journal grows by a segment.
JOURNAL_DISK_MARGIN = 64 * 1024 * 1024


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
        """Stop listening, let open associations finish (or abort them after a grace period, in
        every receive process at once), then move the journal's last instances into the spool."""
        self.server.shutdown()
        if self.plain_server is not None:
            self.plain_server.shutdown()
        if self.pool is not None:
            self.pool.begin_stop()
        end_associations(self.server.ae)
        if self.pool is not None:
            self.pool.stop()
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
        try:
            pool.start()
        except BaseException:
            Receiver(server=server, spool=spool, state=state, plain_server=plain, mover=mover, pool=pool).shutdown()
            raise
    logger.info("receiver listening", extra={"ae_title": cfg.node.ae_title, "bind": cfg.node.bind,
                                             "port": server.server_address[1], "tls": cfg.node.tls is not None,
                                             "receive_processes": cfg.node.receive_processes if tuned else 1})
    return Receiver(server=server, spool=spool, state=state, plain_server=plain, mover=mover, pool=pool)

