"""The ledger: forward-only job states, supersede, the durable outbox, header cache."""
from __future__ import annotations

import threading

import pytest

from dicom_node.ledger import DeliveryState, FailStage, JobState, Ledger, TransitionError

T0 = 1_700_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


def new_job(ledger: Ledger, series: str = "1.2.3", n: int = 1, assoc: str | None = None, now: float = T0) -> int:
    for k in range(n):
        ledger.record_instance(f"{series}.{k}.{now}", "1.2", series, CT, f"/spool/{series}/{k}.dcm", assoc, now=now)
    return ledger.jobs()[-1].id


def test_record_instance_groups_by_series_and_ignores_duplicates(ledger):
    assert ledger.record_instance("1.1", "1.2", "1.3", CT, "/a", None, now=T0)
    assert not ledger.record_instance("1.1", "1.2", "1.3", CT, "/a", None, now=T0 + 1)
    assert ledger.record_instance("1.4", "1.2", "1.3", CT, "/b", None, now=T0 + 2)
    assert ledger.record_instance("1.5", "1.2", "1.6", CT, "/c", None, now=T0 + 2)
    jobs = ledger.jobs()
    assert [ledger.instance_count(j.id) for j in jobs] == [2, 1]
    assert jobs[0].last_instance_at == T0 + 2


FORWARD = [
    (JobState.RECEIVED, JobState.COMPLETE),
    (JobState.RECEIVED, JobState.NOT_ANALYSED),
    (JobState.COMPLETE, JobState.QUEUED),
    (JobState.QUEUED, JobState.RUNNING),
    (JobState.RUNNING, JobState.DONE),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.DONE, JobState.DELIVERED),
]
BACKWARD = [
    (JobState.COMPLETE, JobState.RECEIVED),
    (JobState.RUNNING, JobState.QUEUED),
    (JobState.DONE, JobState.RUNNING),
    (JobState.DONE, JobState.FAILED),  # same rank: an outcome is never replaced
    (JobState.NOT_ANALYSED, JobState.COMPLETE),
    (JobState.DELIVERED, JobState.DONE),
]
PATH = [JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.DELIVERED]


def move_to(ledger: Ledger, job: int, state: JobState) -> None:
    if state in (JobState.NOT_ANALYSED, JobState.FAILED):
        ledger.transition(job, state, reason="why")
        return
    for step in PATH[1:PATH.index(state) + 1]:
        ledger.transition(job, step)


@pytest.mark.parametrize("start,end", FORWARD)
def test_forward_transitions(ledger, start, end):
    job = new_job(ledger)
    move_to(ledger, job, start)
    assert ledger.transition(job, end, reason="r", now=T0 + 9)
    got = ledger.job(job)
    assert got.state == end and got.updated_at == T0 + 9
    assert ledger.events(job)[-1][:2] == (end.value, T0 + 9)


@pytest.mark.parametrize("start,end", BACKWARD)
def test_backward_transitions_refused(ledger, start, end):
    job = new_job(ledger)
    move_to(ledger, job, start)
    with pytest.raises(TransitionError, match=f"cannot move from {start} to {end}"):
        ledger.transition(job, end)
    assert ledger.job(job).state == start


def test_expect_guards(ledger):
    job = new_job(ledger)
    assert not ledger.transition(job, JobState.QUEUED, expect=[JobState.COMPLETE])
    last = ledger.job(job).last_instance_at
    new_job(ledger, now=T0 + 5)  # one more instance of the same series
    assert not ledger.transition(job, JobState.COMPLETE, expect_last_instance_at=last)
    assert ledger.job(job).state == JobState.RECEIVED
    assert ledger.transition(job, JobState.COMPLETE, expect_last_instance_at=ledger.job(job).last_instance_at)


def test_failure_records_stage_reason_and_outcome(ledger):
    job = new_job(ledger)
    move_to(ledger, job, JobState.RUNNING)
    ledger.transition(job, JobState.FAILED, reason="model file missing", fail_stage=FailStage.LOAD)
    got = ledger.job(job)
    assert (got.state, got.outcome, got.fail_stage, got.reason) == ("failed", "failed", "load", "model file missing")


