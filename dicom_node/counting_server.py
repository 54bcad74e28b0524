"""The receiver's listener class: pynetdicom's threaded server that knows how many connections it
holds, and can hand a new one to another process instead of serving it.

pynetdicom's request handler starts an association's threads and returns at once, so the server
itself cannot tell when a connection ends. Here each connection's request thread waits for its
association to finish (the handler keeps the association as ``handler.assoc``, see
:mod:`dicom_node.netfast`), so :attr:`CountingServer.connections` counts every connection from
accept to close, handshakes and negotiations included, and ``on_connection_end`` runs exactly
once per connection. :mod:`dicom_node.receive_pool` balances connections across receive
processes with these counts and keeps ``node.max_associations`` for all of them together.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target


class CountingServer(ThreadedAssociationServer):
    """``ThreadedAssociationServer`` that counts its open connections.

    ``dispatch(request, address)`` (optional), called for each accepted connection before it is
    served, returns True when it has handed the connection elsewhere; this process then closes
    its copy of the descriptor without shutting the connection down.
    """

    # Request threads wait for their association; neither they nor stopping may hold up exit.
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections = 0
        self._count_lock = threading.Lock()
        self.dispatch: Callable[[Any, Any], bool] | None = None
        self.on_connection_end: Callable[[], None] | None = None
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.dispatch is not None and self.dispatch(request, client_address):
            self.close_request(request)  # close only: a shutdown would end the other process's connection
            return
        with self._count_lock:
            self.connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._ended()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._ended()

    def finish_request(self, request: Any, client_address: Any) -> None:
        handler = self.RequestHandlerClass(request, client_address, self)
        assoc = getattr(handler, "assoc", None)  # set by netfast's handler; absent on an untuned server
        if assoc is not None:
            assoc.join()

    def _ended(self) -> None:
        with self._count_lock:
            self.connections -= 1
        if self.on_connection_end is not None:
            self.on_connection_end()


def start_server(ae: AE, address: tuple[str, int], handlers: list[Any],
                 server_class: type[CountingServer] = CountingServer, **kwargs: Any) -> CountingServer:
    """What ``ae.start_server(address, block=False, ...)`` does, with ``server_class``
    (pynetdicom 3.0.4 offers no way to choose the server class there)."""
    server = ae.make_server(address, evt_handlers=handlers, server_class=server_class, **kwargs)
    threading.Thread(target=make_target(server.serve_forever), name=f"Acceptor@{address[1]}", daemon=True).start()
    ae._servers.append(server)  # as start_server does: server.shutdown() removes it from there
    return server
