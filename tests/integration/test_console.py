"""The operator console on the end-to-end stack: a phantom head CT with a subdural hematoma goes
Orthanc -> node -> Celery worker (the shipped model) -> Orthanc, and the console shows it.

Through real HTTP: the worklist and study documents, the key image drawn from the delivered SEG,
/readyz and /metrics. In headless Chromium: log in with a token, find the study on the worklist,
open it and see the findings and the key image. The study page's screenshot is what
``docs/dashboard.png`` shows (set CONSOLE_SCREENSHOT=PATH to write it there).
"""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from dicom_node.console.auth import create_token
from tests.browser import chromium, log_in

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _png(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text[:500]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def test_console_shows_an_analysed_bleed(stack, make_ct, tmp_path):
    job, files, uids = stack.deliver_with_worker(make_ct)
    accession = str(pydicom.dcmread(files[0], stop_before_pixels=True).AccessionNumber)
    base = stack.console_url
    token = create_token(stack.ledger, "radiologist")
    headers = {"Authorization": f"Bearer {token}"}

    assert requests.get(base + "/readyz", timeout=10).json() == {"ready": True, "problems": []}
    metrics = requests.get(base + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "dural_" in metrics.text

    found = requests.get(base + "/api/v1/studies", params={"accession": accession}, headers=headers, timeout=10)
    [row] = found.json()["studies"]
    assert row["study_uid"] == uids["study"] and row["category"] in ("critical", "positive")
    present = {f["class"] for f in row["findings"]}
    assert present and present <= {"SDH", "EDH"}
    series = requests.get(base + f"/api/v1/jobs/{job.id}", headers=headers, timeout=10).json()
    assert [d["state"] for d in series["deliveries"] if d["kind"] == "dicom"] == ["sent"]
    assert series["timeline"][-1]["state"] == "delivered"
    assert {"analysis", "delivery", "total"} <= {s["stage"] for s in series["stages"]}
    assert series["key_image"] and series["model"]["version"]

    # The key image, drawn from the SEG the PACS received: the overlay in the class colours,
    # and a plain grey slice without it.
    drawn = _png(requests.get(base + f"/api/v1/jobs/{job.id}/key-image.png", headers=headers, timeout=30))
    plain = _png(requests.get(base + f"/api/v1/jobs/{job.id}/key-image.png", params={"overlay": "false"},
                              headers=headers, timeout=30))
    assert drawn.shape == plain.shape and drawn.shape[0] >= 512
    assert (plain[..., 0] == plain[..., 2]).all()
    orange = (drawn[..., 0] > 200) & (drawn[..., 1] > 100) & (drawn[..., 1] < 200) & (drawn[..., 2] < 90)
    blue = (drawn[..., 0] < 60) & (drawn[..., 2] > 200)
    assert orange.sum() + blue.sum() > 100

    with chromium() as browser:
        from selenium.webdriver.common.by import By

        log_in(browser, base, token, "/")
        link = browser.find_element(By.LINK_TEXT, accession)
        row_text = link.find_element(By.XPATH, "./ancestor::tr").text
        assert row["category"] in row_text and "mL" in row_text
        link.click()
        section = browser.find_element(By.ID, f"job-{job.id}")
        image = section.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) >= 512
        findings = section.find_element(By.XPATH, ".//h3[.='Findings']/following-sibling::table[1]").text
        assert any(f"{name} yes" in findings for name in present), findings
        assert "orthanc dicom sent" in section.text
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1200
    if os.environ.get("CONSOLE_SCREENSHOT"):
        shutil.copy(shot, os.environ["CONSOLE_SCREENSHOT"])
