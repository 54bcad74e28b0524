"""No patient identifiers in the logs: a study with distinctive identifiers goes through the whole
node (Orthanc forwards it, the node receives it, a Celery worker analyses it, the results go back
to Orthanc, the RIS gets an HL7 ORU and the on-call system a webhook), and every line the node and
the worker logged (INFO and above, as in production) is searched for each identifier."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from tests.integration.conftest import Stack, wait_until
from tests.notify_peers import MllpListener, WebhookReceiver

pytestmark = [pytest.mark.network, pytest.mark.slow]

SECRET = "phi-test-secret"
#: Each identifier, and the parts a log line could carry on their own.
IDENTIFIERS = {
    "PatientName": "Quxbrindle^Yselda^Marwen",
    "PatientID": "MRN-5501-QX77",
    "PatientBirthDate": "19270311",
    "AccessionNumber": "ACC-QZ-880214",
    "ReferringPhysicianName": "Vexhollow^Thaddeus",
}
FRAGMENTS = ("Quxbrindle", "Yselda", "Marwen", "5501-QX77", "1927-03-11", "19270311", "QZ-880214", "Vexhollow",
             "Thaddeus")


def _stamp(paths: list[Path]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)


def test_no_identifier_in_any_log_line(tmp_path_factory, weights, make_ct) -> None:  # type: ignore[no-untyped-def]
    files, uids = make_ct("sdh")
    _stamp(files)
    root = tmp_path_factory.mktemp("phi")
    every = ["critical", "positive", "negative", "not_analysed", "failed"]
    with pytest.MonkeyPatch.context() as env, MllpListener() as ris, WebhookReceiver(SECRET.encode()) as oncall:
        env.setenv("DURAL_WEBHOOK_SECRET", SECRET)
        stack = Stack(root, weights)
        config = yaml.safe_load(stack.config_path.read_text())
        config["notify"] = {
            "hl7": [{"name": "ris", "host": "127.0.0.1", "port": ris.port, "on": every}],
            "webhooks": [{"name": "oncall", "url": oncall.url, "secret_env": "DURAL_WEBHOOK_SECRET", "on": every}],
        }
        config["logging"] = {"level": "INFO"}
        stack.config_path.write_text(yaml.safe_dump(config))
        try:
            stack.start_redis()
            stack.orthanc.start()
            stack.start_node()
            stack.start_worker("prefork")
            stack.orthanc.upload(files)
            job = stack.wait_state(uids["series"], {"delivered"}, timeout=240)
            wait_until(lambda: ris.received and oncall.received, 60, "the HL7 message and the webhook")
            stack.assert_delivered_once(job, uids["study"], len(files))
        finally:
            stack.close()
    # The identifiers did travel: the RIS got them, and the results in the PACS carry them.
    er7 = ris.received[0].er7
    assert IDENTIFIERS["PatientID"] in er7 and IDENTIFIERS["AccessionNumber"] in er7
    assert oncall.received[0].doc["accession_number"] == IDENTIFIERS["AccessionNumber"]
    logs = {path.name: path.read_text(errors="replace") for path in [root / "node.log", *root.glob("worker*.log")]}
    assert len(logs) == 2 and all(logs.values()), list(logs)
    assert 'msg="series complete"' in logs["node.log"] and "job finished" in logs["worker1.log"]
    for name, text in logs.items():
        lines = text.splitlines()
        assert not any("level=debug" in line for line in lines), f"{name} has DEBUG lines at level INFO"
        for fragment in FRAGMENTS:
            found = [line for line in lines if fragment in line]
            assert not found, f"{fragment!r} in {name}: {found[0][:300]}"
