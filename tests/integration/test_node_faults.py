"""Faults on one running node (embedded queue): the disk fills in the middle of a series, SIGTERM
arrives with an association open and a job running, and the PACS answers warning and failure
statuses. Each ends visible (ledger state and reason, ``dicom-node status``) and recoverable
(the sender's retry, ``dicom-node retry``), with nothing acknowledged lost.

Redis down at submission and the PACS down for a while are covered in ``test_faults.py`` and
``tests/dicom_node/test_node.py``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt

from dicom_node.names import STATUS_OUT_OF_RESOURCES
from segmenter.dicom_io import make_test_series
from tests.corpus.node import AnalysingNode
from tests.corpus.send import store
from tests.helpers import free_port
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.network, pytest.mark.slow]
EXE = Path(sys.executable).parent / "dicom-node"
SLICE_BYTES = 256 * 256 * 2


def cli(node: AnalysingNode, *args: str) -> str:
    proc = subprocess.run([str(EXE), "--config", str(node.config), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def series_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 MB tmpfs: a real file system that really fills up."""
    mount = tmp_path / "fs"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    mounted = subprocess.run(command, capture_output=True, text=True)
    # A failure, not a skip: without a disk that really fills, the disk-full checks would not run.
    assert mounted.returncode == 0, ("the disk-full tests mount a 200 MB tmpfs and need root or passwordless "
                                     f"sudo: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run((["sudo", "-n"] if os.geteuid() != 0 else []) + ["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as fh:
        fh.truncate(0)
        fh.write(b"\1" * max(0, free - leave_bytes))
    return ballast


@pytest.fixture
def nodes() -> Iterator[list[AnalysingNode]]:
    started: list[AnalysingNode] = []
    yield started
    for node in started:
        node.close()


# -- the disk fills ---------------------------------------------------------------------------
def test_disk_below_min_free_mid_series_refuses_0xa700_then_recovers(small_disk, tmp_path, nodes) -> None:  # type: ignore[no-untyped-def]
    nodes.append(node := AnalysingNode(tmp_path / "node", node={"data_dir": str(small_disk / "var"),
                                                                 "min_free_disk_gb": 0.02}))
    paths = make_test_series(tmp_path / "ct", n_slices=24, rows=256, cols=256)
    ballast = fill(small_disk, 20_000_000 + 8 * SLICE_BYTES)  # room for a few slices above the limit
    replies = store(node.port, paths)
    stored = [r.status == 0 for r in replies]
    refused = [r for r in replies if r.status != 0]
    assert any(stored) and refused, replies
    assert all(r.status == STATUS_OUT_OF_RESOURCES and "disk nearly full" in r.comment for r in refused), refused
    status = cli(node, "status")
    assert "low-disk refusal ACTIVE" in status and "low disk: refusing instances" in status, status
    job = node.job_for(series_uid(paths))
    assert job is not None and job.state in ("received", "not_analysed")  # visible, waiting or too few
    # Space comes back; the sender retries what was refused (as a PACS does after 0xA700).
    ballast.unlink()
    again = store(node.port, [p for p, ok in zip(paths, stored) if not ok])
    assert [r.status for r in again] == [0] * len(again)
    done = wait_until(lambda: (j := node.job_for(series_uid(paths))) and j.state == "done" and j, 180,
                      "the series analysed")
    assert node.ledger.instance_count(done.id) == len(paths)
    assert list(node.tmp.iterdir()) == []
    assert "low-disk refusal off" in cli(node, "status")


def test_disk_full_mid_series_loses_no_acknowledged_instance(small_disk, tmp_path, nodes) -> None:  # type: ignore[no-untyped-def]
    """No limit configured: the disk really fills. Whatever was acknowledged reaches the spool and
    the ledger once space returns, and the series is analysed whole."""
    nodes.append(node := AnalysingNode(tmp_path / "node", node={"data_dir": str(small_disk / "var"),
                                                                 "min_free_disk_gb": 0}))
    paths = make_test_series(tmp_path / "ct", n_slices=24, rows=256, cols=256)
    ballast = fill(small_disk, 6 * SLICE_BYTES)
    replies = store(node.port, paths)
    acked = [p for p, r in zip(paths, replies) if r.status == 0]
    assert all(r.status in (0, STATUS_OUT_OF_RESOURCES) for r in replies), replies
    time.sleep(3)
    ballast.unlink()
    store(node.port, [p for p, r in zip(paths, replies) if r.status != 0])
    done = wait_until(lambda: (j := node.job_for(series_uid(paths))) and j.state == "done" and j, 180,
                      "the series analysed")
    assert node.ledger.instance_count(done.id) == len(paths)
    for path in acked:
        assert node.ledger.has_instance(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    assert list(node.tmp.iterdir()) == [] and node.alive()


# -- SIGTERM ----------------------------------------------------------------------------------
def _open_association(port: int) -> object:
    ae = AE(ae_title="DRAIN_SCU")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DURAL_AI")
    assert assoc.is_established
    return assoc


def test_sigterm_drains_an_open_association_and_a_running_job(tmp_path, nodes) -> None:  # type: ignore[no-untyped-def]
    nodes.append(node := AnalysingNode(tmp_path / "node"))
    long = make_test_series(tmp_path / "long", n_slices=60)
    streaming = make_test_series(tmp_path / "streaming", n_slices=20)
    assert [r.status for r in store(node.port, long)] == [0] * len(long)
    running = wait_until(lambda: (j := node.job_for(series_uid(long))) and j.state == "running" and j, 60,
                         "the long series' analysis to start")
    assoc = _open_association(node.port)
    statuses: list[int | None] = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in streaming[:5]]
    node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for path in streaming[5:]:  # the sender goes on while the node stops
        if not assoc.is_established:
            statuses.append(None)
            continue
        rsp = assoc.send_c_store(pydicom.dcmread(path))
        statuses.append(int(rsp.Status) if "Status" in rsp else None)
    assoc.release()
    assert node.proc.wait(120) == 0  # type: ignore[union-attr]
    # Each instance stored, or clearly not: refused with "retry later" (0xA700) or never answered.
    assert statuses[:5] == [0] * 5 and set(statuses) <= {0, STATUS_OUT_OF_RESOURCES, None}, statuses
    assert 'msg="dicom-node stopped"' in node.log() and "stopped cleanly" in cli(node, "status")
    assert list(node.tmp.iterdir()) == [], "half-written files left behind"
    outcome = node.data_dir / "results" / str(running.id) / "outcome.json"
    assert not outcome.exists() or outcome.read_text().rstrip().endswith("}")  # whole or absent
    # Restarted, the node takes up the running job again; the sender resends what was not stored.
    node.start()
    acked = [p for p, s in zip(streaming, statuses) if s == 0]
    assert [r.status for r in store(node.port, [p for p, s in zip(streaming, statuses) if s != 0])] \
        == [0] * (len(streaming) - len(acked))
    for paths in (long, streaming):
        done = wait_until(lambda: (j := node.job_for(series_uid(paths))) and j.state == "done" and j, 180,
                          "both series analysed")
        assert node.ledger.instance_count(done.id) == len(paths)
    for path in acked:
        assert node.ledger.has_instance(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))


