"""Re-analysing a failed job in the ledger: back to complete with the failure's traces cleared,
its status SR delivery no obstacle to the re-run's, and refused with a reason where it cannot be."""
from __future__ import annotations

import argparse

import pytest

from dicom_node.commands import retry
from dicom_node.config import parse_config
from dicom_node.contract import STARTS_FILE, job_dir
from dicom_node.ledger import DeliveryState, FailStage, JobState, Ledger, ReanalysisRefused
from dicom_node.names import HEARTBEAT_FILE, LEDGER_FILE, OUTCOME_FILE
from dicom_node.reanalysis import reanalyse

T0 = 1_700_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = [{"type": "sr", "path": "results/1/status.dcm"}]


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


def failed_job(ledger: Ledger, series: str = "1.2.3", report_sent: bool = True) -> int:
    """A job whose analysis failed at load, with its status SR settled and (by default) delivered."""
    ledger.record_instance(f"{series}.1", "1.2", series, CT, f"spool/{series}/1.dcm", None, now=T0)
    job = ledger.jobs()[-1].id
    ledger.transition(job, JobState.COMPLETE, now=T0 + 1)
    ledger.mark_submitted(job, "task-1", "stat", now=T0 + 2)
    ledger.transition(job, JobState.FAILED, reason="the model could not be loaded", fail_stage=FailStage.LOAD,
                      result={"files": [], "worker": "w1"}, now=T0 + 3)
    ledger.report_requested(job, "report-1")
    ledger.settle_report(job, SR, now=T0 + 4, detail="status report: 1 file(s)")
    ledger.add_deliveries(job, ["pacs"], now=T0 + 4)
    if report_sent:
        ledger.delivery_attempted(ledger.deliveries(job)[0].id, ok=True, now=T0 + 5)
    return job


def test_a_failed_job_with_its_status_report_delivered_is_analysed_and_delivered_again(ledger, tmp_path):
    job = failed_job(ledger)
    assert ledger.job(job).state == JobState.DELIVERED and ledger.job(job).reanalysable
    folder = job_dir(tmp_path, job)
    folder.mkdir(parents=True)
    for name in (OUTCOME_FILE, HEARTBEAT_FILE, STARTS_FILE, "status.dcm"):
        (folder / name).write_text("x")

    again = reanalyse(ledger, tmp_path, job, "alice", now=T0 + 10)

    assert again.state == JobState.COMPLETE and again.outcome is None and again.reason is None
    assert again.fail_stage is None and again.files is None and again.worker_outcome is None
    assert again.submissions == 0 and again.report_attempts == 0 and again.report_task_id is None
    assert ledger.deliveries(job) == []
    assert sorted(p.name for p in folder.iterdir()) == ["status.dcm"]  # result objects stay; run state goes
    assert ledger.events(job)[-1] == ("complete", T0 + 10,
                                      "re-analysis requested by alice; 1 earlier delivery of the failure cleared")
    assert ledger.jobs_awaiting_report([JobState.FAILED]) == []
    # The scheduler's path for a new series: submitted, done, one new delivery, delivered.
    assert ledger.mark_submitted(job, "task-2", "stat", now=T0 + 11)
    assert ledger.job(job).submissions == 1
    assert ledger.transition(job, JobState.DONE, result={"files": [{"type": "seg", "path": "x"}]},
                             expect=[JobState.QUEUED, JobState.RUNNING], now=T0 + 12)
    ledger.add_deliveries(job, ["pacs"], now=T0 + 12)
    (delivery,) = ledger.deliveries(job)
    assert delivery.state == DeliveryState.PENDING and delivery.attempts == 0
    ledger.delivery_attempted(delivery.id, ok=True, now=T0 + 13)
    done = ledger.job(job)
    assert done.state == JobState.DELIVERED and done.outcome == "done" and done.files == [{"type": "seg", "path": "x"}]


def test_a_failed_job_whose_report_is_pending_loses_that_delivery(ledger, tmp_path):
    job = failed_job(ledger, report_sent=False)
    assert ledger.job(job).state == JobState.FAILED
    reanalyse(ledger, tmp_path, job, "bob", now=T0 + 10)
    assert ledger.job(job).state == JobState.COMPLETE and ledger.deliveries(job) == []
    assert ledger.due_deliveries(T0 + 100) == []


def test_refused_for_jobs_that_did_not_fail_were_purged_or_are_unknown(ledger, tmp_path):
    failed = failed_job(ledger, "1.2.3")
    ledger.record_instance("1.2.4.1", "1.2", "1.2.4", CT, "spool/1.2.4/1.dcm", None, now=T0)
    other = ledger.jobs()[-1].id
    with pytest.raises(ReanalysisRefused, match=f"job {other} is received; only a failed job"):
        reanalyse(ledger, tmp_path, other, "carol")
    ledger.purge_job(failed, lambda job_id, paths: None, now=T0 + 20)
    folder = job_dir(tmp_path, failed)
    folder.mkdir(parents=True)
    (folder / OUTCOME_FILE).write_text("x")
    with pytest.raises(ReanalysisRefused, match="purged by retention"):
        reanalyse(ledger, tmp_path, failed, "carol")
    assert (folder / OUTCOME_FILE).exists()  # nothing touched when refused
    assert ledger.job(failed).state == JobState.DELIVERED
    with pytest.raises(KeyError):
        reanalyse(ledger, tmp_path, 999, "carol")


def test_the_retry_command_reanalyses_or_says_why_not(tmp_path, capsys):
    cfg = parse_config({"node": {"data_dir": str(tmp_path)}})
    ledger = Ledger(tmp_path / LEDGER_FILE)
    try:
        job = failed_job(ledger)
    finally:
        ledger.close()
    assert cli_main(["retry", "--reanalyse", str(job)], cfg) == 0
    assert f"job {job} queued for re-analysis" in capsys.readouterr().out
    assert cli_main(["retry", "--reanalyse", str(job)], cfg) == 1
    assert f"job {job} is complete; only a failed job can be re-analysed" in capsys.readouterr().out
    assert cli_main(["retry", "--reanalyse", "999"], cfg) == 1
    assert "job 999 is not in the ledger" in capsys.readouterr().out
    ledger = Ledger(tmp_path / LEDGER_FILE)
    try:
        assert ledger.events(job)[-1][2].startswith("re-analysis requested by ")
        assert "command line" in ledger.events(job)[-1][2].split(";")[0]
    finally:
        ledger.close()


def cli_main(argv: list[str], cfg) -> int:
    """``dicom-node retry ...`` through its own parser and ``run``, on ``cfg``."""
    parser = argparse.ArgumentParser()
    retry.add_arguments(parser)
    return retry.run(parser.parse_args(argv[1:]), cfg)
