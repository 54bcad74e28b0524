"""The DICOM receiver: C-ECHO and C-STORE SCP writing every instance durably to the spool.

``store_instance`` never decodes the data set. It walks the element headers of the received
bytes (:mod:`dicom_node.wire`) for the four UIDs it needs. While at most
:data:`JOURNAL_MAX_ASSOCIATIONS` associations are open, it appends file meta + the bytes as
received to the receive journal (:mod:`dicom_node.journal`) and answers Success once the record
is flushed; the journal mover puts it into the spool and the ledger moments later. With more
associations open, and without a journal (``start_receiver(journalled=False)``, the C-GET
retrieval of ``dicom-node reprocess``), it writes the spool file (fsync, atomic rename, folder
fsync), records the instance in the ledger, and only then answers Success. Every failure maps
to a named status from :mod:`dicom_node.names` and is logged; the handler never raises. Below
``node.min_free_disk_gb`` instances are refused with 0xA700 so that the sender retries later,
and the state is visible in ``Receiver.status()``.

pynetdicom's receive path is tuned in :mod:`dicom_node.netfast` (why: see there); C-STORE requests
reach ``store_instance`` through :mod:`dicom_node.store_path`, other messages through pynetdicom.
"""
from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import _config as pynetdicom_config
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import netfast
from dicom_node.config import Config
from dicom_node.group_record import GroupRecorder
from dicom_node.journal import Entry, Journal
from dicom_node.journal_mover import JournalMover
from dicom_node.ledger import Ledger
from dicom_node.logs import short_uid
from dicom_node.names import (JOURNAL_DIR, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH,
                              STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS)
from dicom_node.observability import events as observed
from dicom_node.spool import Spool, clean_uid, is_disk_full
from dicom_node.tls import peer_subject, server_context
from dicom_node.tls_server import start_tls_server
from dicom_node.wire import MalformedDataset, file_meta, scan

logger = logging.getLogger(__name__)

#: Seconds the end of an association waits for the journal mover to record its instances (so
#: that the assembler never sees a released association whose last instances are not in the
#: ledger yet), and an instance too large for the journal waits for older records to be moved.
MOVER_WAIT_S = 10.0
#: Bytes left free beyond ``node.min_free_disk_gb`` when the journal grows by a segment.
JOURNAL_DISK_MARGIN = 64 * 1024 * 1024
#: Open associations up to which instances go through the receive journal. With more, each is
#: written straight into the spool (file and folder flushed) by its association's thread: the
#: journal serialises appends, flushes and the mover's copying, and with 8 concurrent
#: associations it received 0.7-0.8x what one association did, direct writes 1.03-1.15x and
#: 25 % more than the journal (docs/benchmarks.md). A lone association is faster journalled.
JOURNAL_MAX_ASSOCIATIONS = 1


@dataclass
class ReceiverState:
    """Counters and the low-disk flag, shared by all association threads.

    ``snapshot()`` is what ``dicom-node status`` shows; the lock also serialises the handlers'
    ledger writes, so SQLite never makes a receiving thread sleep in its busy handler.
    """

    min_free_gb: float
    low_disk: bool = False
    free_gb: float | None = None
    stored: int = 0
    refused_low_disk: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    assoc_ids: "weakref.WeakKeyDictionary[Any, str]" = field(default_factory=weakref.WeakKeyDictionary,
                                                             repr=False)
    #: Called after an association's end is recorded (the node wakes its loop: a released
    #: series may be complete now).
    on_release: Callable[[], None] | None = field(default=None, repr=False)
    #: Where acknowledged instances go first (:mod:`dicom_node.journal`); None writes each
    #: straight into the spool and the ledger (fsync file and folder, then acknowledge).
    journal: Journal | None = field(default=None, repr=False)
    #: Commits the ledger rows of directly written instances together (set by ``make_server``).
    recorder: GroupRecorder | None = field(default=None, repr=False)

    def disk_checked(self, free_gb: float) -> bool:
        """Record the free space; returns True when storing may go on. Logs transitions only."""
        self.free_gb = free_gb
        low = free_gb < self.min_free_gb
        if low != self.low_disk:
            self.low_disk = low
            if low:
                logger.error("free disk below node.min_free_disk_gb: refusing instances with 0xA700",
                             extra={"free_gb": round(free_gb, 2), "min_free_gb": self.min_free_gb})
            else:
                logger.info("free disk back above node.min_free_disk_gb: accepting instances",
                            extra={"free_gb": round(free_gb, 2)})
        return not low

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        return {"low_disk": self.low_disk, "free_gb": None if self.free_gb is None else round(self.free_gb, 2),
                "min_free_gb": self.min_free_gb, "stored": self.stored,
                "refused_low_disk": self.refused_low_disk, "failed": self.failed,
                "open_associations": len(self.assoc_ids)}


