"""One ``dicom-node serve`` that analyses what it receives (embedded queue, shipped model), for
tests that send many inputs to a single running node and read the outcomes from its ledger."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dicom_node.ledger import Job, Ledger
from dicom_node.names import LEDGER_FILE, SPOOL_DIR, TMP_DIR
from tests.helpers import free_port

EXE = Path(sys.executable).parent / "dicom-node"
#: Job states after which nothing more happens to a job without new input.
SETTLED = {"done", "failed", "not_analysed", "delivered", "superseded"}


class AnalysingNode:
    """``dicom-node serve`` with ``queue.broker_url: embedded``: jobs run in the node process.

    ``sections`` are merged over the defaults (``node``, ``series``, ``destinations``, ...).
    Output goes to ``log_path`` at INFO, as in production.
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None, **sections: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = root / "var"
        config: dict[str, Any] = {
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir),
                     "min_free_disk_gb": 0},
            "http": {"enabled": False},
            "queue": {"broker_url": "embedded"},
            "series": {"quiet_seconds": 2},
            "model": {"device": "cpu", "threads": 2},
            "logging": {"level": "INFO"},
        }
        for key, value in sections.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
        self.data_dir = Path(config["node"]["data_dir"])
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
        self.log_path = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ledger: Ledger | None = None
        self.start()

    def start(self) -> None:
        offset = len(self.log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(EXE), "--config", str(self.config), "serve"], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        deadline = time.monotonic() + 60
        while 'msg="dicom-node serving"' not in self.log()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(f"dicom-node serve did not start:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident set size of the node process in KiB, from /proc."""
        assert self.proc is not None
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.data_dir / LEDGER_FILE)
        return self._ledger

    @property
    def spool(self) -> Path:
        return self.data_dir / SPOOL_DIR

    @property
    def tmp(self) -> Path:
        return self.data_dir / TMP_DIR

    def job_for(self, series_uid: str) -> Job | None:
        jobs = [j for j in self.ledger.jobs() if j.series_uid == series_uid and j.state != "superseded"]
        return jobs[-1] if jobs else None

    def settled(self, job: Job | None) -> bool:
        """The job has its outcome, and a not-analysed job has its status report (or none is due)."""
        if job is None or job.state not in SETTLED:
            return False
        return job.state != "not_analysed" or not job.status_report or "files" in (job.result or {})

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def close(self) -> None:
        self.kill9()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
