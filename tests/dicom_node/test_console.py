"""The operator console of a running ``dicom-node serve``: authentication, the worklist and search,
retrying a dead delivery from the browser, and no PHI in the node's log or the audit trail.

The node runs as a subprocess with a real HTTP port; its ledger is seeded before start with
three series of real (small) CT files. One analysed series has a delivery to a PACS that is not
there yet (``max_attempts: 1``), so the node's own sender dead-letters it; the test then starts
dcmtk's storescp on that port and presses Retry in headless Chromium.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
import pytest
import requests
import yaml

from dicom_node.assembler import Assembler
from dicom_node.config import load_config, parse_config
from dicom_node.console import api, pages, public
from dicom_node.console.auth import api_user, create_token, page_user
from dicom_node.console.health import readiness_problems
from dicom_node.ledger import FailStage, JobState, Ledger
from dicom_node.names import LEDGER_FILE
from segmenter.dicom_io import make_test_series
from tests.browser import chromium, log_in
from tests.helpers import free_port

EXE = Path(sys.executable).parent / "dicom-node"
PUBLIC = {"/healthz", "/readyz", "/metrics", "/login"}
#: Identifiers of the seeded studies: shown to a logged-in user, never written to a log.
STUDIES = {
    "bleed": {"AccessionNumber": "ACC7731905", "PatientName": "Quillon^Zyxwert", "PatientID": "PID-55123"},
    "failed": {"AccessionNumber": "ACC7731906", "PatientName": "Vexmor^Ilsa", "PatientID": "PID-55124"},
    "few": {"AccessionNumber": "ACC7731907", "PatientName": "Drabnik^Oto", "PatientID": "PID-55125"},
}
SESSION_MINUTES = 0.1  # 6 s: long enough for the browser steps, short enough to wait out
FINDINGS = {"SDH": {"name": "SDH", "label": 1, "present": True, "volume_ml": 31.4, "max_thickness_mm": 12.2,
                    "laterality": "left", "confidence": 0.93, "voxel_count": 5000},
            "EDH": {"name": "EDH", "label": 2, "present": False, "volume_ml": 0.0, "max_thickness_mm": 0.0,
                    "laterality": None, "confidence": 0.0, "voxel_count": 0}}

pytestmark = [pytest.mark.network, pytest.mark.slow]


def wait_until(what: str, predicate, timeout: float = 30.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _series(folder: Path, ids: dict[str, str], n_slices: int) -> list[Path]:
    paths = make_test_series(folder, n_slices=n_slices)
    for path in paths:
        ds = pydicom.dcmread(path)
        for key, value in ids.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return paths


def _seed(cfg, root: Path) -> dict[str, int]:
    """Three studies: an analysed bleed whose delivery will go dead, a failed series, and one too
    short to analyse. Jobs are moved by the ledger's own state machine."""
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    now = time.time() - 30
    for name, ids in STUDIES.items():
        for p in _series(root / "ct" / name, ids, 4 if name == "few" else 12):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, p,
                                   None, now=now)
    Assembler(cfg, ledger).run_once(now + 10)
    bleed, failed, few = (j.id for j in ledger.jobs())
    assert ledger.job(few).state == JobState.NOT_ANALYSED
    for job in (bleed, failed):
        ledger.mark_submitted(job, f"task-{job}", "stat", now=now + 11)
        ledger.transition(job, JobState.RUNNING, now=now + 12)
    ledger.transition(failed, JobState.FAILED, reason="inference ran out of memory", fail_stage=FailStage.INFERENCE,
                      now=now + 15)
    # The result to deliver: one real DICOM file in the job's results folder.
    result = cfg.data_dir / "results" / str(bleed)
    result.mkdir(parents=True)
    source = sorted((root / "ct" / "bleed").glob("*.dcm"))[0]
    shutil.copy(source, result / "key.dcm")
    sop = pydicom.dcmread(source, stop_before_pixels=True)
    files = [{"type": "sc", "path": f"results/{bleed}/key.dcm", "sop_class_uid": str(sop.SOPClassUID),
              "sop_instance_uid": str(sop.SOPInstanceUID), "series_uid": str(sop.SeriesInstanceUID)}]
    ledger.transition(bleed, JobState.DONE, result={"files": files, "findings": FINDINGS, "caveat": CAVEAT,
                                                    "model": {"name": "csr-unet", "version": "test"}}, now=now + 20)
    ledger.set_triage(bleed, "critical")
    ledger.add_deliveries(bleed, ["pacs"], now=now + 20)
    ledger.close()
    return {"bleed": bleed, "failed": failed, "few": few}


