"""``dicom-node status`` (works with the node down) and the HTTP /healthz and /status endpoints."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pydicom
import pytest
import yaml

from dicom_node import cli
from dicom_node.assembler import Assembler
from dicom_node.config import load_config
from dicom_node.console.context import Console
from dicom_node.console.auth import create_token
from dicom_node.console.server import ConsoleServer
from dicom_node.httpstatus import status_snapshot, write_node_state
from dicom_node.ledger import FailStage, JobState, Ledger
from dicom_node.names import LEDGER_FILE
from segmenter.dicom_io import make_test_series
from tests.helpers import free_port

PHI = ("Phantom^Head", "PHANTOM0001", "19600101", "SYN")  # name, ID, birth date, accession prefix


#: cli.main installs a handler on the test's captured stderr; conftest removes it afterwards.
pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.fixture
def setup(tmp_path):
    """A config file and a ledger holding one job in each interesting state, built from real CTs."""
    data = {"node": {"data_dir": "var"}, "series": {"quiet_seconds": 1},
            "http": {"port": free_port()}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    now = time.time()
    for name, kw in (("ok", {}), ("few", {"n_slices": 4}), ("fails", {}), ("dead", {})):
        for p in make_test_series(tmp_path / name, **{"n_slices": 12, **kw}):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID,
                                   p, None, now=now - 10)
    Assembler(cfg, ledger).run_once(now)
    ok, few, fails, dead = (j.id for j in ledger.jobs())
    assert ledger.job(few).state == JobState.NOT_ANALYSED
    for job in (fails, dead):
        ledger.mark_submitted(job, f"t{job}", "stat")
        ledger.transition(job, JobState.RUNNING)
    ledger.transition(fails, JobState.FAILED, reason="model weights missing", fail_stage=FailStage.LOAD)
    ledger.transition(dead, JobState.DONE, result={"files": ["x"]})
    ledger.add_deliveries(dead, ["pacs"])
    ledger.delivery_attempted(ledger.deliveries(dead)[0].id, ok=False, error="association rejected", dead=True)
    ledger.close()
    return path, cfg, {"ok": ok, "few": few, "fails": fails, "dead": dead}


def run_status(path, capsys, *extra) -> tuple[int, str]:
    code = cli.main(["--config", str(path), "status", *extra])
    return code, capsys.readouterr().out


def test_status_text_with_node_down(setup, capsys):
    path, cfg, jobs = setup
    code, out = run_status(path, capsys)
    assert code == 0
    assert "NOT RUNNING (never started with this data folder)" in out
    assert "jobs: complete=1, delivered=0" not in out  # zero counts are left out
    assert "complete=1" in out and "failed=1" in out and "not_analysed=1" in out and "done=1" in out
    assert f"job {jobs['few']} not_analysed series" in out and "too few slices: 4 (series.min_slices is 10)" in out
    assert f"job {jobs['fails']} failed [load]" in out and "model weights missing" in out
    assert f"job {jobs['dead']} -> pacs after 1 attempt(s)" in out and "association rejected" in out
    assert "1 dead-lettered" in out and "low-disk refusal off" in out
    assert "receiver: 40 instances" in out
    for text in PHI:
        assert text not in out


def test_status_json(setup, capsys):
    path, cfg, jobs = setup
    code, out = run_status(path, capsys, "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["jobs"]["complete"] == 1 and doc["series"] == 4
    assert [j["job"] for j in doc["not_analysed"]] == [jobs["few"]]
    assert doc["failed"][0]["fail_stage"] == "load"
    assert doc["dead_letters"][0]["destination"] == "pacs"
    assert doc["node"]["running"] is False and doc["receiver"]["instances"] == 40
    for text in PHI:
        assert text not in out


def test_status_reports_running_stale_and_stopped_nodes(setup, capsys):
    path, cfg, _ = setup
    now = time.time()
    write_node_state(cfg.data_dir, {"pid": os.getpid(), "started_at": now - 60, "updated_at": now,
                                    "stopped_at": None, "receiver": {"low_disk": False, "stored": 7}})
    _, out = run_status(path, capsys)
    assert f"running (pid {os.getpid()}" in out
    write_node_state(cfg.data_dir, {"pid": os.getpid(), "started_at": now - 600, "updated_at": now - 300,
                                    "stopped_at": None})
    _, out = run_status(path, capsys)
    assert "NOT RUNNING (last seen" in out and "stopped cleanly" not in out
    write_node_state(cfg.data_dir, {"pid": os.getpid(), "started_at": now - 60, "updated_at": now,
                                    "stopped_at": now})
    _, out = run_status(path, capsys)
    assert "NOT RUNNING" in out and "stopped cleanly" in out


def test_status_shows_low_disk_refusal(setup, capsys):
    path, _, _ = setup
    data = yaml.safe_load(path.read_text())
    data["node"]["min_free_disk_gb"] = 1e9  # more than any disk has
    path.write_text(yaml.safe_dump(data))
    _, out = run_status(path, capsys)
    assert "low-disk refusal ACTIVE: refusing instances (0xA700)" in out


def test_status_shows_the_receive_journal_only_when_it_holds_something(setup, capsys):
    path, cfg, _ = setup
    now = time.time()
    state = {"pid": os.getpid(), "started_at": now - 60, "updated_at": now, "stopped_at": None}
    write_node_state(cfg.data_dir, {**state, "receiver": {"journal_unmoved": 0, "journal_error": None}})
    _, out = run_status(path, capsys)
    assert "receive journal" not in out
    write_node_state(cfg.data_dir, {**state, "receiver": {"journal_unmoved": 12,
                                                          "journal_error": "OSError(28, 'No space left on device')"}})
    _, out = run_status(path, capsys)
    assert ("receive journal: 12 instance(s) not yet in spool/; PROBLEM copying them: "
            "OSError(28, 'No space left on device')") in out


def test_status_limit(setup, capsys):
    path, _, _ = setup
    _, out = run_status(path, capsys, "--json", "--limit", "1")
    doc = json.loads(out)
    assert len(doc["open"]) == 1


def test_status_without_ledger(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"node": {"data_dir": "empty"}}))
    code, out = run_status(path, capsys)
    assert code == 1 and "no ledger at" in out
    assert not (tmp_path / "empty" / LEDGER_FILE).exists()


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.network
def test_http_endpoints(setup):
    _, cfg, jobs = setup
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    problems: list[str] = []
    token = create_token(ledger, "ops")
    console = Console(cfg, ledger, lambda: status_snapshot(ledger, cfg, time.time()), lambda: list(problems),
                      lambda: [])
    server = ConsoleServer(console)
    server.start()
    try:
        base = f"http://{cfg.http.bind}:{server.port}"
        assert get(base + "/healthz") == (200, {"ok": True, "problems": []})
        problems.append("receiver not running")
        assert get(base + "/healthz") == (503, {"ok": False, "problems": ["receiver not running"]})
        assert get(base + "/status")[0] == 401  # the status document lists UIDs: a token is needed
        code, doc = get(base + "/status", token)
        assert code == 200 and doc["failed"][0]["job"] == jobs["fails"]
        assert get(base + "/nope", token)[0] == 404
    finally:
        server.shutdown()
        ledger.close()
