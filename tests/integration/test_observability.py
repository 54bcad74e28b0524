"""Metrics and audit trail on the end-to-end stack: a phantom head CT goes Orthanc -> node ->
Celery worker -> Orthanc, then Prometheus's view is scraped through real HTTP from the running
node and its audit trail is read.

The stack is shared with the other end-to-end tests, so counters are compared before and after
this study, and audit records are picked by this study's UIDs.
"""
from __future__ import annotations

import json
import time

import pydicom
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.observability.ledger_metrics import STAGES

pytestmark = [pytest.mark.network, pytest.mark.slow]


def scrape(base: str) -> dict[str, dict[tuple, float]]:
    response = requests.get(base + "/metrics", timeout=30)  # no token: Prometheus scrapes without one
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_a_study_through_the_stack_shows_in_metrics_and_the_audit_trail(stack, make_ct):
    base = stack.console_url
    before = scrape(base)
    job, files, uids = stack.deliver_with_worker(make_ct)

    after = scrape(base)
    grew = lambda name, **labels: get(after, name, **labels) - get(before, name, **labels)  # noqa: E731
    assert grew("dural_instances_received_total") >= len(files)
    assert grew("dural_associations_total", result="accepted") >= 1
    assert grew("dural_delivery_attempts_total", destination="orthanc", kind="dicom", result="sent") >= 1
    for stage in STAGES:
        if stage != "notification":  # the stack configures no HL7 or webhook receiver
            assert grew("dural_stage_duration_seconds_count", stage=stage) >= 1, stage
    inference = (get(after, "dural_stage_duration_seconds_sum", stage="inference")
                 - get(before, "dural_stage_duration_seconds_sum", stage="inference"))
    assert inference > 0
    assert get(after, "dural_series", state="delivered") >= 1
    assert get(after, "dural_outbox_depth", destination="orthanc", kind="dicom") == 0
    [(labels, value)] = after["dural_model_info"].items()
    assert dict(labels)["version"] == job.result["model"]["version"] and value == 1
    assert get(after, "dural_ledger_readable") == 1

    # Prometheus itself asks for OpenMetrics.
    open_metrics = requests.get(base + "/metrics", timeout=30,
                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF") and "dural_stage_duration_seconds_bucket" in open_metrics.text

    path = stack.data_dir / "audit" / "audit.jsonl"
    deadline = time.time() + 20
    while True:  # the node's loop writes job records on its next pass
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        mine = [r for r in records if r.get("job") == job.id or r.get("series_uid") == uids["series"]]
        if any(r["event"] == "job_delivered" for r in mine) or time.time() > deadline:
            break
        time.sleep(0.2)
    events = [r["event"] for r in mine]
    assert events.count("job_decision") == 1 and events.count("job_delivered") == 1, events
    received = [r for r in mine if r["event"] == "series_received"]
    assert sum(r["instances"] for r in received) == len(files)
    opened = [r for r in records if r["event"] == "association_opened" and r["assoc"] in {x["assoc"] for x in received}]
    assert opened and all(r["calling_ae"] == "ORTHANC" and r["peer"].startswith("127.0.0.1:") for r in opened)
    [result] = [r for r in mine if r["event"] == "job_result"]
    assert result["state"] == "done" and result["findings"]["SDH"]["present"] and result["model_version"]
    assert any(r["event"] == "delivery" and r["destination"] == "orthanc" and r["result"] == "sent" for r in mine)

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    text = path.read_text()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate"):
        value = str(ds.get(keyword, ""))
        assert value and value not in text, f"{keyword} in the audit trail"
