"""Reading PDUs off the receiver's socket: whole, in order, with as few reads as the data allows,
bounded allocation for a lying length field, and P-DATA values seen in place."""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom.pdu import P_DATA_TF

from dicom_node.store_path import encode_p_data
from dicom_node.pdu_read import DIRECT_BYTES, PREALLOCATE_MAX, FastSocket, pdv_views, read_pdu


class CountingSocket(socket.socket):
    """A socket that counts its ``recv_into`` calls (each one a system call)."""

    reads = 0

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.reads += 1
        return super().recv_into(buffer, nbytes, flags)


def _fast_pair() -> tuple[FastSocket, CountingSocket, socket.socket]:
    ours, peer = socket.socketpair()
    counting = CountingSocket(fileno=ours.detach())
    assoc = SimpleNamespace(dul=SimpleNamespace(event_queue=queue.Queue()))
    return FastSocket(assoc, client_socket=counting), counting, peer  # type: ignore[arg-type]


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return bytes([pdu_type, 0]) + len(body).to_bytes(4, "big") + body


def test_pdus_already_received_are_read_with_one_system_call() -> None:
    fast, counting, peer = _fast_pair()
    pdus = [_pdu(4, encode_p_data(1, b"\x03" + bytes(150))[6:]),
            _pdu(4, encode_p_data(1, b"\x00" + os.urandom(70_000))[6:]),
            _pdu(4, encode_p_data(1, b"\x02" + os.urandom(30_000))[6:]),
            _pdu(5, bytes(4))]  # A-RELEASE-RQ
    peer.sendall(b"".join(pdus))
    try:
        assert fast.ready
        got = [read_pdu(fast) for _ in pdus]
        assert [(outcome, bytes(pdu)) for outcome, pdu in got] == [("pdu", pdu) for pdu in pdus]
        assert counting.reads == 1  # pynetdicom: a select and two or more reads per PDU
        assert not fast.buffered() and not fast.ready
    finally:
        peer.close()
        fast.socket.close()  # type: ignore[union-attr]


def test_a_large_rest_is_read_straight_into_the_pdu_with_one_call() -> None:
    fast, counting, peer = _fast_pair()
    body = os.urandom(3 * DIRECT_BYTES)
    pdu = _pdu(4, body)

    def send_slowly() -> None:
        peer.sendall(pdu[:6])
        for start in range(6, len(pdu), 40_000):
            time.sleep(0.02)
            peer.sendall(pdu[start:start + 40_000])

    sender = threading.Thread(target=send_slowly)
    sender.start()
    try:
        time.sleep(0.01)
        outcome, got = read_pdu(fast)
        assert outcome == "pdu" and bytes(got) == pdu
        assert counting.reads == 2  # the header, then MSG_WAITALL for the rest
    finally:
        sender.join(10)
        peer.close()
        fast.socket.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("sent, expected", [
    (b"", ("closed", None)),
    (b"\x04\x00\x00", ("closed", None)),  # header cut short
    (b"\x09\x00\x00\x00\x00\x02ab", ("unknown", 0x09)),
    (b"\x04\x00\x00\x00\x00\x10" + b"x" * 5, ("short", (11, 22))),
    (b"\x04\x00\x00\x01\x00\x00" + b"x" * 5, ("short", (11, 6 + 65536))),  # rest read directly
])
def test_a_connection_closed_or_a_bad_type_is_reported(sent: bytes, expected: tuple[str, Any]) -> None:
    fast, _, peer = _fast_pair()
    peer.sendall(sent)
    peer.close()
    try:
        assert fast.ready  # data or end of connection: the next read tells which
        assert read_pdu(fast) == expected
    finally:
        fast.socket.close()  # type: ignore[union-attr]


def test_a_pdu_claiming_4_gib_allocates_only_what_arrives() -> None:
    fast, _, peer = _fast_pair()
    peer.sendall(b"0123456789")
    peer.close()
    tracemalloc.start()
    try:
        got = fast.recv(0xFFFFFFF0)  # what pynetdicom asks for after a 4 GiB length field
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        fast.socket.close()  # type: ignore[union-attr]
    assert bytes(got) == b"0123456789"
    assert peak < 2 * PREALLOCATE_MAX, f"{peak} bytes allocated for 10 received"


def test_a_pdu_longer_than_the_preallocation_arrives_whole() -> None:
    fast, _, peer = _fast_pair()
    data = os.urandom(PREALLOCATE_MAX * 2 + 12345)
    sender = threading.Thread(target=peer.sendall, args=(data,))
    sender.start()
    try:
        assert bytes(fast.recv(len(data))) == data
    finally:
        sender.join(10)
        peer.close()
        fast.socket.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("items", [
    [(1, b"\x03" + bytes(range(200)))],
    [(3, b"\x00" + bytes(70_000)), (3, b"\x02" + b"tail")],
    [(255, b"\x01\x00")],
])
def test_pdv_views_equal_pynetdicom_decoding(items: list[tuple[int, bytes]]) -> None:
    pdu = bytearray(b"".join(encode_p_data(cid, value)[6:] for cid, value in items))
    pdu[0:0] = b"\x04\x00" + len(pdu).to_bytes(4, "big")
    decoded = P_DATA_TF()
    decoded.decode(bytes(pdu))
    expected = decoded.to_primitive().presentation_data_value_list
    views = pdv_views(pdu)
    assert views is not None
    assert [(cid, bytes(value)) for cid, value in views] == expected == items


@pytest.mark.parametrize("body", [
    b"",  # no item
    b"\x00\x00\x00\x01\x01",  # an item with a context id but no message control header
    b"\x00\x00\x00\x09\x01\x03abc",  # item longer than the PDU
    b"\x00\x00\x00\x03\x01\x03a\x00\x00",  # trailing bytes that are no whole item
])
def test_pdv_views_leave_malformed_pdus_to_pynetdicom(body: bytes) -> None:
    assert pdv_views(bytearray(b"\x04\x00" + len(body).to_bytes(4, "big") + body)) is None
