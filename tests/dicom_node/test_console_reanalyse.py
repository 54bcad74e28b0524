"""Re-analysing a failed job through a running node's HTTP API.

The node runs as ``dicom-node serve`` with the embedded queue, a real PACS (dcmtk's storescp)
and model weights that cannot be loaded: the seeded CT series fails at stage ``load`` for real,
and its status SR is delivered. With the real weights put in place, ``POST
/api/v1/jobs/{id}/reanalyse`` sends the series through the analysis again, and its result objects
reach the PACS as well.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
import yaml

from dicom_node.assembler import Assembler
from dicom_node.config import load_config
from dicom_node.ledger import JobState, Ledger
from dicom_node.names import LEDGER_FILE
from tests.dicom_node.test_console import STUDIES, NodeProcess, _series, bearer, pacs_storescp, wait_until

SHIPPED = Path(__file__).resolve().parents[2] / "segmenter" / "weights"

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _job_doc(node: NodeProcess, job: int, headers: dict[str, str]) -> dict:
    return requests.get(node.base + f"/api/v1/jobs/{job}", headers=headers, timeout=10).json()


def test_reanalyse_a_job_that_failed_to_load_its_model(tmp_path, dcmtk):
    node = NodeProcess(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(SHIPPED / "csr_unet.json", weights / "csr_unet.json")
    (weights / "csr_unet.pt").write_bytes(b"not a checkpoint")  # fails the manifest's hash check
    doc = yaml.safe_load(node.config.read_text())
    doc["queue"] = {"broker_url": "embedded"}
    doc["model"] = {"weights": str(weights / "csr_unet.pt"), "device": "cpu"}
    doc["destinations"][0]["max_attempts"] = 5
    node.config.write_text(yaml.safe_dump(doc))
    node.cfg = load_config(node.config)

    ledger = Ledger(node.cfg.data_dir / LEDGER_FILE)
    now = time.time() - 30
    for p in _series(node.cfg.data_dir / "spool" / "ct", STUDIES["failed"], 12):  # workers read data_dir only
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, p,
                               None, now=now)
    Assembler(node.cfg, ledger).run_once(now + 10)
    (job,) = (j.id for j in ledger.jobs())
    assert ledger.job(job).state == JobState.COMPLETE
    ledger.close()

    storage = tmp_path / "pacs"
    with pacs_storescp(dcmtk, storage, node.pacs_port):
        try:
            node.start()
            headers = bearer(node.token("ivan"))
            failed = wait_until("the failure's status SR to be delivered",
                                lambda: (d := _job_doc(node, job, headers))["state"] == "delivered" and d, 120)
            assert failed["fail_stage"] == "load" and "model could not be loaded" in failed["reason"]
            assert failed["reanalysable"] and [d["state"] for d in failed["deliveries"]] == ["sent"]
            status_objects = len(list(storage.iterdir()))
            assert status_objects >= 1

            button = f'action="/jobs/{job}/reanalyse"'
            for page in ("/problems", f"/studies/{failed['study_uid']}"):
                assert button in requests.get(node.base + page, headers=headers, timeout=10).text, page

            # Refused while the job is not failed; the real weights then go where the config points.
            shutil.copy(SHIPPED / "csr_unet.pt", weights / "csr_unet.pt")
            other = requests.post(node.base + "/api/v1/jobs/999/reanalyse", headers=headers, timeout=10)
            assert other.status_code == 404
            reply = requests.post(node.base + f"/api/v1/jobs/{job}/reanalyse", headers=headers, timeout=10)
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"job": job, "state": "complete"}
            again = requests.post(node.base + f"/api/v1/jobs/{job}/reanalyse", headers=headers, timeout=10)
            assert again.status_code == 409 and "only a failed job" in again.json()["detail"]
            page = requests.post(node.base + f"/jobs/{job}/reanalyse", headers=headers, timeout=10,
                                 allow_redirects=False)
            assert page.status_code == 409  # the page's form reaches the same action

            done = wait_until("the re-analysis to be delivered",
                              lambda: (d := _job_doc(node, job, headers))["state"] == "delivered" and d, 300, 1.0)
            assert done["fail_stage"] is None and done["reason"] is None and not done["reanalysable"]
            # Analysed this time: findings and the model on record, the result objects delivered.
            assert done["submissions"] == 1 and done["findings"] and done["model"]["name"] and done["files"]
            assert done["category"] in {"negative", "positive", "critical"}
            assert [d["state"] for d in done["deliveries"]] == ["sent"]
            assert len(list(storage.iterdir())) == status_objects + len(done["files"])
            study_page = requests.get(node.base + f"/studies/{done['study_uid']}", headers=headers, timeout=10)
            assert button not in study_page.text
            details = [e["detail"] or "" for e in done["timeline"]]
            assert "re-analysis requested by ivan; 1 earlier delivery of the failure cleared" in details
        finally:
            node.stop()
    audit = [json.loads(line) for line in (node.cfg.data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [r for r in audit if r["event"] == "job_reanalyse"] == [
        {**next(r for r in audit if r["event"] == "job_reanalyse"), "token_name": "ivan", "job": job}]
