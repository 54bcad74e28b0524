"""The receiver's TLS listener: pynetdicom's threaded server with the handshake moved into each
connection's own thread.

pynetdicom 3.0.4 wraps an accepted socket with the server's context inside ``get_request``,
which runs in the one thread that accepts every connection, and the handshake happens there.
A peer that opens TCP and sends nothing (or sends plain DICOM slowly) would hold up every
other peer for as long as it likes. Here ``get_request`` only wraps the socket; the
handshake runs in the connection's thread under ``node.acse_timeout_s``, and a failed one is
logged with the reason and the connection closed, while the server goes on accepting.
"""
from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import AE

from dicom_node.counting_server import CountingServer, start_server

logger = logging.getLogger(__name__)

#: Why the receiver refused a client's handshake (OpenSSL reasons), for its log.
_REFUSED = (
    (("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"),
     "the client presented no certificate (node.tls.require_client_certificate)"),
    (("CERTIFICATE_VERIFY_FAILED",), "the client's certificate is not signed by node.tls.ca_certificates, "
                                     "or has expired"),
    (("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER", "PACKET_LENGTH_TOO_LONG"),
     "the client spoke plain DICOM (or another protocol) to the TLS port"),
    (("UNSUPPORTED_PROTOCOL", "PROTOCOL_VERSION", "VERSION_TOO_LOW"),
     "the client offered no TLS version of 1.2 or newer"),
    (("NO_SHARED_CIPHER",), "the client offered no cipher suite in common"),
    (("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN"),
     "the client does not trust the node's certificate (node.tls.certificate)"),
)


def explain_refused(exc: BaseException, timeout: float) -> str:
    """The receiver's reading of a client's failed handshake, for its log."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no TLS handshake within {timeout:g} s (node.acse_timeout_s)"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        for words, text in _REFUSED:
            if any(word in reason for word in words):
                return text
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"connection lost during the TLS handshake: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


class TlsAssociationServer(CountingServer):
    """:class:`CountingServer` that runs each TLS handshake in the connection's thread.

    Parameters
    ----------
    *args, **kwargs:
        As ``ThreadedAssociationServer`` (``ssl_context`` is required).
    handshake_timeout:
        Seconds a client has to complete the handshake.
    """

    def __init__(self, *args: Any, handshake_timeout: float, **kwargs: Any) -> None:
        self.handshake_timeout = handshake_timeout
        super().__init__(*args, **kwargs)
        if self.ssl_context is None:
            raise ValueError("TlsAssociationServer needs an ssl_context")

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            peer = client_address[0] if isinstance(client_address, tuple) else client_address
            if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError)):
                # Closed before saying anything: a port check by monitoring or a load balancer.
                logger.debug("connection closed before the TLS handshake", extra={"peer": peer})
            else:
                logger.warning("TLS connection refused", extra={
                    "peer": peer, "why": explain_refused(exc, self.handshake_timeout)})
            self.shutdown_request(request)
            return
        super().finish_request(request, client_address)


def start_tls_server(ae: AE, address: tuple[str, int], handlers: list[Any], context: ssl.SSLContext,
                     handshake_timeout: float) -> TlsAssociationServer:
    """Start a :class:`TlsAssociationServer` on ``address`` (non-blocking)."""
    server = start_server(ae, address, handlers, TlsAssociationServer, ssl_context=context,
                          handshake_timeout=handshake_timeout)
    assert isinstance(server, TlsAssociationServer)
    return server
