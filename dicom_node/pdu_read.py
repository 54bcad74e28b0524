"""Reading PDUs off an association's socket with few system calls and one copy.

pynetdicom 3.0.4 reads every PDU with a zero-timeout ``select`` (is anything there?), a
``recv`` of its 6-byte header and one or more ``recv`` calls for its body, then copies header and
body into a third buffer. dcmtk sends a 512x512 CT slice as six PDUs (the command, four 128 KiB
data PDUs and the rest), so that is about 20 system calls per instance, and each one releases
and re-takes the interpreter lock. With eight associations receiving at once, those hand-overs
cost more CPU than the work itself: about 68 context switches per instance against 12 for one
association (``perf stat`` during ``bench/receive.py``).

:class:`FastSocket` keeps a read-ahead buffer on plain TCP: the readiness check and header reads
take whatever the kernel already holds (often the next PDUs too), and a large remainder is read
straight into its destination with ``MSG_WAITALL`` (one call). TLS sockets keep pynetdicom's
``select`` and plain ``recv_into`` (their flags must be 0). :func:`read_pdu` puts header and body
in one buffer, and :func:`pdv_views` lets the DIMSE layer read the values in place
(:meth:`dicom_node.reactor.EventDUL._read_pdu_data`).
"""
from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from pynetdicom.transport import AssociationSocket

#: Read-ahead buffer per association on plain TCP.
AHEAD_BYTES = 256 * 1024
#: A rest of a PDU at least this long is read straight into the PDU's buffer (``MSG_WAITALL``);
#: a shorter one (a header, a command) through the read-ahead buffer, which may bring more.
DIRECT_BYTES = 64 * 1024
#: Maximum PDU length the receiver announces (bytes); 0 would let a peer send PDUs of any size,
#: which are read whole into memory, so a large but bounded value.
MAX_PDU = 4 * 1024 * 1024
#: Most bytes a read allocates before they arrive: a conforming peer's PDUs are no longer than
#: the maximum we announce. The PDU length field is 4 bytes, so a
#: broken or hostile peer can claim 4 GiB in a 10-byte packet; such a PDU grows its buffer only
#: as its bytes really arrive.
PREALLOCATE_MAX = MAX_PDU + 64 * 1024

_PDU_HEADER = struct.Struct(">BBL")


class FastSocket(AssociationSocket):
    """``recv(n)`` with a read-ahead buffer and as few system calls as the kernel allows."""

    _ahead: bytearray | None = None
    _start = 0
    _end = 0

    def buffered(self) -> int:
        """Bytes received and not yet handed out."""
        return self._end - self._start

    @property
    def ready(self) -> bool:
        if self._end > self._start:
            return True
        sock = self.socket
        if not _plain(sock) or self._is_connected is False:
            return bool(super().ready)
        try:
            self._fill(socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True  # the next read meets the error and reports the closed connection
        return True  # data, or the peer closed (the next read returns nothing)

    def _fill(self, flags: int = 0) -> int:
        """One ``recv_into`` into the emptied read-ahead buffer; the number of bytes it brought.

        Called only once everything buffered has been handed out (``ready`` when nothing is
        buffered, ``recv_after`` after taking all of it), so the buffer restarts at its front.
        """
        sock = self.socket
        assert sock is not None and self._start == self._end
        if self._ahead is None:
            self._ahead = bytearray(AHEAD_BYTES)
        self._start = self._end = 0
        with memoryview(self._ahead) as free:
            n = sock.recv_into(free, len(free), flags)
        self._end = n
        return n

    def _take(self, into: bytearray, at: int, wanted: int) -> int:
        n = min(wanted, self._end - self._start)
        if n:
            into[at:at + n] = memoryview(self._ahead)[self._start:self._start + n]  # type: ignore[arg-type]
            self._start += n
        return n

    def recv(self, nr_bytes: int) -> bytearray:
        return self.recv_after(b"", nr_bytes)

    def recv_after(self, prefix: bytes, nr_bytes: int) -> bytearray:
        """``prefix`` followed by the next ``nr_bytes`` received, in one buffer; shorter when the
        connection closes first (as pynetdicom's ``recv``)."""
        sock = self.socket
        if sock is None:
            return bytearray()
        head = len(prefix)
        total = head + nr_bytes
        buffer = bytearray(min(total, head + PREALLOCATE_MAX))
        buffer[:head] = prefix
        got = head + self._take(buffer, head, nr_bytes)
        plain = _plain(sock)
        while got < total:
            if plain and total - got < DIRECT_BYTES:
                if self._fill() == 0:
                    return buffer[:got]  # connection closed
                got += self._take(buffer, got, total - got)
                continue
            if got == len(buffer):
                buffer.extend(bytes(min(len(buffer), total - got)))
            with memoryview(buffer)[got:] as free:
                n = sock.recv_into(free, len(free), socket.MSG_WAITALL if plain else 0)
            if n == 0:  # connection closed: return what arrived, as pynetdicom does
                return buffer[:got]
            got += n
        return buffer


def _plain(sock: socket.socket | None) -> bool:
    """A TCP socket without TLS (an ``SSLSocket`` takes no ``recv`` flags and buffers itself)."""
    return isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)


def read_pdu(sock: FastSocket) -> tuple[str, Any]:
    """The next PDU, whole: ``("pdu", bytearray)``; ``("closed", None)`` when the connection
    ended before a header, ``("short", (got, expected))`` when it ended inside the PDU, or
    ``("unknown", type)`` for a PDU type PS3.8 does not define.

    Raises ``OSError`` as the socket does.
    """
    head = sock.recv(6)
    if len(head) < 6:
        return "closed", None
    pdu_type, _, length = _PDU_HEADER.unpack(head)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        return "unknown", pdu_type
    pdu = sock.recv_after(bytes(head), length)
    if len(pdu) != 6 + length:
        return "short", (len(pdu), 6 + length)
    return "pdu", pdu


def pdv_views(pdu: bytearray) -> list[tuple[int, memoryview]] | None:
    """(context id, value) of each presentation data value item of an encoded P-DATA-TF PDU,
    values as views into ``pdu``; None when an item's length does not fit (PS3.8 9.3.5)."""
    view = memoryview(pdu)
    values = []
    pos, end = 6, len(pdu)
    while pos < end:
        if pos + 4 > end:
            return None
        length = int.from_bytes(view[pos:pos + 4], "big")
        if length < 2 or pos + 4 + length > end:  # context id and message control header at least
            return None
        values.append((pdu[pos + 4], view[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return values or None