@pytest.mark.parametrize("state,superseded", [
    (JobState.COMPLETE, True), (JobState.QUEUED, True), (JobState.RUNNING, True),
    (JobState.DONE, False), (JobState.NOT_ANALYSED, False), (JobState.DELIVERED, False),
])
def test_late_instance_opens_new_job(ledger, state, superseded):
    job = new_job(ledger, n=3)
    move_to(ledger, job, state)
    if state == JobState.DONE:
        ledger.add_deliveries(job, ["pacs"])
    new_job(ledger, now=T0 + 50)
    old, new = ledger.job(job), ledger.jobs()[-1]
    assert new.id != job and new.state == JobState.RECEIVED and ledger.instance_count(new.id) == 4
    assert old.superseded_by == new.id
    # An open job's result would be stale: it is superseded. A finished one keeps its outcome.
    assert old.state == (JobState.SUPERSEDED if superseded else state)
    if state == JobState.DONE:
        assert ledger.deliveries(job)[0].state == DeliveryState.PENDING
    # A second late instance joins the new (still received) job.
    new_job(ledger, now=T0 + 51)
    assert len(ledger.jobs()) == 2 and ledger.instance_count(new.id) == 5


def test_superseded_open_job_dead_letters_its_pending_deliveries(ledger):
    job = new_job(ledger)
    move_to(ledger, job, JobState.RUNNING)
    ledger.add_deliveries(job, ["pacs"])
    new_job(ledger, now=T0 + 50)
    assert ledger.deliveries(job)[0].state == DeliveryState.DEAD


def test_requeue_and_submission_count(ledger):
    job = new_job(ledger)
    move_to(ledger, job, JobState.COMPLETE)
    assert ledger.mark_submitted(job, "t1", "stat", now=T0 + 1)
    ledger.transition(job, JobState.RUNNING)
    ledger.requeue(job, "heartbeat stale", now=T0 + 2)
    assert ledger.job(job).state == JobState.COMPLETE
    assert ledger.mark_submitted(job, "t2", "stat", now=T0 + 3)
    got = ledger.job(job)
    assert (got.state, got.submissions, got.task_id) == (JobState.QUEUED, 2, "t2")
    assert "requeued: heartbeat stale" in [e[2] for e in ledger.events(job)]


def test_deliveries_to_delivered_and_retry_dead(ledger):
    job = new_job(ledger)
    move_to(ledger, job, JobState.RUNNING)
    ledger.transition(job, JobState.DONE)
    ledger.add_deliveries(job, ["pacs", "archive"], now=T0)
    ledger.add_deliveries(job, ["pacs"], now=T0)  # idempotent
    pacs, archive = ledger.deliveries(job)
    assert ledger.due_deliveries(T0) == [pacs, archive]
    ledger.delivery_attempted(pacs.id, ok=False, error="0xA700", next_attempt_at=T0 + 10, now=T0 + 1)
    assert [d.id for d in ledger.due_deliveries(T0 + 5)] == [archive.id]
    ledger.delivery_attempted(archive.id, ok=True, now=T0 + 2)
    assert ledger.job(job).state == JobState.DONE  # pacs still pending
    ledger.delivery_attempted(pacs.id, ok=False, error="refused", dead=True, now=T0 + 11)
    assert [d.destination for d in ledger.deliveries(states=[DeliveryState.DEAD])] == ["pacs"]
    assert ledger.due_deliveries(T0 + 1e6) == []
    assert ledger.retry_dead(now=T0 + 20) == 1
    retried = ledger.deliveries(job)[0]
    assert (retried.state, retried.attempts, retried.next_attempt_at) == (DeliveryState.PENDING, 0, T0 + 20)
    ledger.delivery_attempted(pacs.id, ok=True, now=T0 + 21)
    assert ledger.job(job).state == JobState.DELIVERED
    assert ledger.retry_dead() == 0


def test_retry_dead_for_one_job(ledger):
    jobs = [new_job(ledger, series=s) for s in ("1.5", "1.6")]
    for job in jobs:
        move_to(ledger, job, JobState.RUNNING)
        ledger.transition(job, JobState.DONE)
        ledger.add_deliveries(job, ["pacs"])
        ledger.delivery_attempted(ledger.deliveries(job)[0].id, ok=False, dead=True)
    assert ledger.retry_dead(jobs[1]) == 1
    assert [d.state for d in ledger.deliveries()] == [DeliveryState.DEAD, DeliveryState.PENDING]


def test_associations_per_job(ledger):
    ledger.open_association("a1", "SCU", now=T0)
    ledger.open_association("a2", "SCU", now=T0)
    job = new_job(ledger, n=2, assoc="a1")
    ledger.record_instance("9.9", "1.2", "1.3", CT, "/x", "a2", now=T0)  # another series
    assert ledger.open_associations_for_job(job) == 1
    assert ledger.receiver_summary()["open_associations"] == 2
    ledger.close_association("a1")
    assert ledger.open_associations_for_job(job) == 0
    assert ledger.close_all_associations() == 1


