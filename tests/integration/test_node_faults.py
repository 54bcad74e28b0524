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
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root or passwordless sudo")
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
