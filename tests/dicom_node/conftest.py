"""Receiver fixtures: the real node as a subprocess (``dicom-node --config PATH serve``) on a free
port, and small synthetic CT series carrying recognisable identifiers for the PHI-in-logs check.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.names import LEDGER_FILE, SPOOL_DIR, TMP_DIR
from dicom_node.scp import Receiver, start_receiver
from segmenter.dicom_io import make_test_series
from tests.helpers import free_port

EXE = Path(sys.executable).parent / "dicom-node"
#: Identifiers written into every synthetic test instance; none may appear in the node's logs.
PHI = {"PatientName": "Zyxwert^Quillon", "PatientID": "PID-738291-Q", "AccessionNumber": "ACC99173542",
       "PatientBirthDate": "19310417"}


class Node:
    """One ``dicom-node serve`` process; stderr goes to ``log_path`` (INFO, as in production)."""

    def __init__(self, root: Path, **node: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        settings = {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.port, "data_dir": "var",
                    "min_free_disk_gb": 0, **node}
        # A broker nobody listens on: no status-report or analysis work competes with the
        # receiver (the submitter only logs that the queue is unreachable).
        config = {"node": settings, "http": {"enabled": False}, "queue": {"broker_url": f"redis://127.0.0.1:{free_port()}/0"},
                  # Series complete when their association is released; far too few slices for any
                  # to be analysed keeps the model out of the receiver's tests.
                  "series": {"quiet_seconds": 3600, "min_slices": 100000}, "logging": {"level": "INFO"}}
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.data_dir = root / "var"
        self.log_path = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        offset = len(self.log())
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(EXE), "--config", str(self.config), "serve"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while 'msg="receiver listening"' not in self.log()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(f"dicom-node serve did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def spool(self) -> Path:
        return self.data_dir / SPOOL_DIR

    @property
    def tmp(self) -> Path:
        return self.data_dir / TMP_DIR

    def spool_files(self) -> list[Path]:
        return sorted(self.spool.rglob("*.dcm")) if self.spool.exists() else []

    def ledger(self) -> Ledger:
        return Ledger(self.data_dir / LEDGER_FILE)

    def address(self) -> str:
        return f"DURAL_AI@127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """cli.main installs a handler on the test's captured stderr; remove it afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:], root.level = saved


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``node_factory(**node_settings)`` starts a node with its own data folder; all are killed at
    the end of the test."""
    nodes: list[Node] = []

    def make(**node: Any) -> Node:
        started = Node(tmp_path / f"node{len(nodes)}", **node)
        nodes.append(started)
        return started

    yield make
    for started in nodes:
        started.kill9()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the tests of a module that do not stop or reconfigure it."""
    started = Node(tmp_path_factory.mktemp("shared_node"))
    yield started
    started.kill9()


@pytest.fixture(scope="session")
def series_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[Path]]:
    """``series_factory(name, n_slices=6, **kw)``: a small CT series (64x64) with the PHI values."""
    root = tmp_path_factory.mktemp("series")

    def make(name: str, n_slices: int = 6, **kw: Any) -> list[Path]:
        extra = {"AccessionNumber": PHI["AccessionNumber"], "PatientBirthDate": PHI["PatientBirthDate"],
                 **kw.pop("extra", {})}
        return make_test_series(root / name, n_slices=n_slices, patient_name=PHI["PatientName"],
                                patient_id=PHI["PatientID"], extra=extra, **kw)

    return make


def assert_no_phi(text: str) -> None:
    for keyword, value in PHI.items():
        assert value not in text, f"{keyword} value found in the node's log"
    assert "Zyxwert" not in text and "Quillon" not in text


@pytest.fixture(scope="session")
def no_phi() -> Callable[[str], None]:
    """``no_phi(log_text)`` fails when any test identifier appears in it."""
    return assert_no_phi


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """The receiver alone, in this process (``start_receiver``: journal, mover, tuned server),
    on a free port of 127.0.0.1 with a fresh data folder."""
    cfg = parse_config({"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": str(tmp_path / "var"),
                                 "min_free_disk_gb": 0}})
    started = start_receiver(cfg, Ledger(tmp_path / "var" / "ledger.sqlite3"))
    yield started
    started.shutdown()
