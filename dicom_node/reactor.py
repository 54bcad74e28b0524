"""Event-driven versions of pynetdicom's two per-association reactor loops.

Both loops of pynetdicom 3.0.4 poll: the DUL thread sleeps 1 ms whenever it has nothing to do,
the association thread sleeps 1 ms before each look at its message queue. A C-STORE crosses three
such sleeps (message complete -> handler -> response sent -> next request read), ~3 ms per
instance on the 2-core machine, more than the rest of the receive path. These classes keep
pynetdicom's loops line for line (copied from 3.0.4, the pinned version) and replace only
the sleeps: the DUL thread waits on its socket and a wake-up pipe written by ``send_pdu``, the
association thread on its message queue. They react at once and still wake every millisecond
for pynetdicom's timers (ARTIM, network idle), as before.

:func:`dicom_node.netfast.tune_server` installs them on each new association of the receiver.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Any, Callable, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

_ASSOC_LOG = logging.getLogger("pynetdicom.association")
_DUL_LOG = logging.getLogger("pynetdicom.dul")


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on its socket and a wake-up pipe instead of sleeping."""

    def _wake_setup(self) -> None:
        self._wake_lock = threading.Lock()
        self._wake_fds: tuple[int, int] | None = None

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
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
        if self._tls_pending(raw):
            return  # TLS: bytes already decrypted, which select() cannot see
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
        with self._wake_lock:
            self._wake_fds = (read_fd, write_fd)
        try:
            self._reactor_loop()
        finally:
            with self._wake_lock:
                self._wake_fds = None
                os.close(read_fd)
                os.close(write_fd)

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
                self._wait(self._run_loop_delay)
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


class EventAssociation(Association):
    """pynetdicom's acceptor loop, woken by a complete DIMSE message instead of a fixed sleep.

    ``before_release``, when set, runs before the A-RELEASE response is sent.
    """

    before_release: Callable[[], object] | None = None

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor; only time.sleep(0.001) became a wait on the
        # message queue of at most the same length.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            with messages.not_empty:
                if not messages._qsize():
                    messages.not_empty.wait(0.001)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                if self.before_release is not None:
                    self.before_release()  # the receive journal's instances into the spool first
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                _ASSOC_LOG.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else ""))
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                _ASSOC_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
