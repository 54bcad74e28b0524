"""Real parts for the end-to-end tests: Orthanc as the PACS, our own redis-server, the node
(``dicom-node serve``) and Celery workers (``dicom-node worker``), each a separate process on
127.0.0.1 with free ports, sharing only the node's ``data_dir`` and the broker.

Orthanc forwards every stable CT series to the node (Lua ``OnStableSeries``, CT only, so our
own SEG/SR/SC/KOS never go back) and receives the results. The stack is session-scoped; fault
tests stop and restart its parts and leave it running again.

Weights: the shipped model when ``segmenter/weights/`` has it; otherwise a random-init CSR-UNet
(base width 16, 256 input) so inference takes seconds, like the real one; its predictions are
real network outputs, never planted ones.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import yaml

from dicom_node.ledger import Job, Ledger
from tests.helpers import free_port

BIN = Path(sys.executable).parent
LUA = """
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    RestApiPost('/modalities/node/store', seriesId)
  end
end
"""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def tool(name: str) -> str:
    for candidate in (BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed: run `make system-deps` (dcmtk, orthanc, redis-server) and "
                "install the test extras")


class Proc:
    """A child process in its own session, logging to a file; stop() and kill() end the group."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.log_path = argv, log
        self.handle = open(log, "ab")
        self.popen = subprocess.Popen(argv, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, "TCP_NODELAY": "1", "OMP_NUM_THREADS": "2", **(env or {})})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(30)
        self.handle.close()


