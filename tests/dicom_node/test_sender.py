"""The outbox sender against real peers: dcmtk storescp, pynetdicom SCPs answering chosen
statuses or only one transfer syntax, a refused port and a peer that accepts TCP but never answers."""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian

from dicom_node.config import parse_config
from dicom_node.ledger import DeliveryState, JobState, Ledger
from dicom_node.sender import STORED_STATUSES, Sender, backoff_s
from segmenter.dicom_io import make_test_series
from tests.helpers import free_port

pytestmark = pytest.mark.network


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def make_cfg(tmp_path: Path, *dests: dict):
    return parse_config({"node": {"data_dir": str(tmp_path / "data")}, "destinations": list(dests)})


def dest(name: str, port: int, **kw) -> dict:
    return {"name": name, "ae_title": name.upper()[:16], "host": "127.0.0.1", "port": port, **kw}


def done_job(ledger: Ledger, data_dir: Path, n_files: int = 3, types=("seg", "sr", "sc")) -> int:
    """A job in state done whose result lists ``n_files`` real DICOM files under data_dir."""
    out = data_dir / "results" / "x"
    paths = make_test_series(out, n_slices=n_files, rows=16, cols=16, seed=len(list(out.parent.glob("*"))))
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    ledger.record_instance(ds.SOPInstanceUID + ".9", ds.StudyInstanceUID, ds.SeriesInstanceUID, CTImageStorage,
                           paths[0], None)
    job = ledger.jobs()[-1]
    ledger.transition(job.id, JobState.COMPLETE)
    ledger.mark_submitted(job.id, "t", "stat")
    files = [{"type": types[i % len(types)], "path": str(p.relative_to(data_dir)),
              "sop_instance_uid": pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}
             for i, p in enumerate(paths)]
    ledger.transition(job.id, JobState.DONE, result={"state": "done", "files": files})
    return job.id


@pytest.fixture
def storescp(tmp_path: Path):
    if shutil.which("storescp") is None:
        pytest.fail("dcmtk storescp is not installed (make system-deps installs dcmtk)")
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORE", "-od", str(out), "+xa", str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def scp():
    """A pynetdicom storage SCP answering ``state["status"]``, optionally one syntax only."""
    servers = []

    def start(status: int = 0x0000, syntaxes=None):
        received: list[pydicom.Dataset] = []

        def handle(event):
            received.append(event.dataset)
            return status

        ae = AE(ae_title="PEER")
        ae.add_supported_context(CTImageStorage, syntaxes or [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
        servers.append(server)
        return port, received

    yield start
    for server in servers:
        server.shutdown()


def test_success_marks_sent_and_job_delivered(tmp_path, storescp):
    port, out = storescp
    cfg = make_cfg(tmp_path, dest("store", port))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir)
    ledger.add_deliveries(job_id, ["store"])
    Sender(cfg, ledger).run_once(wait=True)
    [delivery] = ledger.deliveries(job_id)
    assert delivery.state == DeliveryState.SENT and delivery.last_error is None
    assert ledger.job(job_id).state == JobState.DELIVERED
    assert len(list(out.iterdir())) == 3


def test_only_wanted_types_are_sent(tmp_path, scp):
    port, received = scp()
    cfg = make_cfg(tmp_path, dest("peer", port, send=["sr"]))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=3, types=("seg", "sr", "sc"))
    ledger.add_deliveries(job_id, ["peer"])
    Sender(cfg, ledger).run_once(wait=True)
    assert len(received) == 1
    assert ledger.deliveries(job_id)[0].state == DeliveryState.SENT


@pytest.mark.parametrize("status, sent", [(0x0000, True), (0xB000, True), (0xB007, True), (0xB006, True),
                                          (0xA700, False), (0xC000, False), (0x0107, False)])
def test_status_decides_sent(tmp_path, scp, status, sent):
    port, received = scp(status)
    cfg = make_cfg(tmp_path, dest("peer", port, backoff_base_s=10))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=2)
    ledger.add_deliveries(job_id, ["peer"])
    before = time.time()
    Sender(cfg, ledger).run_once(wait=True)
    [delivery] = ledger.deliveries(job_id)
    assert len(received) == 2
    assert (delivery.state == DeliveryState.SENT) is sent
    if not sent:
        assert delivery.state == DeliveryState.PENDING and f"0x{status:04X}" in delivery.last_error
        assert before + 5 - 1 <= delivery.next_attempt_at <= time.time() + 10
    assert (status in STORED_STATUSES) is sent


