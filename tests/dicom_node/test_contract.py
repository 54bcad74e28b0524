"""The job contract: manifests and outcomes round-trip, and anything else is refused."""
from __future__ import annotations

import json

import pytest

from dicom_node.contract import (
    FORMAT, MANIFEST_FILE, Manifest, ManifestError, Outcome, heartbeat_age, job_dir, manifest_ref, read_manifest,
    read_outcome, write_manifest, write_outcome,
)
from dicom_node.names import HEARTBEAT_FILE, OUTCOME_FILE

MANIFEST = Manifest(job_id=7, series_uid="1.2.3", study_uid="1.2", instances=("spool/a.dcm", "spool/b.dcm"))
FILES = ({"type": "sr", "path": "results/7/sr.dcm", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
          "sop_instance_uid": "1.2.9", "series_uid": "1.2.8"},)


def test_manifest_written_where_the_task_finds_it(tmp_path):
    (job_dir(tmp_path, 7)).mkdir(parents=True)
    (job_dir(tmp_path, 7) / HEARTBEAT_FILE).write_text("old run")
    assert write_manifest(tmp_path, MANIFEST) == manifest_ref(7) == f"results/7/{MANIFEST_FILE}"
    assert read_manifest(tmp_path / manifest_ref(7)) == MANIFEST
    assert not (job_dir(tmp_path, 7) / HEARTBEAT_FILE).exists()  # would read as "running"


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "train"}, "mode must be one of"),
    ({"mode": "report", "state": "done"}, "must state failed or not_analysed"),
    ({"instances": ("/abs/a.dcm",)}, "relative to data_dir"),
    ({"instances": ("../a.dcm",)}, "relative to data_dir"),
])
def test_ill_manifests(kwargs, words):
    with pytest.raises(ManifestError, match=words):
        Manifest(**{"job_id": 1, "series_uid": "1", "study_uid": "1", "instances": ("a.dcm",), **kwargs})


def test_manifest_of_another_format_is_refused(tmp_path):
    path = tmp_path / MANIFEST_FILE
    path.write_text(json.dumps({**MANIFEST.to_dict(), "format": FORMAT + 1}))
    with pytest.raises(ManifestError, match=f"format must be {FORMAT}"):
        read_manifest(path)


def test_outcome_round_trip_leaves_unset_optional_keys_out(tmp_path):
    outcome = Outcome(state="done", files=FILES, findings={"SDH": {"present": True}}, excluded_components=(),
                      job_id=7, manifest_digest=MANIFEST.digest)
    doc = outcome.to_dict()
    assert doc["format"] == FORMAT and doc["files"] == [dict(FILES[0])] and doc["excluded_components"] == []
    assert "preview" not in doc and "inference_timings" not in doc
    write_outcome(tmp_path, outcome)
    assert read_outcome(tmp_path) == outcome and read_outcome(tmp_path, MANIFEST) == outcome
    other = Manifest(job_id=7, series_uid="1.2.3", study_uid="1.2", instances=("spool/a.dcm",))
    assert read_outcome(tmp_path, other) is None  # made for another manifest


@pytest.mark.parametrize("doc", [
    {"format": FORMAT, "state": "running"},
    {"format": FORMAT + 1, "state": "done"},
    {"format": FORMAT, "state": "done", "files": 3},
    ["not", "a", "mapping"],
])
def test_ill_outcomes_are_not_read(tmp_path, doc):
    (tmp_path / OUTCOME_FILE).write_text(json.dumps(doc))
    assert read_outcome(tmp_path) is None


def test_heartbeat_age(tmp_path):
    assert heartbeat_age(tmp_path, 100.0) is None
    (tmp_path / HEARTBEAT_FILE).write_text("h 1")
    mtime = (tmp_path / HEARTBEAT_FILE).stat().st_mtime
    assert heartbeat_age(tmp_path, mtime + 5) == pytest.approx(5)
