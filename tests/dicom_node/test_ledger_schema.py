"""Ledger schema versions: a ledger written before versioning opens, is upgraded and keeps its data."""
from __future__ import annotations

import json
import sqlite3

import pytest

from dicom_node.ledger import SCHEMA_VERSION, JobState, Ledger, SchemaError

T0 = 1_700_000_000.0
#: The layout of ledgers written before the schema carried a version (user_version 0).
UNVERSIONED = """
CREATE TABLE associations (id TEXT PRIMARY KEY, calling_ae TEXT, opened_at REAL NOT NULL, closed_at REAL);
CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, assoc_id TEXT, received_at REAL NOT NULL, job_id INTEGER);
CREATE INDEX instances_series ON instances(series_uid);
CREATE INDEX instances_job ON instances(job_id);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    state TEXT NOT NULL, outcome TEXT, fail_stage TEXT, reason TEXT, lane TEXT,
    submissions INTEGER NOT NULL DEFAULT 0, task_id TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, last_instance_at REAL NOT NULL, superseded_by INTEGER, result_json TEXT);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_series ON jobs(series_uid);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, state TEXT NOT NULL,
    at REAL NOT NULL, detail TEXT);
CREATE INDEX events_job ON events(job_id);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, destination TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_error TEXT, updated_at REAL NOT NULL, UNIQUE(job_id, destination));
CREATE TABLE instance_headers (sop_uid TEXT PRIMARY KEY, read_at REAL NOT NULL, error TEXT,
    summary_json TEXT NOT NULL);
"""
FILES = [{"type": "sr", "path": "results/2/sr.dcm", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
          "sop_instance_uid": "1.2.3.4", "series_uid": "1.2.3"}]
#: (state, result_json as the old code wrote it, with the typed fields it must become)
OLD_JOBS = [
    ("not_analysed", {"status_report": True, "series_kind": "ct_image", "instances": 13},
     {"series_kind": "ct_image", "status_report": True, "assessed_instances": 13, "files": None,
      "worker_outcome": None, "report_error": None}),
    ("done", {"format": 1, "state": "done", "files": FILES, "findings": {"SDH": {"present": True}},
              "worker": "host:12", "job_id": 2},
     {"series_kind": None, "status_report": None, "files": FILES, "report_error": None,
      "worker_outcome": {"format": 1, "state": "done", "findings": {"SDH": {"present": True}}, "worker": "host:12",
                         "job_id": 2}}),
    ("failed", {"files": [], "report_error": "status report task lost"},
     {"files": [], "worker_outcome": None, "report_error": "status report task lost"}),
    ("not_analysed", {"status_report": False, "series_kind": "other", "instances": 1, "files": []},
     {"series_kind": "other", "status_report": False, "files": [], "worker_outcome": None}),
    ("received", None, {"files": None, "worker_outcome": None, "series_kind": None}),
]


def unversioned_ledger(path) -> None:
    db = sqlite3.connect(path)
    db.executescript(UNVERSIONED)
    for n, (state, result, _) in enumerate(OLD_JOBS, start=1):
        db.execute("INSERT INTO jobs(series_uid, study_uid, state, created_at, updated_at, last_instance_at, "
                   "result_json) VALUES (?,?,?,?,?,?,?)", (f"1.2.{n}", "1.2", state, T0, T0, T0,
                                                           None if result is None else json.dumps(result)))
        db.execute("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?)",
                   (f"1.2.{n}.1", f"1.2.{n}", "1.2", "1.2.840.10008.5.1.4.1.1.2", f"/s/{n}.dcm", None, T0, n))
    db.commit()
    db.close()


def columns(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return [tuple(r) for r in db.execute("PRAGMA table_info(jobs)")]


def version(path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_unversioned_ledger_is_upgraded_and_keeps_its_data(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    unversioned_ledger(path)
    assert version(path) == 0
    ledger = Ledger(path)
    assert version(path) == SCHEMA_VERSION
    assert "result_json" not in {c[1] for c in columns(path)}
    for job, (state, old, typed) in zip(ledger.jobs(), OLD_JOBS):
        assert job.state == JobState(state) and ledger.instance_count(job.id) == 1
        for name, value in typed.items():
            assert getattr(job, name) == value, (job.id, name)
        assert job.result == old  # everything the old bag held is still there
    # Jobs whose status report is still to be settled: only those without recorded files.
    assert [j.id for j in ledger.jobs_awaiting_report([JobState.NOT_ANALYSED, JobState.FAILED])] == [1]
    ledger.close()


def test_upgraded_and_new_ledgers_have_the_same_tables(tmp_path):
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    unversioned_ledger(old)
    Ledger(old).close()
    Ledger(new).close()
    assert columns(old) == columns(new) and version(new) == SCHEMA_VERSION


def test_opening_again_changes_nothing(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    unversioned_ledger(path)
    first = Ledger(path)
    before = [j.result for j in first.jobs()]
    first.close()
    second = Ledger(path)
    assert version(path) == SCHEMA_VERSION and [j.result for j in second.jobs()] == before
    second.close()


def test_newer_ledger_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match=f"schema version must be at most {SCHEMA_VERSION}; got {SCHEMA_VERSION + 1}"):
        Ledger(path)
