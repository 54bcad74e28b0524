"""Event-driven versions of pynetdicom's two per-association reactor loops.

Both loops of pynetdicom 3.0.4 poll: the DUL thread sleeps 1 ms whenever it has nothing to do,
the association thread sleeps 1 ms before each look at its message queue. A C-STORE crosses three
such sleeps (message complete -> handler -> response sent -> next request read), ~3 ms per
instance on the 2-core machine, more than the rest of the receive path. These classes keep
pynetdicom's loops line for line (copied from 3.0.4, the pinned version) and replace only
the sleeps: the DUL thread waits on its socket and a wake-up pipe written by ``send_pdu``, the
association thread on its message queue. They react at once.

Nothing else needs polling: every hand-over between the two threads wakes the other one (a PDU
to send, a primitive for the association such as A-RELEASE or A-ABORT, an event queued from
outside the DUL thread, the order to stop), so both loops otherwise wake only every
:data:`TIMER_TICK_S` for pynetdicom's timers (ARTIM, network idle), which count whole seconds.
Polling every millisecond, as pynetdicom does, cost ~3.5% of a core per open association even
when idle, and the interpreter lock with it: 28% of a core for 8 idle associations.

:class:`EventDUL` is here, :class:`~dicom_node.reactor_association.EventAssociation` in its own
module; :func:`dicom_node.netfast.tune_server` installs them on each new association of the
receiver.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
import queue
from typing import Any, Callable, cast

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from dicom_node.pdu_read import FastSocket, pdv_views, read_pdu

_DUL_LOG = logging.getLogger("pynetdicom.dul")

#: Seconds either loop waits at most when nothing wakes it (pynetdicom's timers, see above).
TIMER_TICK_S = 0.05


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue whose ``put`` also calls ``on_put`` (to wake the thread that reads it)."""

    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()

    @classmethod
    def replacing(cls, old: "queue.Queue[Any]", on_put: Callable[[], None]) -> "_WakingQueue":
        """A waking queue holding what ``old`` holds (the acceptor's socket queued Evt5 already)."""
        new = cls(on_put)
        new.queue.extend(old.queue)
        return new


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on its socket and a wake-up pipe instead of sleeping."""

    def _wake_setup(self) -> None:
        """Before the threads start: the wake-up pipe's lock, and queues that wake their reader."""
        self._wake_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake_fds: tuple[int, int] | None = None
        self._reactor_thread: int | None = None
        # Events come from the DUL thread itself, except a few (transport closed by another thread).
        self.event_queue = _WakingQueue.replacing(self.event_queue, self._wake_from_outside)
        # A-ASSOCIATE, A-RELEASE, A-ABORT for the association thread, which waits on its messages.
        self.to_user_queue = _WakingQueue.replacing(self.to_user_queue, self._wake_association)

    def _wake_from_outside(self) -> None:
        if threading.get_ident() != self._reactor_thread:
            self._wake()

    def _wake_association(self) -> None:
        messages = self.assoc.dimse.msg_queue
        with messages.not_empty:
            messages.not_empty.notify_all()

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        # pynetdicom 3.0.4 DULServiceProvider.stop_dul, waking the reactor instead of waiting for its poll.
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake()
            while self.is_alive():
                time.sleep(self._run_loop_delay)
            return True
        return False

    def _read_pdu_data(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider._read_pdu_data, reading header and body into one
        # buffer (pdu_read), with the same events and log messages for each way it can fail.
        sock = self.socket
        if not isinstance(sock, FastSocket):
            super()._read_pdu_data()
            return
        try:
            outcome, pdu = read_pdu(sock)
        except (OSError, TimeoutError) as exc:
            _DUL_LOG.error("Connection closed before the entire PDU was received")
            _DUL_LOG.exception(exc)
            self._transport_closed()
            return
        if outcome == "closed":
            self._transport_closed()
            return
        if outcome == "unknown":
            _DUL_LOG.error(f"Unknown PDU type received '0x{pdu:02X}'")
            self.event_queue.put("Evt19")
            return
        if outcome == "short":
            _DUL_LOG.error(f"The received PDU is shorter than expected ({pdu[0]} of {pdu[1]} bytes received)")
            self._transport_closed()
            return
        if self._deliver_p_data(pdu):
            return
        try:
            decoded, event = self._decode_pdu(pdu)
            self.event_queue.put(event)
        except Exception as exc:
            _DUL_LOG.error("Unable to decode the received PDU data")
            _DUL_LOG.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(decoded)

    def _transport_closed(self) -> None:
        self.event_queue.put("Evt17")
        if self.state_machine.current_state == "Sta2":
            # Closed before an A-ASSOCIATE-RQ came (a port check, a scanner giving up): pynetdicom's
            # acceptor would wait node.acse_timeout_s for one, its connection counted as open
            # (and towards node.max_associations) all that time. None ends that wait now.
            self.to_user_queue.put(None)

    def _deliver_p_data(self, pdu: bytearray) -> bool:
        """Hand a P-DATA-TF PDU of an established association straight to the DIMSE layer.

        This is what the state machine would do (Sta6 + Evt10 -> DT-2 -> Sta6: no state change)
        without its queue and action lookup, six times per CT slice. Only when nothing observes
        the transition and no event waits before this one; anything else goes pynetdicom's way.
        """
        if (pdu[0] != 0x04 or self.state_machine.current_state != "Sta6" or self.event_queue.qsize()
                or self._recv_pdu.qsize() or self.assoc.get_handlers(evt.EVT_DATA_RECV)
                or self.assoc.get_handlers(evt.EVT_PDU_RECV) or self.assoc.get_handlers(evt.EVT_FSM_TRANSITION)):
            return False
        values = pdv_views(pdu)
        if values is None:
            return False  # malformed: pynetdicom's decoder reports it
        dimse = self.assoc.dimse
        assembler = getattr(self.assoc, "store_assembler", None)
        if assembler is None or dimse.message is not None or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            primitive = P_DATA()
            primitive.presentation_data_value_list.extend(values)  # type: ignore[arg-type]
            dimse.receive_primitive(primitive)
            return True
        requests, handover = assembler.feed(values)
        for request in requests:
            if len(requests) == 1 and handover is None:
                # Served on this thread when the association's thread has nothing in hand:
                # the sender waits for this answer anyway, and a hand-over to the other thread
                # (its wake-up and the interpreter lock) costs a tenth of a lone association's
                # time per instance (docs/benchmarks.md, Receive).
                self._idle_timer.restart()
                if self.assoc.serve_now(request):
                    continue
            dimse.msg_queue.put((request.context_id, request))
        if handover is not None:
            dimse.receive_primitive(handover)
        return True

    def _send(self, pdu: Any) -> None:
        with self._send_lock:
            super()._send(pdu)

    def send_now(self, pdu: bytes) -> bool:
        """Send an encoded P-DATA-TF PDU from the calling thread; False (nothing sent) unless
        the association is established and nothing waits in the queue to the DUL thread.

        A P-DATA request changes no state (PS3.8 9.2, DT-1: Sta6 stays Sta6), so it needs no
        round trip through the DUL thread's state machine; the lock keeps PDUs whole.
        """
        with self._send_lock:
            if (self.socket is None or self.state_machine.current_state != "Sta6"
                    or self.to_provider_queue.qsize()):
                return False
            self.socket.send(pdu)
            return True

    def _wake(self) -> None:
        with self._wake_lock:
            # Written under the lock: once the reactor has closed the pipe its descriptor
            # numbers may belong to another file (a spool file!) and must not be written.
            if self._wake_fds is not None:
                try:
                    os.write(self._wake_fds[1], b"\0")
                except OSError:
                    pass  # pipe full: a wake-up is pending anyway

    def _wait(self, delay: float) -> None:
        raw = getattr(self.socket, "socket", None)
        assert self._wake_fds is not None
        if self._tls_pending(raw) or (isinstance(self.socket, FastSocket) and self.socket.buffered()):
            return  # bytes already read (TLS: decrypted), which select() cannot see
        try:
            ready, _, _ = select.select([self._wake_fds[0]] + ([raw] if raw is not None else []), [], [], delay)
        except (OSError, ValueError):  # socket closed meanwhile
            time.sleep(delay)
            return
        if self._wake_fds[0] in ready:
            try:
                os.read(self._wake_fds[0], 4096)
            except OSError:
                pass

    @staticmethod
    def _tls_pending(raw: Any) -> bool:
        pending = getattr(raw, "pending", None)
        try:
            return bool(pending is not None and pending())
        except (OSError, ValueError):  # closed meanwhile
            return False

    def run_reactor(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._reactor_thread = threading.get_ident()
        with self._wake_lock:
            self._wake_fds = (read_fd, write_fd)
        try:
            self._reactor_loop()
        finally:
            with self._wake_lock:
                self._wake_fds = None
                os.close(read_fd)
                os.close(write_fd)
            self._wake_association()  # it watches for this thread's end

    def _reactor_loop(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor; only the sleep became self._wait().
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait(TIMER_TICK_S)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: abort on any failure in the reactor
                self._abort_after(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except Exception:  # queue.Empty
                sleep = True
                continue
            try:
                self.state_machine.do_action(event)
            except Exception as exc:
                # Not in pynetdicom 3.0.4, where this kills the thread with an uncaught error:
                # a P-DATA whose command set lacks CommandField raises AttributeError while
                # decoding, and the peer saw its connection dropped without an A-ABORT.
                self._abort_after(exc)
                return
            sleep = False

    def _abort_after(self, exc: Exception) -> None:
        _DUL_LOG.error("Exception in DUL.run(), aborting association")
        _DUL_LOG.exception(exc)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        cast(AssociationSocket, self.socket).send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
