"""Load on a real node: many concurrent associations while a worker analyses, and one long
thin-slice series. Shared by ``tests/integration/test_load.py`` (small) and ``bench/load.py``
(the full run). Every part is its own process on 127.0.0.1: redis-server, ``dicom-node serve``
(Redis broker) and one ``dicom-node worker --pool solo`` (jobs run in its main process, so its
peak RSS is the analysis' peak); memory is read from ``/proc/<pid>/status`` (VmRSS, VmHWM).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
import yaml

from dicom_node.ledger import Ledger
from segmenter.dicom_io import make_test_series
from tests.corpus.send import store
from tests.helpers import free_port

BIN = Path(sys.executable).parent


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def helper_pids(node_pid: int) -> list[int]:
    """The node's helper receive processes: its children started by multiprocessing's spawn (not
    the resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == node_pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return sorted(found)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return value


@dataclass
class Round:
    """One round of concurrent associations, each sending one series."""

    associations: int
    slices: int
    failed_stores: int
    receive_s: float  # first association opened -> last released
    analysed_s: float  # first association opened -> last series done
    node_rss_before_kib: int
    node_rss_after_kib: int
    node_peak_kib: int  # highest VmRSS sampled during the round


@dataclass
class Long:
    """One long series analysed by a fresh worker."""

    slices: int
    analysis_s: float  # the worker's own timing of the job
    worker_peak_kib: int


class LoadStack:
    """redis-server, the node (``receive_processes`` as in the shipped ``config.yaml``) and one
    solo-pool worker sharing ``root/var``."""

    def __init__(self, root: Path, weights: Path | None = None, receive_processes: int = 2) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, redis_port = free_port(), free_port()
        self.data_dir = root / "var"
        config = {"node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir),
                           "min_free_disk_gb": 0, "max_associations": 32,
                           "receive_processes": receive_processes},
                  "http": {"enabled": False}, "series": {"quiet_seconds": 5},
                  "queue": {"broker_url": f"redis://127.0.0.1:{redis_port}/0"},
                  "model": {"device": "cpu", "threads": 2, **({"weights": str(weights)} if weights else {})},
                  "logging": {"level": "INFO"}}
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)])
        self._start("node", [str(BIN / "dicom-node"), "--config", str(self.config), "serve"])
        wait_for(lambda: self.log("node").count('msg="receive process ready"') == receive_processes - 1
                 and 'msg="dicom-node serving"' in self.log("node"), 60, "the node and its receive processes")
        self.start_worker()
        self.ledger = Ledger(self.data_dir / "ledger.sqlite3")

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "2", "TCP_NODELAY": "1"})
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_worker(self) -> None:
        """A fresh worker (its peak RSS starts from zero), once it consumes."""
        self._stop("worker")
        offset = len(self.log("worker"))
        self._start("worker", [str(BIN / "dicom-node"), "--config", str(self.config), "worker", "--pool", "solo",
                               "--name", f"load{time.monotonic_ns()}@test"])
        # Celery prints its banner once the model is loaded (solo pool) and it is about to consume.
        wait_for(lambda: "[tasks]" in self.log("worker")[offset:], 120, "the worker")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def close(self) -> None:
        for name in ("worker", "node", "redis"):
            self._stop(name)
        self.ledger.close()

    def node_rss(self) -> tuple[int, int]:
        """RSS and peak RSS of the node's process and its helper receive processes, summed."""
        node = self.procs["node"].pid
        pids = [node] + helper_pids(node)
        sizes = [rss_kib(pid) for pid in pids]
        return sum(rss for rss, _ in sizes), sum(peak for _, peak in sizes)

    def done(self, series_uids: set[str]) -> bool:
        states = {j.series_uid: j.state for j in self.ledger.jobs() if j.series_uid in series_uids}
        failed = {uid: s for uid, s in states.items() if s in ("failed", "not_analysed")}
        if failed:
            raise AssertionError(f"series ended {sorted(set(failed.values()))}")
        return len(states) == len(series_uids) and all(s == "done" for s in states.values())

    # -- the two measurements ------------------------------------------------------------------
    def concurrent_round(self, folder: Path, associations: int, slices: int, size: int, timeout: float) -> Round:
        series = [make_test_series(folder / f"s{k}", n_slices=slices, rows=size, cols=size, seed=k)
                  for k in range(associations)]
        uids = {str(pydicom.dcmread(s[0], stop_before_pixels=True).SeriesInstanceUID) for s in series}
        before = self.node_rss()[0]
        peak, sampling = before, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.1):
                peak = max(peak, self.node_rss()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with ThreadPoolExecutor(associations) as pool:
            replies = list(pool.map(lambda paths: store(self.port, paths, calling="LOAD_SCU", timeout_s=120), series))
        received = time.monotonic()
        wait_for(lambda: self.done(uids), timeout, f"{associations} series analysed")
        analysed = time.monotonic()
        sampling.set()
        sampler.join()
        failed = sum(r.status != 0 for rs in replies for r in rs)
        return Round(associations, slices, failed, received - started, analysed - started, before,
                     self.node_rss()[0], peak)

    def long_series(self, folder: Path, slices: int, size: int, spacing_mm: float, timeout: float) -> Long:
        self.start_worker()
        paths = make_test_series(folder, n_slices=slices, rows=size, cols=size,
                                 spacing_mm=(spacing_mm, 240.0 / size, 240.0 / size))
        uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        replies = store(self.port, paths, calling="LOAD_SCU", timeout_s=120)
        failed = [r for r in replies if r.status != 0]
        assert not failed, f"{len(failed)} of {slices} stores failed, first: {failed[0]}\n{self.log('node')[-3000:]}"
        wait_for(lambda: self.done({uid}), timeout, f"the {slices}-slice series analysed")
        job = next(j for j in self.ledger.jobs() if j.series_uid == uid)
        timings = job.result["timings"]
        return Long(slices, timings["total"] - timings.get("model_load", 0.0),
                    rss_kib(self.procs["worker"].pid)[1])
