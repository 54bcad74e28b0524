"""The node as a whole: the loop's stage protocol, ``dicom-node serve`` as a subprocess with real
storescu and Redis peers, SIGTERM, and kill -9 at the points where a crash could lose a job."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dicom_node.config import parse_config
from dicom_node.console.auth import create_token
from dicom_node.ledger import OUTCOME_STATES, JobState, Ledger
from dicom_node.names import LEDGER_FILE, NODE_STATE_FILE
from dicom_node.node import Node
from segmenter.dicom_io import make_test_series
from tests.helpers import free_port

EXE = Path(sys.executable).parent / "dicom-node"
FINISHED = {s.value for s in OUTCOME_STATES} | {JobState.DELIVERED.value}


def wait_until(what: str, predicate, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class NodeProcess:
    """``dicom-node --config PATH serve`` with its log lines collected from stderr."""

    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([str(EXE), "--config", str(config), "serve"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.serving = wait_until("the node to start", lambda: self.find('msg="dicom-node serving"'), 60)
        except AssertionError:
            self.kill9()
            raise AssertionError("node did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture
def procs():
    """Every node started by a test; killed at the end whatever happens."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.kill9()


def write_config(tmp_path: Path, **sections) -> Path:
    data = {"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": "var"},
            "http": {"bind": "127.0.0.1", "port": free_port()}, "series": {"quiet_seconds": 60}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def storescu(port: int, paths) -> None:
    proc = subprocess.run(["storescu", "127.0.0.1", str(port), *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, "TCP_NODELAY": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def job_of(ledger: Ledger):
    jobs = ledger.jobs()
    return jobs[-1] if jobs else None


# -- the loop protocol, in process -------------------------------------------------------------
class SpySubmitter:
    def __init__(self) -> None:
        self.calls: list[tuple[Ledger, float]] = []

    def run_once(self, ledger, now):
        self.calls.append((ledger, now))

    def health(self, now):
        return []


class BrokenSender:
    def __init__(self) -> None:
        self.calls = 0

    def run_once(self, now):
        self.calls += 1
        raise RuntimeError("destination table corrupt")


def test_run_once_calls_each_stage_and_survives_a_failing_one(tmp_path, caplog):
    cfg = parse_config({"node": {"data_dir": str(tmp_path / "var")}})
    submitter, sender = SpySubmitter(), BrokenSender()
    node = Node(cfg, submitter=submitter, sender=sender, clock=lambda: 1_700_000_000.0)
    for _ in range(2):
        results = node.run_once(1_700_000_000.0)
    assert "assembler" in results and "sender" not in results
    assert submitter.calls == [(node.ledger, 1_700_000_000.0)] * 2 and sender.calls == 2
    assert node.health() == ["receiver not running", "stage sender failing: RuntimeError('destination table corrupt')"]
    # The same error is logged once, not on every pass.
    assert sum("stage failed" in r.getMessage() for r in caplog.records) == 1


def test_queue_problems_reach_health_and_status(tmp_path):
    class BrokerDown(SpySubmitter):
        def health(self, now):
            return [f"queue broker unreachable for {now - 1_699_999_900.0:.0f} s: refused"]

    cfg = parse_config({"node": {"data_dir": str(tmp_path / "var")}})
    node = Node(cfg, submitter=BrokerDown(), sender=BrokenSender(), clock=lambda: 1_700_000_000.0)
    assert "queue broker unreachable for 100 s: refused" in node.health()
    assert "queue broker unreachable for 100 s: refused" in node.status()["node"]["problems"]


# -- the real node ------------------------------------------------------------------------------
@pytest.mark.network
@pytest.mark.slow
def test_serve_receives_assembles_submits_and_stops_on_sigterm(tmp_path, procs):
    config = write_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    node = NodeProcess(config)
    procs.append(node)
    line = node.serving
    assert re.search(rf"ae_title=DURAL_AI port={cfg['node']['port']} data_dir=\S+/var broker=embedded", line), line
    assert len([ln for ln in node.lines if 'msg="dicom-node serving"' in ln]) == 1
    storescu(cfg["node"]["port"], make_test_series(tmp_path / "ct", n_slices=12))
    ledger = Ledger(tmp_path / "var" / LEDGER_FILE)
    # Released and contiguous: complete long before series.quiet_seconds (60 s), then submitted.
    job = wait_until("submission", lambda: (j := job_of(ledger)) and j.submissions >= 1 and j, 20)
    assert ledger.instance_count(job.id) == 12
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg['http']['port']}/healthz", timeout=10) as rsp:
        assert json.loads(rsp.read()) == {"ok": True, "problems": []}
    token = create_token(ledger, "test")  # /status, unlike /healthz, needs a token
    request = urllib.request.Request(f"http://127.0.0.1:{cfg['http']['port']}/status",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as rsp:
        assert json.loads(rsp.read())["receiver"]["stored"] == 12
    assert node.terminate() == 0
    assert node.find('msg="dicom-node stopped"')
    state = json.loads((tmp_path / "var" / NODE_STATE_FILE).read_text())
    assert state["stopped_at"] is not None
    status = subprocess.run([str(EXE), "--config", str(config), "status"], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0 and "stopped cleanly" in status.stdout
    ledger.close()


@pytest.mark.network
@pytest.mark.slow
def test_kill9_while_receiving_then_restart_completes_the_series(tmp_path, procs):
    config = write_config(tmp_path)
    port = yaml.safe_load(config.read_text())["node"]["port"]
    paths = make_test_series(tmp_path / "ct", n_slices=12)
    procs.append(first := NodeProcess(config))
    ledger = Ledger(tmp_path / "var" / LEDGER_FILE)
    storescu(port, paths[:5] + paths[6:7])  # slices 0-4 and 6: a gap, so the series cannot be complete
    job = wait_until("6 instances", lambda: (j := job_of(ledger)) and ledger.instance_count(j.id) == 6 and j)
    time.sleep(1.5)  # past the settle time: still waiting because of the gap
    assert ledger.job(job.id).state == JobState.RECEIVED
    first.kill9()
    procs.append(second := NodeProcess(config))
    storescu(port, paths[5:6] + paths[7:])
    done = wait_until("an outcome", lambda: (j := ledger.job(job.id)).state.value in FINISHED and j, 120)
    assert ledger.instance_count(job.id) == 12 and len(ledger.jobs()) == 1 and done.submissions >= 1
    assert any("associations released and 12 slices contiguous" in (e[2] or "") for e in ledger.events(job.id))
    assert second.terminate() == 0
    ledger.close()


@pytest.fixture
def redis_port():
    """A port for a private redis-server that the test starts and stops itself."""
    port = free_port()
    servers: list[subprocess.Popen] = []

    def start() -> None:
        servers.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL))
        import redis

        client = redis.Redis(port=port)
        wait_until("redis", lambda: _ping(client), 20)

    yield port, start
    for server in servers:
        server.terminate()
        server.wait(10)


def _ping(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.mark.network
@pytest.mark.slow
def test_kill9_before_submission_and_after_broker_loss(tmp_path, procs, redis_port):
    import redis

    port_r, start_redis = redis_port
    config = write_config(tmp_path, queue={"broker_url": f"redis://127.0.0.1:{port_r}/0"})
    port = yaml.safe_load(config.read_text())["node"]["port"]
    # 1. Redis is down: the series completes but cannot be submitted.
    procs.append(first := NodeProcess(config))
    ledger = Ledger(tmp_path / "var" / LEDGER_FILE)
    storescu(port, make_test_series(tmp_path / "ct", n_slices=12))
    job = wait_until("completion", lambda: (j := job_of(ledger)) and j.state == JobState.COMPLETE and j, 30)
    wait_until("a failed submission", lambda: first.find("queue unreachable; job stays complete"), 60)
    assert ledger.job(job.id).state == JobState.COMPLETE and ledger.job(job.id).submissions == 0
    first.kill9()  # after completion, before submission
    # 2. Redis is back; the restarted node submits the complete job.
    start_redis()
    procs.append(second := NodeProcess(config))
    queued = wait_until("submission", lambda: (j := ledger.job(job.id)).state == JobState.QUEUED and j, 60)
    assert queued.submissions == 1
    client = redis.Redis(port=port_r)
    assert client.llen("routine") == 1  # triage.default_lane
    second.kill9()
    # 3. The broker lost its queue (Redis restarted empty) while the node was down: the task is
    #    found lost and submitted again.
    client.flushall()
    procs.append(third := NodeProcess(config))
    again = wait_until("resubmission", lambda: (j := ledger.job(job.id)).submissions == 2 and j, 60)
    assert again.state == JobState.QUEUED and client.llen("routine") == 1
    assert any((e[2] or "").startswith("requeued: task no longer in the queue") for e in ledger.events(job.id))
    assert third.terminate() == 0
    ledger.close()


@pytest.mark.network
def test_serve_exits_1_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, http={"port": taken.getsockname()[1]})
        proc = subprocess.run([str(EXE), "--config", str(config), "serve"], capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "dicom-node: cannot start: Address already in use" in proc.stderr and "Traceback" not in proc.stderr