#: The seeded bleed series' transfer was cut short: the study page and the API say so.
CAVEAT = "Transfer interrupted: the association sending this series was aborted after 7 instance(s)."


@contextlib.contextmanager
def pacs_storescp(dcmtk: Callable[[str], str], storage: Path, port: int) -> Iterator[None]:
    """dcmtk storescp as the PACS (AE title PACS) on ``port``, writing into ``storage``."""
    storage.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", "-od", str(storage), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until("storescp", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 20)
        yield
    finally:
        pacs.terminate()
        pacs.wait(10)


class NodeProcess:
    """``dicom-node serve`` with the console on a free port; a broker nobody listens on keeps
    every seeded job where the seed left it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pacs_port, self.http_port = free_port(), free_port()
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": free_port(), "data_dir": "var",
                     "min_free_disk_gb": 0},
            "queue": {"broker_url": f"redis://127.0.0.1:{free_port()}/0"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port,
                              "max_attempts": 1, "timeout_s": 5}],
            "http": {"bind": "127.0.0.1", "port": self.http_port, "session_minutes": SESSION_MINUTES},
            "logging": {"level": "INFO"}}))
        self.cfg = load_config(self.config)
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.log_path = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(EXE), "--config", str(self.config), "serve"], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"the node exited:\n{self.log()}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.http_port)) == 0

        wait_until("the console's port", listening, 60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(EXE), "--config", str(self.config), *args], capture_output=True, text=True,
                              timeout=60)

    def token(self, name: str) -> str:
        """A new token, made through the library (``test_authentication...`` runs the CLI)."""
        ledger = Ledger(self.cfg.data_dir / LEDGER_FILE)
        try:
            return create_token(ledger, name)
        finally:
            ledger.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    proc = NodeProcess(root)
    jobs = _seed(proc.cfg, root)
    proc.start()
    proc.jobs = jobs  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_but_the_public_ones_demands_a_token(node):
    routes = [(r, m) for router in (public.router, api.router, api.legacy, pages.router) for r in router.routes
              for m in r.methods]
    paths = {r.path for r, _ in routes}
    assert {"/", "/api/v1/studies", "/api/v1/openapi.json", "/status", "/jobs/{job_id}/retry"} <= paths
    for route, method in routes:
        guards = {d.call for d in route.dependant.dependencies}
        assert (route.path in PUBLIC) != bool(guards & {api_user, page_user}), route.path
        if route.path in PUBLIC:
            continue
        # And over HTTP: without credentials the API answers 401 and a page sends to the login.
        url = node.base + re.sub(r"{[^}]+}", "1", route.path)
        r = requests.request(method, url, allow_redirects=False, timeout=10)
        assert r.status_code in ((303,) if route in pages.router.routes else (401,)), (method, route.path)
        assert r.status_code == 401 or r.headers["location"].startswith("/login?next=")


def test_authentication_no_wrong_revoked_token_and_expired_session(node):
    base = node.base
    # A session that will expire while the rest runs.
    early = node.token("dave")
    r = requests.post(base + "/login", data={"token": early}, allow_redirects=False, timeout=10)
    sid, expires = r.cookies["dural_session"], time.monotonic() + SESSION_MINUTES * 60
    assert requests.get(base + "/api/v1/system", cookies={"dural_session": sid}, timeout=10).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/login"):  # open to probes and scrapers
        assert requests.get(base + path, timeout=10).status_code in (200, 503), path
    # No token.
    r = requests.get(base + "/api/v1/studies", timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(base + "/", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    # A wrong token, and the login form refusing it (no cookie).
    assert requests.get(base + "/api/v1/studies", headers=bearer("dn_wrong"), timeout=10).status_code == 401
    r = requests.post(base + "/login", data={"token": "dn_wrong"}, allow_redirects=False, timeout=10)
    assert r.status_code == 401 and "not valid" in r.text and "set-cookie" not in r.headers
    # A token from the CLI (alone on its last line), as bearer and through a browser session.
    run = node.cli("token", "create", "carol")
    assert run.returncode == 0, run.stdout + run.stderr
    token = run.stdout.splitlines()[-1]
    assert token.startswith("dn_") and " " not in token
    assert requests.get(base + "/api/v1/studies", headers=bearer(token), timeout=10).status_code == 200
    session = requests.Session()
    r = session.post(base + "/login", data={"token": token, "next": "/problems"}, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/problems"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and f"Max-Age={int(SESSION_MINUTES * 60)}" in cookie
    assert session.get(base + "/problems", timeout=10).status_code == 200
    # Revoked: the token and the session it opened both stop working at once.
    revoke = node.cli("token", "revoke", "carol")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert requests.get(base + "/api/v1/studies", headers=bearer(token), timeout=10).status_code == 401
    assert session.get(base + "/problems", allow_redirects=False, timeout=10).status_code == 303
    listed = node.cli("token", "list").stdout
    assert re.search(r"^carol\t.*revoked", listed, re.M) and re.search(r"^dave\t.*active$", listed, re.M), listed
    # Expired: a session past http.session_minutes is refused by the node (the cookie is sent
    # by hand, since a client would drop it by itself); the token that opened it still works.
    time.sleep(max(0.0, expires - time.monotonic()) + 0.5)
    assert requests.get(base + "/api/v1/system", cookies={"dural_session": sid}, timeout=10).status_code == 401
    r = requests.get(base + "/", cookies={"dural_session": sid}, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert requests.get(base + "/api/v1/system", headers=bearer(early), timeout=10).status_code == 200
    audit = (node.cfg.data_dir / "audit" / "audit.jsonl").read_text()
    logins = [json.loads(line) for line in audit.splitlines() if '"login"' in line]
    assert {(r.get("ok"), r.get("token_name")) for r in logins} >= {(False, None), (True, "carol"), (True, "dave")}
    assert token not in audit and early not in audit and "dn_wrong" not in audit


def test_worklist_search_and_api_documents(node):
    headers = bearer(node.token("erin"))
    doc = requests.get(node.base + "/api/v1/studies", headers=headers, timeout=10).json()
    order = [s["accession_number"] for s in doc["studies"]]
    # Triage category first: the critical bleed, then the failed series, then the one not analysed.
    assert order == ["ACC7731905", "ACC7731906", "ACC7731907"], order
    first = doc["studies"][0]
    assert first["category"] == "critical" and first["patient_name"] == "Quillon^Zyxwert"
    assert first["findings"] == [{"class": "SDH", "present": True, "volume_ml": 31.4, "max_thickness_mm": 12.2,
                                  "laterality": "left", "confidence": 0.93}]
    found = requests.get(node.base + "/api/v1/studies", params={"accession": "7731906"}, headers=headers,
                         timeout=10).json()
    assert [s["category"] for s in found["studies"]] == ["failed"]
    filtered = requests.get(node.base + "/api/v1/studies", params={"state": "not_analysed"}, headers=headers,
                            timeout=10).json()
    assert [s["accession_number"] for s in filtered["studies"]] == ["ACC7731907"]
    today = time.strftime("%Y-%m-%d")
    assert requests.get(node.base + "/api/v1/studies", params={"date": today, "category": "critical"},
                        headers=headers, timeout=10).json()["total"] == 1
    assert requests.get(node.base + "/api/v1/studies", params={"date": "2001-01-01"}, headers=headers,
                        timeout=10).json()["total"] == 0
    study = requests.get(node.base + f"/api/v1/studies/{first['study_uid']}", headers=headers, timeout=10).json()
    [series] = study["series"]
    assert [e["state"] for e in series["timeline"]] == ["received", "complete", "queued", "running", "done"]
    assert [s["stage"] for s in series["stages"]] == ["assembly", "scheduling", "queue wait", "analysis"]
    assert series["deliveries"][0]["destination"] == "pacs" and series["key_image_note"]
    assert series["caveat"] == CAVEAT
    assert CAVEAT in requests.get(node.base + f"/studies/{first['study_uid']}", headers=headers, timeout=10).text
    problems = requests.get(node.base + "/api/v1/problems", headers=headers, timeout=10).json()
    assert problems["failed"][0]["reason"] == "inference ran out of memory"
    assert problems["not_analysed"][0]["job"] == node.jobs["few"]
    schema = requests.get(node.base + "/api/v1/openapi.json", headers=headers, timeout=10).json()
    assert {"/api/v1/studies", "/api/v1/studies/{study_uid}", "/api/v1/jobs/{job_id}/retry"} <= set(schema["paths"])
    system = requests.get(node.base + "/api/v1/system", headers=headers, timeout=10).json()
    assert {"readiness", "retention", "receiver", "jobs"} <= set(system)
    page = requests.get(node.base + "/", params={"accession": "7731905"}, headers=headers, timeout=10)
    assert "Quillon, Zyxwert" in page.text and "Vexmor" not in page.text


def test_retry_a_dead_delivery_from_the_browser(node, dcmtk, tmp_path):
    headers = bearer(node.token("frank"))
    job = node.jobs["bleed"]

    def delivery() -> dict[str, Any]:
        doc = requests.get(node.base + f"/api/v1/jobs/{job}", headers=headers, timeout=10).json()
        return doc["deliveries"][0]

    # Nothing listens on the PACS port yet: the node's sender dead-letters the delivery.
    dead = wait_until("the delivery to be dead-lettered", lambda: (d := delivery())["state"] == "dead" and d, 60)
    assert dead["attempts"] == 1 and dead["last_error"]
    storage = tmp_path / "pacs"
    with pacs_storescp(dcmtk, storage, node.pacs_port):
        with chromium() as browser:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            log_in(browser, node.base, node.token("grace"), "/problems")
            assert browser.current_url.endswith("/problems"), browser.current_url
            row = browser.find_element(By.XPATH, "//td[contains(., 'pacs')]/..")
            assert dead["last_error"][:20] in row.text
            row.find_element(By.CSS_SELECTOR, "button.retry").click()
            # The form posts and redirects: wait for the page it lands on, not the one clicked on.
            flash = WebDriverWait(browser, 30).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, ".flash"))[0].text
            assert flash.startswith("1 dead delivery requeued"), flash
            assert "Quillon, Zyxwert" in browser.find_element(By.TAG_NAME, "h1").text
        sent = wait_until("the retried delivery to be sent", lambda: (d := delivery())["state"] == "sent" and d, 60)
        assert sent["attempts"] == 1  # the retry gave it its attempts back
        assert len(list(storage.iterdir())) == 1
    audit = [json.loads(line) for line in (node.cfg.data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    assert {"event": "delivery_retry", "token_name": "grace", "job": job, "delivery": dead["id"], "requeued": 1}.items() \
        <= next(r for r in audit if r["event"] == "delivery_retry").items()


def test_no_phi_in_the_node_log_or_the_audit_trail(node):
    headers = bearer(node.token("heidi"))
    for ids in STUDIES.values():  # searches by accession number, through the API and the page
        requests.get(node.base + "/api/v1/studies", params={"accession": ids["AccessionNumber"]}, headers=headers,
                     timeout=10).raise_for_status()
        requests.get(node.base + "/", params={"accession": ids["AccessionNumber"]}, headers=headers,
                     timeout=10).raise_for_status()
    text = node.log() + (node.cfg.data_dir / "audit" / "audit.jsonl").read_text()
    for ids in STUDIES.values():
        for value in (ids["AccessionNumber"], ids["PatientID"], ids["PatientName"].split("^")[0]):
            assert value not in text, value


def test_readiness_names_the_model_and_the_queue(tmp_path):
    cfg = parse_config({"node": {"data_dir": str(tmp_path)}, "model": {"weights": str(tmp_path / "none.pt")}})
    ledger = Ledger(tmp_path / LEDGER_FILE)
    problems = readiness_problems(cfg, ledger, lambda: ["broker unreachable for 90 s"])
    assert problems == ["queue: broker unreachable for 90 s", f"model weights not found at {tmp_path / 'none.pt'} "
                        "(model.weights)"]
    (tmp_path / "none.pt").write_bytes(b"weights")
    assert readiness_problems(cfg, ledger, list) == []


def test_console_listens_on_loopback_unless_told_otherwise(tmp_path):
    cfg = parse_config({"node": {"data_dir": str(tmp_path)}})
    assert (cfg.http.bind, cfg.http.enabled, cfg.http.cookie_secure) == ("127.0.0.1", True, False)