def _failure(status: int, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    # LO: 64 characters, no backslash (it separates values: a reason quoting bytes such as
    # "invalid VR b'\\x9c'" would reach the peer as two values, the second dropped).
    rsp.ErrorComment = comment.replace("\\", "/")[:64]
    return rsp


# -- event handlers (module level, dependencies bound as arguments) ---------------------------
def handle_store(event: Event, spool: Spool, ledger: Ledger, state: ReceiverState) -> int | Dataset:
    """EVT_C_STORE: :func:`store_instance` for a request pynetdicom decoded (associations of an
    untuned server, and requests the store path hands over to pynetdicom)."""
    request = event.request
    with request.DataSet.getbuffer() as body:
        return store_instance(event.assoc, event.context.transfer_syntax, str(request.AffectedSOPClassUID or ""),
                              str(request.AffectedSOPInstanceUID or ""), body, spool, ledger, state)


def store_instance(assoc: Any, syntax: str, sop_class_uid: str, sop_uid: str, body: bytes | memoryview,
                   spool: Spool, ledger: Ledger, state: ReceiverState) -> int | Dataset:
    """Persist one C-STORE data set; answer Success only once it is on disk and in the ledger.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        The association it came on (its id in ``state``, the calling AE title).
    syntax, sop_class_uid, sop_uid : str
        The context's transfer syntax and the request's Affected SOP Class and Instance UIDs.
    body : bytes or memoryview
        The data set as received; written as it is, never decoded.
    spool, ledger : Spool, Ledger
        Where the file goes and where it is recorded.
    state : ReceiverState
        Low-disk threshold (``node.min_free_disk_gb``), counters, association ids, ledger lock.

    Returns
    -------
    int or pydicom.dataset.Dataset
        0x0000, or a failure status with an ErrorComment: 0xA700 (low disk, disk error),
        0xA900 (data set does not match the request), 0xC000 (bytes cannot be parsed, or any
        unexpected error, which is logged with its traceback).
    """
    sop_uid = sop_uid.rstrip("\x00 ")
    assoc_id = state.assoc_ids.get(assoc)
    try:
        free_gb = spool.free_gb()
        if state.journal is not None:  # journalled instances still to be copied into the spool
            free_gb -= state.journal.unmoved_bytes() / 1e9
        if not state.disk_checked(free_gb):
            state.count("refused_low_disk")
            observed.instance_refused("low_disk", assoc_id, sop_uid, STATUS_OUT_OF_RESOURCES)
            return _failure(STATUS_OUT_OF_RESOURCES, "receiver disk nearly full; retry later")
        try:
            header = scan(body, syntax)
        except MalformedDataset as exc:
            state.count("failed")
            logger.warning("refused an undecodable data set", extra={"sop": short_uid(sop_uid), "why": str(exc)})
            observed.instance_refused("undecodable", assoc_id, sop_uid, STATUS_CANNOT_UNDERSTAND)
            return _failure(STATUS_CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}")
        problem = _mismatch(header, sop_uid, sop_class_uid)
        if problem:
            state.count("failed")
            logger.warning("refused a data set that does not match its request",
                           extra={"sop": short_uid(sop_uid), "why": problem})
            observed.instance_refused("mismatch", assoc_id, sop_uid, STATUS_DATASET_MISMATCH)
            return _failure(STATUS_DATASET_MISMATCH, problem)
        meta = file_meta(header.sop_class_uid, sop_uid, syntax, PYNETDICOM_IMPLEMENTATION_UID,
                         PYNETDICOM_IMPLEMENTATION_VERSION, assoc.requestor.ae_title)
        journal = state.journal
        if journal is not None and len(state.assoc_ids) <= JOURNAL_MAX_ASSOCIATIONS and journal.fits(len(meta) + len(body)):
            journal.append(Entry(header.study_uid, header.series_uid, sop_uid, header.sop_class_uid,
                                 assoc_id, time.time()), (meta, body))
            state.count("stored")
            observed.instance_stored(assoc_id, header.study_uid, header.series_uid)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("journalled", extra={"sop": short_uid(sop_uid)})
            return STATUS_SUCCESS
        if journal is not None and journal.unmoved_bytes():
            # Written directly after any journalled copy of it, which the mover would otherwise
            # put over this newer one.
            journal.wait_moved(MOVER_WAIT_S)

        def write(fh: Any) -> None:
            fh.write(meta)
            fh.write(body)

        path = spool.put_file(header.study_uid, header.series_uid, sop_uid, write)
        row = (sop_uid, header.study_uid, header.series_uid, header.sop_class_uid, path, assoc_id, time.time())
        if state.recorder is not None:
            state.recorder.record(row)
        else:
            with state.lock:
                ledger.record_instances([row])
        state.count("stored")
        observed.instance_stored(assoc_id, header.study_uid, header.series_uid)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("stored", extra={"sop": short_uid(sop_uid), "series": short_uid(header.series_uid)})
        return STATUS_SUCCESS
    except OSError as exc:
        state.count("failed")
        logger.exception("cannot write an instance to the spool", extra={"sop": short_uid(sop_uid)})
        observed.instance_refused("disk_error", assoc_id, sop_uid, STATUS_OUT_OF_RESOURCES)
        why = "receiver disk full; retry later" if is_disk_full(exc) else f"receiver disk error: {exc.strerror}"
        return _failure(STATUS_OUT_OF_RESOURCES, why)
    except Exception as exc:  # noqa: BLE001 - a handler must answer, never raise
        state.count("failed")
        logger.exception("unexpected failure while storing an instance", extra={"sop": short_uid(sop_uid)})
        observed.instance_refused("error", assoc_id, sop_uid, STATUS_CANNOT_UNDERSTAND)
        return _failure(STATUS_CANNOT_UNDERSTAND, f"receiver error: {type(exc).__name__}")


def _mismatch(header: Any, sop_uid: str, sop_class_uid: str) -> str | None:
    try:
        clean_uid(sop_uid, "Affected SOP Instance UID")
        clean_uid(header.study_uid, "StudyInstanceUID")
        clean_uid(header.series_uid, "SeriesInstanceUID")
    except ValueError as exc:
        return str(exc)
    if header.sop_instance_uid != sop_uid:
        return "SOPInstanceUID differs from the request's Affected SOP Instance UID"
    if header.sop_class_uid != sop_class_uid.rstrip("\x00 "):
        return "SOPClassUID differs from the request's Affected SOP Class UID"
    return None


def handle_echo(event: Event) -> int:
    """C-ECHO: the receiver is up."""
    return STATUS_SUCCESS


def called_ae_title(event: Event) -> str:
    """The Called AE Title the peer asked for (a node that does not insist on its own title
    accepts others, and lane rules may tell them apart); our own title when unknown."""
    primitive = getattr(event.assoc.requestor, "primitive", None)
    called = getattr(primitive, "called_ae_title", None)
    return str(called).strip() if called else event.assoc.acceptor.ae_title.strip()


def handle_accepted(event: Event, ledger: Ledger, state: ReceiverState) -> None:
    assoc_id = uuid.uuid4().hex
    state.assoc_ids[event.assoc] = assoc_id
    calling = event.assoc.requestor.ae_title
    try:
        with state.lock:
            ledger.open_association(assoc_id, calling, called_ae=called_ae_title(event))
    except Exception:  # noqa: BLE001 - the association itself can go on; instances carry the id
        logger.exception("cannot record an association in the ledger", extra={"assoc": assoc_id})
    observed.association_opened(assoc_id, calling, called_ae_title(event),
                                f"{event.assoc.requestor.address}:{event.assoc.requestor.port}")
    extra = {"assoc": assoc_id, "calling_ae": calling, "peer": event.assoc.requestor.address}
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if hasattr(sock, "getpeercert"):  # DICOM TLS: whose certificate it was (a device, never a patient)
        extra["tls_peer"] = peer_subject(sock) or "(no certificate)"
    logger.info("association accepted", extra=extra)


def handle_closed(event: Event, ledger: Ledger, state: ReceiverState) -> None:
    assoc_id = state.assoc_ids.pop(event.assoc, None)
    if assoc_id is None:
        return  # rejected or never negotiated: nothing was opened
    if state.journal is not None and not state.journal.wait_moved(MOVER_WAIT_S):
        logger.warning("journal mover behind at the end of an association; its series may be re-opened",
                       extra={"assoc": assoc_id})
    aborted = bool(event.assoc.is_aborted)
    try:
        with state.lock:
            ledger.close_association(assoc_id, aborted=aborted)
    except Exception:  # noqa: BLE001
        logger.exception("cannot record the end of an association", extra={"assoc": assoc_id})
    how = "aborted" if aborted else "released"
    observed.association_closed(assoc_id, how)
    logger.info(f"association {how}", extra={"assoc": assoc_id})
    if state.on_release is not None:
        state.on_release()


def handle_rejected(event: Event, allowed: list[str], max_associations: int) -> None:
    calling = event.assoc.requestor.ae_title
    reason = ("calling AE title not in node.allowed_calling_aets" if allowed and calling not in allowed
              else f"node.max_associations ({max_associations}) associations already open")
    logger.warning("association rejected", extra={"calling_ae": calling, "peer": event.assoc.requestor.address,
                                                  "why": reason})
    observed.association_rejected(calling, f"{event.assoc.requestor.address}:{event.assoc.requestor.port}", reason)


# -- building and starting ----------------------------------------------------------------------
def make_ae(cfg: Config) -> AE:
    """The acceptor AE: every storage SOP class in every transfer syntax, limits from config."""
    node = cfg.node
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        # pynetdicom's standard handlers format every PDU and DIMSE message for its debug log
        # (~0.2 ms per instance) even when nothing would be printed.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=node.ae_title)
    ae.supported_contexts = netfast.storage_contexts()
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = netfast.MAX_PDU
    ae.require_calling_aet = list(node.allowed_calling_aets)
    return ae


def make_server(cfg: Config, spool: Spool, ledger: Ledger, state: ReceiverState | None = None, *,
                tuned: bool = True, ae: AE | None = None, port: int | None = None,
                plain: bool = False) -> ThreadedAssociationServer:
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
    handlers = [
        (evt.EVT_C_STORE, handle_store, [spool, ledger, state]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ACCEPTED, handle_accepted, [ledger, state]),
        (evt.EVT_CONN_CLOSE, handle_closed, [ledger, state]),
        (evt.EVT_REJECTED, handle_rejected, [list(cfg.node.allowed_calling_aets), cfg.node.max_associations]),
    ]
    ae = ae or make_ae(cfg)
    address = (cfg.node.bind, cfg.node.port if port is None else port)
    tls = None if plain else cfg.node.tls
    if tls is None:
        server = ae.start_server(address, block=False, evt_handlers=handlers)
    else:
        server = start_tls_server(ae, address, handlers, server_context(tls), cfg.node.acse_timeout_s)
    if tuned:
        netfast.tune_server(server)
        # C-STORE requests of this server's associations bypass pynetdicom's DIMSE layer.
        server.store_function = functools.partial(  # type: ignore[attr-defined]
            store_instance, spool=spool, ledger=ledger, state=state)
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

    server: ThreadedAssociationServer
    spool: Spool
    state: ReceiverState
    #: The unencrypted listener beside a TLS one (``node.plain_port``), if configured.
    plain_server: ThreadedAssociationServer | None = None
    #: Moves journalled instances into the spool; None when the receiver writes them directly.
    mover: JournalMover | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def status(self) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        if self.mover is not None:
            snapshot.update(self.mover.status())
        return snapshot

    def shutdown(self) -> None:
        self.server.shutdown()
        if self.plain_server is not None:
            self.plain_server.shutdown()
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
    logger.info("receiver listening", extra={"ae_title": cfg.node.ae_title, "bind": cfg.node.bind,
                                             "port": server.server_address[1], "tls": cfg.node.tls is not None})
    return Receiver(server=server, spool=spool, state=state, plain_server=plain, mover=mover)

