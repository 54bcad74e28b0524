"""Which thread serves a C-STORE request: the DUL thread that read it when the association's own
thread has nothing in hand, else the association thread, in order; an answer that fails on the
DUL thread aborts the association without waiting for that same thread."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node import receive_server, reactor_association, store_path
from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.reactor_association import EventAssociation
from dicom_node.scp import start_receiver
from dicom_node.store_path import StoreRequest

REQUEST = StoreRequest(1, 7, CTImageStorage, "1.2.826.0.1.3680043.8.498.78", ExplicitVRLittleEndian, b"x")


def _instance(study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "THREAD-1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _requestor() -> AE:
    ae = AE(ae_title="THREADS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


@pytest.fixture
def receiver_with(tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch):
    """start(store_wrapper) -> a running receiver whose store function is wrapped."""
    started = []

    def start(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
        monkeypatch.setattr(receive_server, "store_instance", wrap(receive_server.store_instance))
        cfg = parse_config({"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": str(tmp_path / "var"),
                                     "min_free_disk_gb": 0}})
        started.append(start_receiver(cfg, Ledger(tmp_path / "var" / "ledger.sqlite3")))
        return started[-1]

    yield start
    for receiver in started:
        receiver.shutdown()
    _wait_for_association_threads_to_end()


@pytest.mark.network
def test_a_lone_senders_stores_are_served_on_the_thread_that_read_them(
        receiver_with) -> None:  # type: ignore[no-untyped-def]
    threads: list[threading.Thread] = []

    def wrap(store: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: threads.append(threading.current_thread()) or store(*args, **kwargs)

    receiver = receiver_with(wrap)
    assoc = _requestor().associate("127.0.0.1", receiver.port, ae_title="DURAL_AI")
    assert assoc.is_established
    study, series = generate_uid(), generate_uid()
    sent = [_instance(study, series) for _ in range(4)]
    for ds in sent:
        assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000  # still the association thread's
    assoc.release()
    assert len(threads) == 4 and all(isinstance(t, DULServiceProvider) for t in threads), threads
    assert {p.stem for p in receiver.spool.iter_files()} == {str(ds.SOPInstanceUID) for ds in sent}


@pytest.mark.network
def test_an_answer_that_fails_on_the_reading_thread_aborts_and_the_receiver_goes_on(
        receiver_with, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    failing = {"left": 1}
    answer = store_path._answer

    def fail_once(*args: Any) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("cannot encode")
        answer(*args)

    monkeypatch.setattr(store_path, "_answer", fail_once)
    receiver = receiver_with(lambda store: store)
    study, series = generate_uid(), generate_uid()
    first = _requestor().associate("127.0.0.1", receiver.port, ae_title="DURAL_AI")
    started = time.monotonic()
    assert not first.send_c_store(_instance(study, series))  # no answer: aborted
    deadline = time.monotonic() + 10
    while first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.is_aborted and time.monotonic() - started < 10
    second = _requestor().associate("127.0.0.1", receiver.port, ae_title="DURAL_AI")
    assert second.send_c_store(_instance(study, series)).Status == 0x0000
    second.release()
    # Every association's threads end: nothing waits for the DUL thread that aborted its own.
    assert _wait_for_association_threads_to_end()


def _wait_for_association_threads_to_end(timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _association_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _association_threads()


def _association_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if isinstance(t, DULServiceProvider) or t.name.startswith("AcceptorThread")]


class _Idle:
    """An EventAssociation's state for serve_now, with serve recorded instead of run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.served: list[StoreRequest] = []
        monkeypatch.setattr(reactor_association, "serve",
                            lambda assoc, request, store, abort=None: self.served.append(request))
        assoc = object.__new__(EventAssociation)
        assoc._serving_setup()
        assoc.store_function = lambda *args: 0
        assoc._reactor_checkpoint = threading.Event()
        assoc._reactor_checkpoint.set()
        assoc.dimse = type("Dimse", (), {"msg_queue": queue.Queue()})()
        assoc.is_established, assoc._kill = True, False
        self.assoc = assoc


def test_served_on_the_reading_thread_only_when_nothing_else_is_in_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    idle = _Idle(monkeypatch)
    assoc = idle.assoc
    assert assoc.serve_now(REQUEST) and idle.served == [REQUEST]
    with assoc._serving:  # the association thread serving a message
        assert not assoc.serve_now(REQUEST)
    assoc.dimse.msg_queue.put((1, REQUEST))  # one queued before it: answered first, by that thread
    assert not assoc.serve_now(REQUEST)
    assoc.dimse.msg_queue.get()
    assoc._reactor_checkpoint.clear()  # pynetdicom paused the loop
    assert not assoc.serve_now(REQUEST)
    assoc._reactor_checkpoint.set()
    assoc.is_established = False
    assert not assoc.serve_now(REQUEST)
    assert idle.served == [REQUEST]
