"""The requestor's reactor pause: a response that arrives while the reactor thread is between its
checkpoint and its look at the message queue still reaches the send_* waiting for it.

The window is made wide on purpose, as a busy machine makes it by descheduling threads: the
reactor thread, once past its checkpoint, stops there for a moment, the request is sent in that
moment, and the sending thread is slow to collect its response. Against dcmtk's storescp, a real
peer that answers at once."""
from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.requestor import guard

pytestmark = [pytest.mark.network]

STALL_S = 0.2
COLLECT_DELAY_S = 0.6


@pytest.fixture
def storescp_port(dcmtk: Callable[[str], str], free_port: Callable[[], int], tmp_path: Any) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "--aetitle", "PACS", "--output-directory", str(tmp_path), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            ae = AE(ae_title="PROBE")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
            if assoc.is_established:
                assoc.release()
                break
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class _StallingCheckpoint(threading.Event):
    """The reactor checkpoint; once armed, the reactor thread stops for STALL_S right after
    passing it (before it looks at the message queue)."""

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self.set()
        self.reactor = reactor
        self.armed = False
        self.passed = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        ready = super().wait(timeout)
        if self.armed and threading.current_thread() is self.reactor:
            self.armed = False
            self.passed.set()
            time.sleep(STALL_S)
        return ready


def _echo_in_the_window(port: int, guarded: bool) -> int | None:
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    ae.dimse_timeout = 3
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    if guarded:
        guard(assoc)
    checkpoint = _StallingCheckpoint(assoc)
    assoc._reactor_checkpoint = checkpoint
    get_msg = assoc.dimse.get_msg

    def slow_to_collect(block: bool = False) -> Any:
        if block:  # the sending thread; the reactor reads without blocking
            time.sleep(COLLECT_DELAY_S)
        return get_msg(block)

    assoc.dimse.get_msg = slow_to_collect
    try:
        checkpoint.armed = True
        assert checkpoint.passed.wait(5), "the reactor never passed its checkpoint"
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        if assoc.is_established:
            assoc.release()


def test_unguarded_requestor_loses_the_response(storescp_port: int) -> None:
    # The control: without the guard the reactor takes the echo response and send_c_echo waits
    # out its dimse_timeout. Should pynetdicom fix the race, this fails and the guard can go.
    assert _echo_in_the_window(storescp_port, guarded=False) is None


def test_guarded_requestor_gets_the_response(storescp_port: int) -> None:
    started = time.monotonic()
    assert _echo_in_the_window(storescp_port, guarded=True) == 0x0000
    assert time.monotonic() - started < 3, "the response came only after the DIMSE timeout"


def test_guarded_requestor_sends_many(storescp_port: int) -> None:
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    ae.dimse_timeout = 5
    assoc = guard(ae.associate("127.0.0.1", storescp_port, ae_title="PACS"))
    try:
        assert [int(assoc.send_c_echo().Status) for _ in range(50)] == [0] * 50
    finally:
        assoc.release()
    assert assoc.is_released
