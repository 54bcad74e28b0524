"""The receiver's event handlers: C-ECHO, C-STORE written durably to the spool, association records.

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

C-STORE requests reach ``store_instance`` through :mod:`dicom_node.store_path`; requests that
pynetdicom decodes reach it through ``handle_store``. :mod:`dicom_node.scp` builds and starts the
server that binds these handlers.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.events import Event

from dicom_node.group_record import GroupRecorder
from dicom_node.journal import Entry, Journal
from dicom_node.ledger import Ledger
from dicom_node.logs import short_uid
from dicom_node.names import (STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OUT_OF_RESOURCES,
                              STATUS_SUCCESS)
from dicom_node.observability import events as observed
from dicom_node.spool import Spool, clean_uid, is_disk_full
from dicom_node.tls import peer_subject
from dicom_node.wire import MalformedDataset, file_meta, scan

logger = logging.getLogger(__name__)

#: Seconds the end of an association waits for the journal mover to record its instances (so
#: that the assembler never sees a released association whose last instances are not in the
#: ledger yet), and an instance too large for the journal waits for older records to be moved.
MOVER_WAIT_S = 10.0
#: Open associations up to which instances go through the receive journal. With more, each is
#: written straight into the spool (file and folder flushed) by the thread serving it: the
#: journal serialises appends, flushes and the mover's copying. With 8 concurrent associations
#: all journalled, the node received 0.70-0.80x what one association did; written directly,
#: 0.92-1.15x (docs/benchmarks.md, Receive). A lone association is faster journalled.
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
    #: Connections other receive processes hold (:mod:`dicom_node.receive_pool`).
    remote_open: Callable[[], int] = field(default=lambda: 0, repr=False)

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
                "open_associations": len(self.assoc_ids) + self.remote_open()}


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
        alone = len(state.assoc_ids) + state.remote_open() <= JOURNAL_MAX_ASSOCIATIONS
        if journal is not None and alone and journal.fits(len(meta) + len(body)):
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
    calling, called = event.assoc.requestor.ae_title, called_ae_title(event)
    try:
        with state.lock:
            ledger.open_association(assoc_id, calling, called_ae=called)
    except Exception:  # noqa: BLE001 - the association itself can go on; instances carry the id
        logger.exception("cannot record an association in the ledger", extra={"assoc": assoc_id})
    observed.association_opened(assoc_id, calling, called,
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
    # Anything but an answered release: the peer's A-ABORT, a dropped connection, a timeout.
    # (``is_aborted`` is set by the association thread, possibly after the DUL thread has
    # reported the closed connection here; ``is_released`` is set before the release answer.)
    aborted = not event.assoc.is_released
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