# -- the PACS answers warnings and failures ---------------------------------------------------
class StatusPacs:
    """A pynetdicom storage SCP answering ``self.status`` to every C-STORE."""

    def __init__(self, status: int) -> None:
        from pynetdicom import AllStoragePresentationContexts

        self.status = status
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: object) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[attr-defined]
        return self.status

    def close(self) -> None:
        self.server.shutdown()


def test_pacs_failure_ends_dead_and_visible_then_retry_delivers_on_a_warning(tmp_path, nodes) -> None:  # type: ignore[no-untyped-def]
    pacs = StatusPacs(0xA700)  # out of resources
    try:
        nodes.append(node := AnalysingNode(tmp_path / "node", destinations=[{
            "name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "max_attempts": 2,
            "backoff_base_s": 0.5, "backoff_max_s": 1, "timeout_s": 10}]))
        paths = make_test_series(tmp_path / "ct", n_slices=12)
        assert [r.status for r in store(node.port, paths)] == [0] * len(paths)
        job = wait_until(lambda: (j := node.job_for(series_uid(paths))) and j.state == "done" and j, 180,
                         "the analysis")
        [dead] = wait_until(lambda: [d for d in node.ledger.deliveries(job.id) if d.state == "dead"], 60,
                            "the delivery dead-lettered")
        assert dead.attempts == 2 and "0xA700" in dead.last_error, dead
        status = cli(node, "status")
        assert "1 dead-lettered" in status and f"job {job.id} -> pacs after 2 attempt(s)" in status, status
        assert pacs.received, "the PACS never saw an attempt"
        # The PACS is fixed but answers "stored, with coercion" (0xB000): that counts as delivered.
        pacs.status = 0xB000
        assert "1 dead delivery requeued" in cli(node, "retry")
        delivered = wait_until(lambda: (j := node.ledger.job(job.id)).state == "delivered" and j, 60,
                               "the job delivered")
        assert [d.state for d in node.ledger.deliveries(delivered.id)] == ["sent"]
        assert len(set(pacs.received)) == len(job.result["files"])
    finally:
        pacs.close()
