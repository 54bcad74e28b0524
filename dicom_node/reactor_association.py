"""pynetdicom's acceptor (association) loop, woken by a complete DIMSE message instead of a
fixed 1 ms sleep; the DUL side and the reasons are in :mod:`dicom_node.reactor`.

The loop is pynetdicom 3.0.4's ``Association._run_reactor`` line for line except for the wait,
the receiver's own C-STORE path (:mod:`dicom_node.store_path`), and the order of the release:
the association counts as released before its answer leaves. A C-STORE request that arrives
while this loop has nothing in hand is served by the DUL thread that read it
(:meth:`EventAssociation.serve_now`); requests are still answered one at a time, in order.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, cast

from pynetdicom import evt
from pynetdicom.association import Association

from dicom_node.reactor import TIMER_TICK_S
from dicom_node.store_path import StoreAssembler, StoreFunction, StoreRequest, serve

_ASSOC_LOG = logging.getLogger("pynetdicom.association")


class EventAssociation(Association):
    """pynetdicom's acceptor loop, woken by a complete DIMSE message instead of a fixed sleep.

    ``before_release``, when set, runs before the A-RELEASE response is sent.
    """

    before_release: Callable[[], object] | None = None
    #: Set on the receiver's associations: C-STORE requests bypass pynetdicom's DIMSE layer.
    store_assembler: StoreAssembler | None = None
    store_function: StoreFunction | None = None

    def _serving_setup(self) -> None:
        """Before the threads start (the class is swapped onto pynetdicom's association)."""
        #: Held while a message is taken from the queue and served, by whichever thread serves it.
        self._serving = threading.Lock()

    def serve_now(self, request: StoreRequest) -> bool:
        """Serve ``request`` on the calling (DUL) thread; False, with nothing done, when this
        association's thread is serving or has messages queued (the request then queues behind
        them), when pynetdicom has paused the loop, or when it is not established."""
        if self.store_function is None or not self._reactor_checkpoint.is_set():
            return False
        if not self._serving.acquire(blocking=False):
            return False
        try:
            if self.dimse.msg_queue.qsize() or not self.is_established or self._kill:
                return False
            # A blocking abort from this thread would wait for this thread to end.
            serve(self, request, self.store_function, abort=lambda: self.abort(block=False))
            return True
        finally:
            self._serving.release()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if type(msg) is StoreRequest and self.store_function is not None:
            serve(self, msg, self.store_function)
            return
        super()._serve_request(msg, context_id)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor; only time.sleep(0.001) became a wait on the
        # message queue, which the DUL also signals when it queues a primitive for us.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            with messages.not_empty:
                if not messages._qsize():
                    # A primitive queued just before we looked (A-RELEASE, A-ABORT) already signalled:
                    # look again soon, as pynetdicom does, rather than after a whole tick.
                    messages.not_empty.wait(0.001 if self.dul.to_user_queue.qsize() else TIMER_TICK_S)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            with self._serving:
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                if self.before_release is not None:
                    self.before_release()  # the receive journal's instances into the spool first
                # Released before the answer leaves: the peer may close the connection, and the
                # DUL thread report it (EVT_CONN_CLOSE), before this thread runs again.
                self.is_released = True
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
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
