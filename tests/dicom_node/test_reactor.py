"""The event-driven association loops: an idle association wakes its two threads only for the
timers, while echo, store, release and abort are still answered at once."""
from __future__ import annotations

import socket
import statistics
import time
from typing import Any

import pytest
from pynetdicom import AE, build_context
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.sop_class import Verification

from dicom_node import reactor
from dicom_node.reactor_association import EventAssociation
from dicom_node.scp import Receiver

pytestmark = [pytest.mark.network]


@pytest.fixture
def wakeups(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the DUL loop waited and the association loop looked at its messages."""
    counts = {"dul": 0, "association": 0}
    dul_wait, get_msg = reactor.EventDUL._wait, DIMSEServiceProvider.get_msg

    def counting_wait(self: Any, delay: float) -> None:
        counts["dul"] += 1
        dul_wait(self, delay)

    def counting_get_msg(self: Any, block: bool = False) -> Any:
        if isinstance(self.assoc, EventAssociation):  # not the test's own (stock) requestor
            counts["association"] += 1
        return get_msg(self, block)

    monkeypatch.setattr(reactor.EventDUL, "_wait", counting_wait)
    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", counting_get_msg)
    return counts


def _associate(receiver: Receiver) -> Any:
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="DURAL_AI")
    assert assoc.is_established
    return assoc


def test_an_idle_association_wakes_only_for_the_timers(receiver: Receiver, wakeups: dict[str, int]) -> None:
    assoc = _associate(receiver)
    time.sleep(0.2)
    before = dict(wakeups)
    time.sleep(1.0)
    # Polling every millisecond, as pynetdicom does, would be ~1000 each; the timer tick is 20.
    assert wakeups["dul"] - before["dul"] <= 40
    assert wakeups["association"] - before["association"] <= 40
    assoc.release()


def test_echo_and_release_do_not_wait_for_the_timer_tick(receiver: Receiver) -> None:
    echoes, releases = [], []
    for _ in range(5):
        assoc = _associate(receiver)
        for _ in range(3):
            started = time.monotonic()
            assert assoc.send_c_echo().Status == 0
            echoes.append(time.monotonic() - started)
        started = time.monotonic()
        assoc.release()  # the A-RELEASE primitive wakes the association thread
        releases.append(time.monotonic() - started)
        assert assoc.is_released
    assert statistics.median(echoes) < 0.8 * reactor.TIMER_TICK_S
    assert statistics.median(releases) < 0.8 * reactor.TIMER_TICK_S


def test_an_abort_ends_the_association_threads(receiver: Receiver) -> None:
    assoc = _associate(receiver)
    deadline = time.monotonic() + 5
    while not receiver.state.assoc_ids and time.monotonic() < deadline:
        time.sleep(0.01)
    assoc.abort()
    while receiver.state.assoc_ids and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not receiver.state.assoc_ids, "the aborted association was never closed"
    assert not receiver.server.active_associations


@pytest.mark.parametrize("sent", [b"", b"\x01\x00\x00\x00"], ids=["nothing", "half a PDU header"])
def test_a_connection_closed_before_its_association_request_ends_at_once(receiver: Receiver, sent: bytes) -> None:
    """A port check, or a peer giving up before its A-ASSOCIATE-RQ, holds no connection slot for
    node.acse_timeout_s (30 s here)."""
    assert receiver.server.ae.acse_timeout == 30
    with socket.create_connection(("127.0.0.1", receiver.port)) as peer:
        peer.sendall(sent)
    started = time.monotonic()
    time.sleep(0.05)
    while receiver.server.connections and time.monotonic() - started < 10:
        time.sleep(0.01)
    assert receiver.server.connections == 0 and time.monotonic() - started < 2
    assoc = AE().associate("127.0.0.1", receiver.port, ae_title="DURAL_AI", contexts=[build_context(Verification)])
    assert assoc.is_established and receiver.server.connections == 1
    assoc.release()
