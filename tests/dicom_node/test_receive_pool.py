"""Receive processes (``node.receive_processes``): a running node hands concurrent associations to
its helper process, which stores, records and reports them as the node would; the limit on
associations counts both processes; TLS connections are handed over before their handshake; a
helper that dies is replaced; stopping leaves nothing half-written. The choice of who serves a
connection is tested on its own at the end."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.config import parse_config
from dicom_node.names import NODE_STATE_FILE
from dicom_node.receive_handlers import ReceiverState
from dicom_node.receive_pool import ReceivePool, _Helper
from tests.dicom_node.conftest import EXE
from tests.dicom_node.test_tls_node import node_tls, run, stored_series, wait_log
from tests.loadrun import helper_pids
from tests.tls_pki import Pki, make_pki

pytestmark = pytest.mark.network


def _associate(port: int, title: str, tls: ssl.SSLContext | None = None) -> Any:
    ae = AE(ae_title=title)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DURAL_AI", tls_args=(tls, None) if tls else None)
    assert assoc.is_established, title
    return assoc


def _helper_pids(node: Any) -> list[int]:
    return helper_pids(node.proc.pid)


def _ready(node: Any, count: int = 1) -> None:
    deadline = time.monotonic() + 60
    while node.log().count('msg="receive process ready"') < count:
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.05)


def _served_by(node: Any, calling: str) -> str | None:
    """``receive_process`` of the association from ``calling`` (None: the node's own process)."""
    line = next(ln for ln in wait_log(node, f"calling_ae={calling} ").splitlines()
                if 'msg="association accepted"' in ln and f"calling_ae={calling} " in ln)
    found = re.search(r"receive_process=(\d+)", line)
    return found.group(1) if found else None


def _state(node: Any, stored: int) -> dict[str, Any]:
    """The node's status file once it counts ``stored`` instances."""
    deadline = time.monotonic() + 20
    while True:
        path = node.data_dir / NODE_STATE_FILE
        state = json.loads(path.read_text()) if path.exists() else {}
        if (state.get("receiver") or {}).get("stored") == stored or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_a_concurrent_association_is_served_by_the_helper(node_factory, series_factory, no_phi) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(receive_processes=2)
    _ready(node)
    first, second = series_factory("pool_first", n_slices=4), series_factory("pool_second", n_slices=4)
    alone = _associate(node.port, "ALONE")  # the node's own: it is the only one open
    other = _associate(node.port, "OTHER")  # the helper's: the node holds one, the helper none
    for a, b in zip(first, second):
        assert alone.send_c_store(pydicom.dcmread(a)).Status == 0
        assert other.send_c_store(pydicom.dcmread(b)).Status == 0
    other.release()
    alone.release()
    log = wait_log(node, 'msg="association released" assoc=')
    assert log.count('msg="association accepted"') == 2
    assert (_served_by(node, "ALONE"), _served_by(node, "OTHER")) == (None, "1")
    ledger = node.ledger()
    for files in (first, second):
        uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        rows = stored_series(node, uid, len(files))
        assert len(rows) == len(files) and len({r["assoc_id"] for r in rows}) == 1
        assert all(Path(r["path"]).is_file() for r in rows)
        closed = ledger._db().execute("SELECT closed_at, aborted FROM associations WHERE id=?",
                                      (rows[0]["assoc_id"],)).fetchone()
        deadline = time.monotonic() + 10
        while closed[0] is None and time.monotonic() < deadline:
            time.sleep(0.05)
            closed = ledger._db().execute("SELECT closed_at, aborted FROM associations WHERE id=?",
                                          (rows[0]["assoc_id"],)).fetchone()
        assert closed[0] is not None and not closed[1], "recorded as released"
    # The helper's receptions are counted in the node's status and its audit trail.
    receiver = _state(node, 8)["receiver"]
    assert receiver["stored"] == 8 and receiver["receive_processes"] == 2, receiver
    status = run([str(EXE), "--config", str(node.config), "status"])
    assert "receive processes: 2 running (helpers' open connections: [0]; restarted 0 time(s))" in status.stdout
    audit = "".join(p.read_text() for p in (node.data_dir / "audit").glob("*.jsonl"))
    received = [json.loads(line) for line in audit.splitlines() if '"series_received"' in line]
    assert sorted(r["instances"] for r in received) == [4, 4]
    no_phi(node.log())


def test_max_associations_counts_both_processes(node_factory, dcmtk) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(receive_processes=2, max_associations=2)
    _ready(node)
    held = [_associate(node.port, "HOLD_ONE"), _associate(node.port, "HOLD_TWO")]
    assert (_served_by(node, "HOLD_ONE"), _served_by(node, "HOLD_TWO")) == (None, "1")  # one in each process
    third = run([dcmtk("echoscu"), "-aec", "DURAL_AI", "127.0.0.1", str(node.port)])
    assert third.returncode != 0
    assert "node.max_associations (2)" in wait_log(node, 'msg="association rejected"')
    held[1].release()
    deadline = time.monotonic() + 10
    while run([dcmtk("echoscu"), "-aec", "DURAL_AI", "127.0.0.1", str(node.port)]).returncode != 0:
        assert time.monotonic() < deadline, "the helper's slot was never given back"
        time.sleep(0.2)
    held[0].release()


def test_a_tls_connection_is_handed_over_before_its_handshake(node_factory, dcmtk, series_factory,  # type: ignore[no-untyped-def]
                                                             tmp_path) -> None:
    pki: Pki = make_pki(tmp_path / "pki")
    node = node_factory(receive_processes=2, tls=node_tls(pki))
    _ready(node)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.check_hostname = False
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    held = _associate(node.port, "HOLDER", tls=context)
    files = series_factory("pool_tls", n_slices=3)
    store = run([dcmtk("storescu"), "+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca),
                 "-aec", "DURAL_AI", "-aet", "MODALITY", "127.0.0.1", str(node.port), *map(str, files)])
    assert store.returncode == 0, store.stderr
    assert _served_by(node, "MODALITY") == "1"
    assert "tls_peer=modality" in next(ln for ln in node.log().splitlines() if "calling_ae=MODALITY " in ln)
    rogue = run([dcmtk("echoscu"), "+tls", str(pki.rogue.key), str(pki.rogue.cert), "+cf", str(pki.ca),
                 "-aec", "DURAL_AI", "-to", "10", "127.0.0.1", str(node.port)])
    assert rogue.returncode != 0
    assert "not signed by node.tls.ca_certificates" in wait_log(node, 'msg="TLS connection refused"')
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert len(stored_series(node, uid, len(files))) == len(files)
    held.release()


def test_a_helper_that_dies_is_replaced_and_the_node_keeps_receiving(node_factory, series_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(receive_processes=2)
    _ready(node)
    (pid,) = _helper_pids(node)
    held = _associate(node.port, "HOLDER")
    lost = _associate(node.port, "LOST")  # the helper's
    assert _served_by(node, "LOST") == "1"
    os.kill(pid, signal.SIGKILL)
    wait_log(node, 'msg="receive process exited; its open associations were lost')
    deadline = time.monotonic() + 10
    while lost.is_established:
        assert time.monotonic() < deadline, "the sender never saw its connection end"
        time.sleep(0.05)
    files = series_factory("pool_after_death", n_slices=2)
    meanwhile = _associate(node.port, "MEANWHILE")  # served by the node itself until the new helper is ready
    assert [meanwhile.send_c_store(pydicom.dcmread(f)).Status for f in files] == [0, 0]
    meanwhile.release()
    _ready(node, 2)
    (new_pid,) = _helper_pids(node)
    assert new_pid != pid
    again = _associate(node.port, "AGAIN")
    assert again.send_c_echo().Status == 0
    again.release()
    assert _served_by(node, "AGAIN") == "1"
    held.release()
    assert node.alive()


def test_a_helper_stopped_with_sigterm_ends_its_association_and_stays_stopped(node_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(receive_processes=2)
    _ready(node)
    (pid,) = _helper_pids(node)
    held = _associate(node.port, "HOLDER")
    ended = _associate(node.port, "ENDED")
    assert _served_by(node, "ENDED") == "1"
    os.kill(pid, signal.SIGTERM)
    wait_log(node, 'msg="receive process stopped on SIGTERM"')
    assert 'msg="receive process exited' not in node.log()
    assert not ended.is_established and _helper_pids(node) == []
    served_here = _associate(node.port, "HERE")
    assert served_here.send_c_echo().Status == 0 and _served_by(node, "HERE") is None
    served_here.release()
    held.release()


def test_sigterm_ends_the_helpers_associations_and_leaves_nothing_half_written(node_factory,  # type: ignore[no-untyped-def]
                                                                               series_factory) -> None:
    node = node_factory(receive_processes=2)
    _ready(node)
    files = series_factory("pool_stop", n_slices=30)
    held = _associate(node.port, "HOLDER")
    sending = _associate(node.port, "SENDING")
    assert _served_by(node, "SENDING") == "1"
    statuses = [int(sending.send_c_store(pydicom.dcmread(f)).Status) for f in files[:3]]
    node.proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    for path in files[3:]:
        try:
            rsp = sending.send_c_store(pydicom.dcmread(path))
        except RuntimeError:  # the node's abort arrived
            break
        statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    assert node.proc.wait(60) == 0, node.log()[-3000:]
    # The idle HOLDER had 5 s to finish, then was aborted: an idle peer does not hold up the stop.
    assert time.monotonic() - stopping < 15
    assert 'msg="receive process stopped"' in node.log() and 'msg="dicom-node stopped"' in node.log()
    assert "associations still open when the receiver stopped were aborted" in node.log()
    assert _helper_pids(node) == [] and list(node.tmp.iterdir()) == []
    acked = [f for f, s in zip(files, statuses) if s == 0]
    stored = {p.stem for p in node.spool_files()}
    assert len(acked) >= 3 and {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                                for f in acked} <= stored
    held.abort()


# -- who serves a connection ----------------------------------------------------------------------
class _Server:
    def __init__(self, connections: int) -> None:
        self.connections = connections


class _Request:
    def fileno(self) -> int:
        return -1


def _pool(local: int, helpers: list[int], max_associations: int = 16) -> tuple[ReceivePool, list[_Helper]]:
    cfg = parse_config({"node": {"receive_processes": 1 + len(helpers), "max_associations": max_associations}})
    pool = ReceivePool(cfg, ReceiverState(0), journal=None)
    pool._servers = [_Server(local)]  # type: ignore[list-item]
    for index, held in enumerate(helpers, 1):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pool._helpers.append(_Helper(index, None, ours, ready=True, open=held))
        theirs.close()  # sending fails: the connection is served locally, the count given back
    return pool, pool._helpers


@pytest.mark.parametrize("local,helpers,chosen", [
    (0, [0], None),        # alone: the node's own process (the journal)
    (1, [1], None),        # a tie stays local
    (2, [1], 1),           # the helper holds fewer
    (3, [2, 1], 2),        # the helper with fewest
])
def test_a_new_connection_goes_to_the_process_with_fewest(local: int, helpers: list[int], chosen: int | None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pool, members = _pool(local, helpers)
    sent: list[int] = []
    monkeypatch.setattr(socket, "send_fds", lambda sock, data, fds: sent.append(
        next(h.index for h in members if h.channel is sock)))
    assert pool._dispatch(_Request(), ("127.0.0.1", 1), False) is (chosen is not None)
    assert sent == ([] if chosen is None else [chosen])
    assert pool.remote_open() == sum(helpers) + (chosen is not None)


def test_at_the_limit_or_when_handing_over_fails_the_node_serves_it() -> None:
    pool, members = _pool(2, [1], max_associations=3)
    assert pool._dispatch(_Request(), ("127.0.0.1", 1), False) is False  # 3 open: the node rejects it
    pool, members = _pool(2, [0])
    assert pool._dispatch(_Request(), ("127.0.0.1", 1), False) is False  # the helper's end is closed
    assert members[0].open == 0
    members[0].ready = False
    assert pool._dispatch(_Request(), ("127.0.0.1", 1), False) is False