def test_refused_port_backs_off_then_dead_then_retry(tmp_path):
    cfg = make_cfg(tmp_path, dest("gone", free_port(), max_attempts=3, backoff_base_s=1, backoff_max_s=3,
                                  timeout_s=2))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=1)
    ledger.add_deliveries(job_id, ["gone"])
    sender = Sender(cfg, ledger, rng=random.Random(1))
    now = time.time()
    for attempt in (1, 2, 3):
        [delivery] = ledger.due_deliveries(now + 100)
        sender.attempt(delivery, now=now)
        [delivery] = ledger.deliveries(job_id)
        assert delivery.attempts == attempt and delivery.last_error
    assert delivery.state == DeliveryState.DEAD
    assert ledger.job(job_id).state == JobState.DONE
    assert ledger.retry_dead(job_id) == 1
    assert ledger.deliveries(job_id)[0].state == DeliveryState.PENDING


@pytest.mark.parametrize("attempt, low, high", [(1, 2.5, 5), (2, 5, 10), (3, 10, 20), (9, 30, 60)])
def test_backoff_grows_with_jitter_and_cap(tmp_path, attempt, low, high):
    d = make_cfg(tmp_path, dest("x", 104, backoff_base_s=5, backoff_max_s=60)).destinations[0]
    rng = random.Random(0)
    values = [backoff_s(attempt, d, rng) for _ in range(200)]
    assert low <= min(values) and max(values) <= high and max(values) - min(values) > (high - low) / 2


def test_silent_destination_does_not_block_another(tmp_path, storescp):
    port, out = storescp
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)  # the kernel completes TCP handshakes; nobody ever answers
    try:
        cfg = make_cfg(tmp_path, dest("silent", blackhole.getsockname()[1], timeout_s=4), dest("store", port))
        ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
        job_id = done_job(ledger, cfg.data_dir)
        ledger.add_deliveries(job_id, ["silent", "store"])
        sender = Sender(cfg, ledger)
        start = time.time()
        assert sender.run_once()["started"] == 2
        while ledger.deliveries(job_id)[1].state != DeliveryState.SENT:
            assert time.time() - start < 3, "the good destination waited for the silent one"
            time.sleep(0.05)
        assert sender.run_once() == {"started": 0, "busy": 1}  # silent's attempt is still running
        sender.wait(15)
        silent = ledger.deliveries(job_id)[0]
        assert silent.state == DeliveryState.PENDING and silent.attempts == 1
        assert 3.5 <= time.time() - start < 15
    finally:
        blackhole.close()


def test_converts_to_the_destination_syntax(tmp_path, scp):
    port, received = scp(syntaxes=[ImplicitVRLittleEndian])
    cfg = make_cfg(tmp_path, dest("peer", port, transfer_syntax=ImplicitVRLittleEndian))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=2)
    ledger.add_deliveries(job_id, ["peer"])
    Sender(cfg, ledger).run_once(wait=True)
    assert ledger.deliveries(job_id)[0].state == DeliveryState.SENT
    assert len(received) == 2 and received[0].Rows == 16


def test_unconfigured_destination_is_dead(tmp_path):
    cfg = make_cfg(tmp_path)
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=1)
    ledger.add_deliveries(job_id, ["removed"])
    Sender(cfg, ledger).run_once(wait=True)
    [delivery] = ledger.deliveries(job_id)
    assert delivery.state == DeliveryState.DEAD and "no longer configured" in delivery.last_error


def test_retry_command_requeues_dead_deliveries(tmp_path, capsys):
    import yaml

    from dicom_node.cli import main

    raw = {"node": {"data_dir": str(tmp_path / "data")}, "destinations": [dest("gone", free_port(), max_attempts=1)]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    cfg = make_cfg(tmp_path, *raw["destinations"])
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    job_id = done_job(ledger, cfg.data_dir, n_files=1)
    ledger.add_deliveries(job_id, ["gone"])
    Sender(cfg, ledger).run_once(wait=True)
    assert ledger.deliveries(job_id)[0].state == DeliveryState.DEAD
    assert main(["--config", str(tmp_path / "cfg.yaml"), "retry", "999"]) == 1
    assert main(["--config", str(tmp_path / "cfg.yaml"), "retry", str(job_id)]) == 0
    out = capsys.readouterr().out
    assert f"job {job_id} -> gone" in out and "1 dead delivery requeued" in out
    [delivery] = ledger.deliveries(job_id)
    assert delivery.state == DeliveryState.PENDING and delivery.attempts == 0
