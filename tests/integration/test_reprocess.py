"""`dicom-node reprocess` against Orthanc as the query/retrieve PACS, with the node and a worker
running: dry run, skip and redo by model version, a run killed with SIGKILL and resumed, and the
C-GET fallback when the PACS does not know the node's AE title (0xA801).

Orthanc here holds the studies and does not forward anything by itself (no Lua): every series
the node analyses reaches it because the run retrieved it.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Proc, Stack, wait_until

pytestmark = [pytest.mark.network, pytest.mark.slow]
BIN = Path(sys.executable).parent
WINDOW = ["--since", "2026-01-01", "--until", "2026-01-31"]
#: name -> (study date, extra header attributes); A..E are in the window, F is fetched alone.
STUDIES = {
    "A": ("20260110", {}),  # new head CT
    "B": ("20260111", {}),  # analysed before by the current model: skipped
    "C": ("20260112", {}),  # analysed before by an older model version: analysed again
    "D": ("20260113", {"Modality": "MR"}),  # not CT: not found by the CT query
    "E": ("20260114", {"BodyPartExamined": "CHEST"}),  # CT of another body part: not eligible
    "F": ("20260301", {}),  # outside the window: the C-GET fallback test
}


@pytest.fixture(scope="module")
def qr_stack(tmp_path_factory: pytest.TempPathFactory, weights: Path):
    root = tmp_path_factory.mktemp("reprocess")
    stack = Stack(root, weights)
    orthanc = json.loads(stack.orthanc.config.read_text())
    orthanc.pop("LuaScripts")
    # Any calling AE may query and retrieve: the fallback test calls with an AE Orthanc does not know.
    orthanc.update(DicomAlwaysAllowFind=True, DicomAlwaysAllowMove=True, DicomAlwaysAllowGet=True)
    stack.orthanc.config.write_text(json.dumps(orthanc, indent=1))
    node = yaml.safe_load(stack.config_path.read_text())
    node["series"]["include"] = {"body_part_examined": ["HEAD|BRAIN|SKULL"]}
    node["reprocess"] = {"studies_per_minute": 20, "max_concurrent_retrieves": 1, "stat_poll_s": 0.5,
                         "wait_s": 900}
    stack.config_path.write_text(yaml.safe_dump(node))
    try:
        stack.start_redis()
        stack.orthanc.start()
        stack.start_node()
        stack.start_worker()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def studies(qr_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    import pydicom

    from segmenter.synthetic import PhantomRanges, make_phantom, write_phantom_series

    ranges = replace(PhantomRanges.training(), size=(256, 256), pixel_spacing_mm=(0.86, 0.98), n_slices=(20, 20))
    out: dict[str, dict[str, str]] = {}
    for n, (name, (date, extra)) in enumerate(STUDIES.items()):
        folder = tmp_path_factory.mktemp(f"study{name}")
        written = write_phantom_series(make_phantom(300 + n, kind="sdh", ranges=ranges), folder,
                                       extra={"StudyDate": date, "AccessionNumber": f"ACC{name}", **extra})
        qr_stack.orthanc.upload(list(written["dicom"]))
        ds = pydicom.dcmread(written["dicom"][0], stop_before_pixels=True)
        out[name] = {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
                     "files": str(len(written["dicom"]))}
    return out


def reprocess(stack: Stack, *args: str, config: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    run = subprocess.run([str(BIN / "dicom-node"), "--config", str(config or stack.config_path), "reprocess",
                          "--source", "orthanc", *args], capture_output=True, text=True, timeout=timeout)
    return run


def jobs_of(stack: Stack, series_uid: str):
    return [j for j in stack.ledger.jobs() if j.series_uid == series_uid]


def items(stack: Stack) -> list[dict]:
    with sqlite3.connect(stack.data_dir / "ledger.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM reprocess_series ORDER BY run_id, ordinal")]


def test_dry_run_lists_the_work_and_changes_nothing(qr_stack, studies):
    run = reprocess(qr_stack, *WINDOW, "--dry-run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dry run: 4 series found" in run.stdout  # A, B, C, E; D is MR
    assert run.stdout.count("  retrieve  ") == 3 and "series.include.body_part_examined" in run.stdout
    assert qr_stack.ledger.jobs() == [] and items(qr_stack) == []
    assert "ACC" not in run.stdout + run.stderr  # accession numbers are not printed


def test_accession_list_seeds_earlier_analyses(qr_stack, studies, tmp_path):
    accessions = tmp_path / "accessions.txt"
    accessions.write_text("ACCB\nACCC\n")
    run = reprocess(qr_stack, "--accessions", str(accessions))
    assert run.returncode == 0, run.stdout + run.stderr
    for name in "BC":
        [job] = jobs_of(qr_stack, studies[name]["series"])
        assert job.state in ("done", "delivered") and job.lane == "batch" and job.submissions == 1
    # C was analysed by an older version of the model, as far as the ledger knows.
    [job_c] = jobs_of(qr_stack, studies["C"]["series"])
    outcome = dict(job_c.worker_outcome)
    outcome["model"] = {**outcome["model"], "version": "0.9-old", "weights_sha256": "ab" * 32}
    with sqlite3.connect(qr_stack.data_dir / "ledger.sqlite3") as db:
        db.execute("UPDATE jobs SET worker_outcome_json=? WHERE id=?", (json.dumps(outcome), job_c.id))


def test_killed_run_resumes_skips_done_and_redoes_older_model(qr_stack, studies):
    before = {name: [j.id for j in jobs_of(qr_stack, s["series"])] for name, s in studies.items()}
    first = Proc([str(BIN / "dicom-node"), "--config", str(qr_stack.config_path), "reprocess", "--source",
                  "orthanc", *WINDOW], qr_stack.root / "reprocess-killed.log")
    try:
        # Kill it once the first series is handed to the node, while the rest wait for their turn.
        wait_until(lambda: any(i["state"] == "queued" for i in items(qr_stack) if i["run_id"] > 1), 300,
                   "the first series of the window run to be queued")
    finally:
        first.kill()
    window_items = [i for i in items(qr_stack) if i["run_id"] > 1]
    assert any(i["state"] in ("found", "retrieving") for i in window_items), window_items  # halfway

    run = reprocess(qr_stack, *WINDOW)
    assert run.returncode == 0, run.stdout + run.stderr + first.log()
    assert "(resumed): finished" in run.stdout, run.stdout
    table = {line[:40].strip(): int(line[40:]) for line in run.stdout.splitlines()[1:] if not line.startswith("      ")}
    # Found: A, B, C, E and the result series (SEG, SR, KO, OT) the accession run sent back into B
    # and C; everything but the three head CTs is not eligible.
    assert table["found"] - table["not eligible (query)"] == 3 and table["already done"] == 1, run.stdout
    assert "1 x BodyPartExamined matches none" in run.stdout and "x modality must be CT; got SEG" in run.stdout
    assert table["retrieved"] == 1 and table["analysed again from the node's copy"] == 1, run.stdout  # A; C
    assert table["analysed"] == 2 and table["failed"] == table["not analysed"] == table["pending"] == 0, run.stdout
    by_series = {i["series_uid"]: i for i in items(qr_stack) if i["run_id"] > 1}
    assert by_series[studies["B"]["series"]]["state"] == "already_done"
    assert by_series[studies["E"]["series"]]["state"] == "ineligible"
    assert studies["D"]["series"] not in by_series
    # A: retrieved once and analysed once; B untouched; C analysed again, superseding job 1.
    [job_a] = jobs_of(qr_stack, studies["A"]["series"])
    assert job_a.lane == "batch" and job_a.submissions == 1 and by_series[studies["A"]["series"]]["state"] == "analysed"
    assert [j.id for j in jobs_of(qr_stack, studies["B"]["series"])] == before["B"]
    old_c, new_c = jobs_of(qr_stack, studies["C"]["series"])
    assert old_c.id == before["C"][0] and old_c.superseded_by == new_c.id
    assert new_c.lane == "batch" and new_c.submissions == 1 and by_series[studies["C"]["series"]]["state"] == "analysed"
    assert jobs_of(qr_stack, studies["D"]["series"]) == jobs_of(qr_stack, studies["E"]["series"]) == []
    # The results went back to the PACS through the outbox.
    for job in (job_a, new_c):
        done = qr_stack.wait_state(job.series_uid, {"delivered"}, timeout=120)
        for f in done.result["files"]:
            assert qr_stack.orthanc.count_sop(f["sop_instance_uid"]) == 1
    # Run again: everything is done now.
    again = reprocess(qr_stack, *WINDOW)
    assert again.returncode == 0 and "(resumed)" not in again.stdout
    assert len(jobs_of(qr_stack, studies["A"]["series"])) == 1


def test_unknown_move_destination_says_what_to_configure_and_falls_back_to_c_get(qr_stack, studies, tmp_path):
    config = yaml.safe_load(qr_stack.config_path.read_text())
    config["node"]["ae_title"] = "NOT_KNOWN"
    path = tmp_path / "unknown.yaml"
    path.write_text(yaml.safe_dump(config))
    accessions = tmp_path / "f.txt"
    accessions.write_text("ACCF\n")
    run = reprocess(qr_stack, "--accessions", str(accessions), config=path)
    assert run.returncode == 0, run.stdout + run.stderr
    # Orthanc 1.10 answers 0xC000 with no sub-operation, where the standard says 0xA801.
    assert "C-MOVE refused by ORTHANC" in run.stderr and "0xA801" in run.stderr, run.stderr
    assert "does not know this node's AE title 'NOT_KNOWN'" in run.stderr and "fetched with C-GET" in run.stderr
    [item] = [i for i in items(qr_stack) if i["series_uid"] == studies["F"]["series"]]
    assert item["method"] == "get" and item["state"] == "analysed"
    [job] = jobs_of(qr_stack, studies["F"]["series"])
    assert job.lane == "batch" and job.submissions == 1