class Orthanc:
    """Orthanc with a generated configuration; ``start``/``stop`` keep its storage."""

    def __init__(self, root: Path, node_aet: str, node_port: int) -> None:
        self.root = root
        self.dicom_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        (root / "lua").mkdir(parents=True, exist_ok=True)
        (root / "lua" / "forward.lua").write_text(LUA)
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "dural-test", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "DicomModalities": {"node": [node_aet, "127.0.0.1", node_port]},
            "StableAge": 1, "LuaScripts": [str(root / "lua" / "forward.lua")], "Plugins": [],
            "DicomScuTimeout": 30, "HttpTimeout": 30, "ConcurrentJobs": 2,
        }, indent=1))
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc([tool("Orthanc"), str(self.config)], self.root / "orthanc.log")
        wait_until(self._up, 30, "Orthanc's REST API")

    def _up(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise AssertionError(f"Orthanc exited:\n{self.proc.log()}")
        try:
            return requests.get(f"{self.url}/system", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30).raise_for_status()

    def count_sop(self, sop_uid: str) -> int:
        found = requests.post(f"{self.url}/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}},
                              timeout=10).json()
        return len(found)

    def study_modalities(self, study_uid: str) -> dict[str, int]:
        """Modality -> number of instances, over the study's series."""
        [study] = requests.post(f"{self.url}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
                                timeout=10).json()
        out: dict[str, int] = {}
        for series in requests.get(f"{self.url}/studies/{study}/series", timeout=10).json():
            modality = series["MainDicomTags"].get("Modality", "")
            out[modality] = out.get(modality, 0) + len(series["Instances"])
        return out


class Stack:
    """Redis, Orthanc, the node and any number of workers; see the module docstring."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.root, self.weights = root, weights
        self.redis_port, self.node_port = free_port(), free_port()
        self.orthanc = Orthanc(root / "orthanc", "DURAL_AI", self.node_port)
        self.data_dir = root / "node"
        self.config_path = root / "node.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.node_port, "data_dir": str(self.data_dir)},
            "series": {"quiet_seconds": 2},
            "destinations": [{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1",
                              "port": self.orthanc.dicom_port, "backoff_base_s": 1, "backoff_max_s": 4,
                              "max_attempts": 40, "timeout_s": 10}],
            "queue": {"broker_url": f"redis://127.0.0.1:{self.redis_port}/0", "heartbeat_timeout_s": 15,
                      "max_submissions": 3},
            "model": {"weights": str(weights), "device": "cpu", "threads": 2},
            "http": {"bind": "127.0.0.1", "port": free_port()},
        }))
        self.redis: Proc | None = None
        self.node: Proc | None = None
        self.workers: list[Proc] = []
        self._ledger: Ledger | None = None

    # -- parts ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis = Proc([tool("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", str(self.root)],
                          self.root / "redis.log")
        cli = tool("redis-cli")
        wait_until(lambda: subprocess.run([cli, "-p", str(self.redis_port), "ping"], capture_output=True).stdout
                   == b"PONG\n", 10, "redis-server")

    def start_node(self) -> None:
        self.node = Proc([str(BIN / "dicom-node"), "--config", str(self.config_path), "serve"], self.root / "node.log")

        def listening() -> bool:
            if not self.node.alive():
                raise AssertionError(f"the node exited:\n{self.node.log()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.node_port)) == 0

        wait_until(listening, 60, "the node's DICOM port")

    def start_worker(self, pool: str = "prefork") -> Proc:
        n = len(self.workers) + 1
        worker = Proc([str(BIN / "dicom-node"), "--config", str(self.config_path), "worker", "--pool", pool,
                       "--name", f"w{n}@test"], self.root / f"worker{n}.log")
        self.workers.append(worker)
        return worker

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.data_dir / "ledger.sqlite3")
        return self._ledger

    def job_for(self, series_uid: str) -> Job | None:
        jobs = [j for j in self.ledger.jobs() if j.series_uid == series_uid and j.state != "superseded"]
        return jobs[-1] if jobs else None

    def wait_state(self, series_uid: str, states: set[str], timeout: float) -> Job:
        def reached() -> Job | None:
            for proc in [self.node, *self.workers[-1:]]:
                if proc is not None and not proc.alive() and proc in (self.node,):
                    raise AssertionError(f"the node exited:\n{proc.log()}")
            job = self.job_for(series_uid)
            return job if job is not None and job.state in states else None

        try:
            return wait_until(reached, timeout, f"series job in {sorted(states)}")
        except AssertionError:
            job = self.job_for(series_uid)
            logs = "\n".join(f"--- {p.log_path.name}\n{p.log(2500)}" for p in [self.node, *self.workers] if p)
            raise AssertionError(f"job: {job}\nevents: {self.ledger.events(job.id) if job else None}\n{logs}")

    def deliver_with_worker(self, make_ct: Callable[..., tuple[list[Path], dict[str, str]]],
                            kind: str = "sdh") -> tuple[Job, list[Path], dict[str, str]]:
        """Upload a phantom of ``kind`` to Orthanc with a worker running; its delivered job."""
        worker = self.start_worker()
        try:
            files, uids = make_ct(kind)
            self.orthanc.upload(files)
            job = self.wait_state(uids["series"], {"delivered"}, timeout=180)
        finally:
            worker.stop()
        return job, files, uids

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{yaml.safe_load(self.config_path.read_text())['http']['port']}"

    def assert_delivered_once(self, job: Job, study_uid: str, n_ct: int) -> None:
        """Every result file of ``job`` is in Orthanc exactly once, and the CT is whole."""
        files = (job.result or {}).get("files", [])
        assert files, f"job {job.id} has no result files: {job.result}"
        for f in files:
            assert self.orthanc.count_sop(f["sop_instance_uid"]) == 1, f
        modalities = self.orthanc.study_modalities(study_uid)
        assert modalities.get("CT") == n_ct and sum(modalities.values()) == n_ct + len(files), modalities

    def close(self) -> None:
        for proc in [*self.workers, self.node]:
            if proc is not None:
                proc.stop()
        self.orthanc.stop()
        if self.redis is not None:
            self.redis.stop()
        if self._ledger is not None:
            self._ledger.close()


def _weights(root: Path) -> Path:
    """The shipped weights: the end-to-end tests run the model the product ships."""
    from segmenter.weights import SHIPPED_WEIGHTS

    assert SHIPPED_WEIGHTS.is_file(), f"shipped weights missing: {SHIPPED_WEIGHTS}"
    return SHIPPED_WEIGHTS


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, weights: Path):
    root = tmp_path_factory.mktemp("e2e")
    s = Stack(root, weights)
    try:
        s.start_redis()
        s.orthanc.start()
        s.start_node()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def make_ct(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[list[Path], dict[str, str]]]:
    """Write a synthetic head CT with a hematoma; returns its files and UIDs."""
    import pydicom

    from segmenter.synthetic import PhantomRanges, make_phantom, write_phantom_series

    counter = iter(range(1000))
    ranges = replace(PhantomRanges.training(), size=(256, 256), pixel_spacing_mm=(0.86, 0.98), n_slices=(20, 24))

    def make(kind: str = "sdh", slices: int | None = None) -> tuple[list[Path], dict[str, str]]:
        """``slices``: a fixed slice count; inference time grows with it (tests that kill a
        running job need it to run for seconds, however fast the machine)."""
        n = next(counter)
        out = tmp_path_factory.mktemp(f"ct{n}")
        r = ranges if slices is None else replace(ranges, n_slices=(slices, slices))
        written = write_phantom_series(make_phantom(100 + n, kind=kind, ranges=r), out)
        ds = pydicom.dcmread(written["dicom"][0], stop_before_pixels=True)
        return list(written["dicom"]), {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID)}

    return make