def test_interrupted_transfer_is_the_last_association_ending_without_release(ledger):
    ledger.open_association("a1", "SCU", now=T0)
    job = new_job(ledger, n=3, assoc="a1")
    assert ledger.interrupted_transfer(job) is None  # still open
    ledger.close_association("a1", aborted=True)
    assert "aborted after 3 instance(s)" in ledger.interrupted_transfer(job)
    # The sender resent the rest on a new association and released it: complete again.
    ledger.open_association("a2", "SCU", now=T0 + 1)
    ledger.record_instance("1.2.3.rest", "1.2", "1.2.3", CT, "/spool/rest.dcm", "a2", now=T0 + 1)
    ledger.close_association("a2")
    assert ledger.interrupted_transfer(job) is None
    # Open when the node stopped: cut off, so interrupted once the node starts again.
    ledger.open_association("a3", "SCU", now=T0 + 2)
    other = new_job(ledger, series="1.2.4", n=2, assoc="a3", now=T0 + 2)
    assert ledger.close_all_associations() == 1
    assert "aborted after 2 instance(s)" in ledger.interrupted_transfer(other)
    assert ledger.interrupted_transfer(new_job(ledger, series="1.2.5", n=1, assoc=None)) is None  # from a folder


def test_work_in_flight_and_last_association(ledger):
    assert not ledger.has_work_in_flight()
    ledger.open_association("a1", "SCU", now=T0)
    job = new_job(ledger, n=3, assoc="a1")
    assert not ledger.has_work_in_flight()  # still streaming in on an open association
    assert ledger.instances_in_last_association(job) == 3
    ledger.close_association("a1")
    assert ledger.has_work_in_flight()  # released: its completion is due
    ledger.open_association("a2", "SCU", now=T0 + 1)
    ledger.record_instance("1.2.3.late", "1.2", "1.2.3", CT, "/spool/late.dcm", "a2", now=T0 + 1)
    assert ledger.instances_in_last_association(job) == 1 and not ledger.has_work_in_flight()
    ledger.close_association("a2")
    for state in (JobState.COMPLETE, JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job, state)
        assert ledger.has_work_in_flight()
    ledger.transition(job, JobState.DONE)
    assert not ledger.has_work_in_flight()


def test_header_cache(ledger):
    job = new_job(ledger, n=2)
    a, b = sorted(s for s, _ in ledger.instances_without_header())
    ledger.record_header(a, {"modality": "CT"}, now=T0)
    assert [s for s, _ in ledger.instances_without_header()] == [b]
    ledger.record_header(b, {}, error="unreadable DICOM file: x", now=T0)
    rows = ledger.headers_for_job(job)
    assert rows == [{"sop_uid": a, "sop_class_uid": CT, "error": None, "summary": {"modality": "CT"}},
                    {"sop_uid": b, "sop_class_uid": CT, "error": "unreadable DICOM file: x", "summary": {}}]
    assert ledger.instances_without_header() == []


def test_reporting_helpers(ledger):
    first, second = new_job(ledger, series="1.7"), new_job(ledger, series="1.8", now=T0 + 5)
    ledger.transition(first, JobState.NOT_ANALYSED, reason="too few slices", now=T0 + 9)
    assert [j.id for j in ledger.recent_jobs([JobState.RECEIVED, JobState.NOT_ANALYSED], 5)] == [first, second]
    assert [j.id for j in ledger.recent_jobs([JobState.RECEIVED, JobState.NOT_ANALYSED], 1)] == [first]
    assert ledger.series_count() == 2
    assert ledger.counts() == {"not_analysed": 1, "received": 1}
    assert ledger.receiver_summary()["last_instance_at"] == T0 + 5


def test_threads_share_the_file(ledger):
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(20):
                ledger.record_instance(f"2.{k}.{i}", "1.2", f"3.{k}", CT, f"/t/{k}/{i}", None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(ledger.instance_count(j.id) for j in ledger.jobs()) == [20, 20, 20, 20]


def test_status_report_bookkeeping(ledger):
    job = new_job(ledger)
    ledger.transition(job, JobState.FAILED, reason="why", fail_stage=FailStage.LOAD)
    assert [j.id for j in ledger.jobs_awaiting_report([JobState.FAILED])] == [job]
    assert ledger.report_requested(job, "r1") == 1 and ledger.report_requested(job, "r2") == 2
    got = ledger.job(job)
    assert (got.report_attempts, got.report_task_id, got.files) == (2, "r2", None)
    files = [{"type": "sr", "path": "results/1/status_failed.dcm"}]
    ledger.settle_report(job, files, outcome={"state": "failed", "files": files, "worker": "h:1"}, detail="report")
    got = ledger.job(job)
    assert got.state == JobState.FAILED and got.files == files and got.worker_outcome == {"state": "failed",
                                                                                          "worker": "h:1"}
    assert ledger.jobs_awaiting_report([JobState.FAILED]) == [] and ledger.events(job)[-1][2] == "report"
