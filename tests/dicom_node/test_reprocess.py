"""Reprocess planning and its ledger bookkeeping, without a network (the runs against Orthanc are
in tests/integration/test_reprocess.py)."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from dicom_node.config import ConfigError, SeriesConfig, TextRules, parse_config
from dicom_node.ledger import JobState, Ledger
from dicom_node.ledger.reprocessing import QUEUED, RETRIEVING
from dicom_node.reprocess import ModelIdentity, Params, header_problem, in_hours
from dicom_node.reprocess.plan import decide

HEAD = SeriesConfig(include=TextRules(body_part_examined=["HEAD|BRAIN"]))
MODEL = ModelIdentity("2.1", "cd" * 32)


@pytest.mark.parametrize("hours,clock,inside", [
    (None, "12:00", True),
    ("20:00-06:00", "21:30", True), ("20:00-06:00", "05:59", True), ("20:00-06:00", "06:00", False),
    ("20:00-06:00", "12:00", False), ("01:00-05:00", "03:00", True), ("01:00-05:00", "00:59", False),
])
def test_hours_window_may_wrap_midnight(hours, clock, inside):
    now = dt.datetime.combine(dt.date(2026, 1, 5), dt.time.fromisoformat(clock))
    assert in_hours(hours, now) is inside


@pytest.mark.parametrize("series,reason", [
    ({"Modality": "CT", "BodyPartExamined": "HEAD", "NumberOfSeriesRelatedInstances": 30}, None),
    ({"Modality": "MR", "BodyPartExamined": "HEAD"}, "modality must be CT; got MR"),
    ({"Modality": "CT", "BodyPartExamined": "CHEST"}, "BodyPartExamined matches none of series.include"),
    ({"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Scout"}, "excluded by series.exclude"),
    ({"Modality": "CT", "BodyPartExamined": "HEAD", "NumberOfSeriesRelatedInstances": 3}, "too few slices: 3"),
])
def test_eligibility_from_query_attributes(series, reason):
    problem = header_problem(series, {"StudyDescription": "CT HEAD"}, HEAD)
    assert problem == reason if reason is None else reason in problem


@pytest.mark.parametrize("kwargs,message", [
    ({}, "since must be given"),
    ({"since": dt.date(2026, 2, 1), "until": dt.date(2026, 1, 1)}, "until must not be before since"),
    ({"since": dt.date(2026, 2, 1), "limit": 0}, "limit must be at least 1"),
])
def test_ill_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Params(source="pacs", **kwargs)


def test_params_key_identifies_a_run_without_its_accession_numbers():
    a = Params(source="pacs", accessions=("A1", "A2"))
    assert a.key == Params(source="pacs", accessions=("A1", "A2")).key != Params(source="pacs", accessions=("A1",)).key
    assert a.key != Params(source="pacs", accessions=("A1", "A2"), force=True).key
    assert "A1" not in a.key


def test_reprocess_source_must_be_a_destination(tmp_path):
    with pytest.raises(ConfigError, match="reprocess.source must be one of the names"):
        parse_config({"node": {"data_dir": str(tmp_path)}, "reprocess": {"source": "nowhere"}})
    with pytest.raises(ConfigError, match="HH:MM-HH:MM"):
        parse_config({"node": {"data_dir": str(tmp_path)}, "reprocess": {"hours": "night"}})


def _analysed_job(ledger: Ledger, series: str, version: str, sha: str, state: JobState = JobState.DONE) -> int:
    ledger.record_instance(f"{series}.1", "1.2", series, "1.2.840.10008.5.1.4.1.1.2", f"spool/{series}.1", None)
    job = ledger.latest_job(series)
    assert job is not None
    for step in (JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job.id, step)
    ledger.transition(job.id, state, result={"model": {"version": version, "weights_sha256": sha}, "files": []},
                      reason=None if state == JobState.DONE else "why")
    return job.id


def test_decisions_from_the_ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    same = _analysed_job(ledger, "1.1", "2.1", "cd" * 32)
    _analysed_job(ledger, "1.2", "2.0", "ab" * 32)
    _analysed_job(ledger, "1.3", "2.1", "cd" * 32, JobState.FAILED)
    ledger.record_instance("1.4.1", "1.2", "1.4", "1.2.840.10008.5.1.4.1.1.2", "spool/1.4.1", None)
    assert decide(ledger, "1.1", MODEL, force=False)["state"] == "already_done"
    assert decide(ledger, "1.1", MODEL, force=True) == {"action": "redo", "state": "found", "previous_job_id": same,
                                                         "reason": "--force"}
    assert decide(ledger, "1.2", MODEL, force=False)["reason"] == "analysed by model version 2.0; now 2.1"
    assert decide(ledger, "1.3", MODEL, force=False)["action"] == "redo"
    assert decide(ledger, "1.4", MODEL, force=False)["action"] == "follow"
    assert decide(ledger, "9.9", MODEL, force=False)["action"] == "retrieve"


def test_reopen_is_done_once_and_supersedes(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    old = _analysed_job(ledger, "1.1", "2.0", "ab" * 32)
    run, resumed = ledger.open_reprocess_run("k", "pacs", {"force": False})
    assert not resumed and ledger.open_reprocess_run("k", "pacs", {})[0].id == run.id
    ledger.add_reprocess_series(run.id, [{"series_uid": "1.1", "study_uid": "1.2", "ordinal": 0, "action": "redo",
                                          "state": "found", "previous_job_id": old}])
    new = ledger.reopen_series(run.id, "1.1", old)
    assert ledger.reopen_series(run.id, "1.1", old) == new  # a resumed run makes no second job
    assert ledger.job(old).superseded_by == new and ledger.job(old).state == JobState.DONE
    job = ledger.job(new)
    assert (job.state, job.lane) == (JobState.RECEIVED, "batch") and ledger.instance_count(new) == 1
    [item] = ledger.reprocess_items(run.id)
    assert (item.state, item.job_id) == (QUEUED, new)
    assert ledger.stat_work_waiting() == 0  # the batch job does not hold batch retrieval up


def test_series_being_retrieved_opens_its_job_in_the_batch_lane(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    run, _ = ledger.open_reprocess_run("k", "pacs", {})
    ledger.add_reprocess_series(run.id, [{"series_uid": "2.1", "study_uid": "2", "ordinal": 0, "action": "retrieve",
                                          "state": "found"}])
    ledger.set_reprocess_item(run.id, "2.1", RETRIEVING)
    ledger.record_instance("2.1.1", "2", "2.1", "1.2.840.10008.5.1.4.1.1.2", "spool/x", None)
    ledger.record_instance("3.1.1", "3", "3.1", "1.2.840.10008.5.1.4.1.1.2", "spool/y", None)
    assert ledger.latest_job("2.1").lane == "batch" and ledger.latest_job("3.1").lane is None
    assert ledger.stat_work_waiting() == 1  # the series a modality sent
    assert json.loads(json.dumps(ledger.reprocess_run(run.id).params)) == {}
