"""Retention on a real data folder and ledger: which jobs' files go, in which order, and what stays.

Disk use is simulated by a usage function computed from the bytes really left in the data folder,
so the high-water rule is exercised without filling a disk.
"""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, parse_config
from dicom_node.ledger import DeliveryState, JobState, Ledger
from dicom_node.ledger.purging import SETTLE_S
from dicom_node.observability import audit, metrics
from dicom_node.retention import DiskUsage, Retention, purge_once, retention_status
from dicom_node.spool import Spool

DAY = 86400.0
NOW = 1_900_000_000.0
SIZE = 1000  # bytes per spool file
RESULT = 300  # bytes of each job's result file
CT = "1.2.840.10008.5.1.4.1.1.2"


class Site:
    """A data folder with a spool, results and a ledger, and jobs made to order."""

    def __init__(self, root: Path, **retention: object) -> None:
        self.cfg = parse_config({"node": {"data_dir": str(root / "data")}, "retention": retention})
        self.data_dir = self.cfg.data_dir
        self.spool = Spool(self.data_dir)
        self.ledger = Ledger(self.data_dir / "ledger.sqlite3")
        self.n = 0

    def job(self, finished_days_ago: float, *, ending: str = "delivered", slices: int = 3) -> int:
        """A job whose series arrived and whose last change was ``finished_days_ago`` days before NOW.

        ``ending``: delivered | pending (a delivery still to send) | dead (dead letter) |
        not_analysed (no report: nothing to send) | awaiting_report | superseded.
        """
        self.n += 1
        t = NOW - finished_days_ago * DAY
        study, series = f"1.2.826.0.1.{self.n}", f"1.2.826.0.1.{self.n}.1"
        for i in range(slices):
            sop = f"{series}.{i + 1}"
            path = self.spool.put_file(study, series, sop, b"\0" * SIZE)
            self.ledger.record_instance(sop, study, series, CT, path, None, now=t - 60)
        job = self.ledger.jobs()[-1].id
        results = self.data_dir / "results" / str(job)
        results.mkdir(parents=True)
        (results / "sr.dcm").write_bytes(b"\0" * RESULT)
        if ending == "superseded":
            self.ledger.transition(job, JobState.COMPLETE, now=t - 30)
            self.ledger.record_instance(f"{series}.99", study, series, CT,
                                        self.spool.put_file(study, series, f"{series}.99", b"\0" * SIZE), None, now=t)
            self.ledger._db().execute("UPDATE jobs SET updated_at=? WHERE id=?", (t, job))
            return job
        if ending in ("not_analysed", "awaiting_report"):
            self.ledger.transition(job, JobState.NOT_ANALYSED, reason="too few slices", now=t)
            if ending == "not_analysed":
                self.ledger.settle_report(job, [], now=t)
            return job
        files = [{"type": "sr", "path": f"results/{job}/sr.dcm"}]
        self.ledger.transition(job, JobState.DONE, result={"state": "done", "files": files}, now=t)
        self.ledger.add_deliveries(job, ["pacs"], now=t)
        delivery = self.ledger.deliveries(job)[0]
        if ending == "delivered":
            self.ledger.delivery_attempted(delivery.id, ok=True, now=t)
        elif ending == "dead":
            self.ledger.delivery_attempted(delivery.id, ok=False, dead=True, error="refused", now=t)
        return job

    def files_of(self, job: int) -> list[Path]:
        return [p for p in self.ledger.instance_paths(job) if p.exists()] + \
            [p for p in (self.data_dir / "results" / str(job)).glob("*")]

    def usage(self, total: int, other: int) -> "callable":
        """Disk usage: ``other`` bytes used by something else plus what the data folder holds."""
        def measure(_path: Path) -> DiskUsage:
            held = sum(p.stat().st_size for p in self.data_dir.rglob("*.dcm"))
            return DiskUsage(total, other + held, total - other - held)
        return measure


@pytest.fixture
def trail(tmp_path: Path):
    """The audit trail of the test, as a list of records read on demand."""
    audit.configure(tmp_path / "audit-root")
    path = tmp_path / "audit-root" / "audit" / "audit.jsonl"
    yield lambda: [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    audit.close()


def purged(records: list[dict]) -> list[int]:
    return [r["job"] for r in records if r["event"] == "retention_purge"]


def test_age_purges_only_jobs_with_nothing_left_to_deliver_oldest_first(tmp_path, trail):
    site = Site(tmp_path, max_age_days=30, disk_high_water_percent=None)
    old_delivered = site.job(40)
    older_delivered = site.job(50)
    recent_delivered = site.job(10)
    old_pending = site.job(60, ending="pending")
    old_dead = site.job(70, ending="dead")
    old_scout = site.job(45, ending="not_analysed")
    old_awaiting = site.job(80, ending="awaiting_report")
    old_superseded = site.job(35, ending="superseded")
    kept = {j: site.files_of(j) for j in (recent_delivered, old_pending, old_dead, old_awaiting)}
    gone = {j: site.files_of(j) for j in (old_delivered, older_delivered, old_scout, old_superseded)}
    before = metrics.REGISTRY.get_sample_value("dural_retention_purged_files_total")

    run = purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0))

    assert purged(trail()) == [older_delivered, old_scout, old_delivered, old_superseded]  # oldest first
    assert run.jobs == 4 and run.by_age == 4 and run.by_disk == 0
    for job, files in gone.items():
        assert files and not any(p.exists() for p in files), f"job {job} kept files"
        assert not (site.data_dir / "results" / str(job)).exists()
        record = site.ledger.job(job)
        assert record.purged_at == NOW and record.purged_bytes == sum(
            r["bytes"] for r in trail() if r.get("job") == job and r["event"] == "retention_purge")
    assert run.files == sum(len(f) for f in gone.values())
    assert run.bytes == 3 * (3 * SIZE + RESULT) + RESULT  # the superseded job's instances moved to its successor
    for job, files in kept.items():
        assert all(p.exists() for p in files) and site.ledger.job(job).purged_at is None, f"job {job} purged"
    # The ledger keeps every job; the purged instances are marked, not deleted.
    assert len(site.ledger.jobs()) == 9
    rows = site.ledger._db().execute("SELECT COUNT(*) FROM instances WHERE purged_at IS NOT NULL").fetchone()[0]
    assert rows == 9
    assert metrics.REGISTRY.get_sample_value("dural_retention_purged_files_total") - before == run.files
    status = retention_status()
    assert status["last_run"]["jobs"] == 4 and status["last_run_at"] is not None
    # Nothing changed since: a second run purges nothing.
    assert purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0)).jobs == 0


def test_high_water_purges_oldest_first_until_below_the_mark(tmp_path, trail):
    site = Site(tmp_path, max_age_days=None, disk_high_water_percent=90)
    jobs = [site.job(days) for days in (5, 4, 3, 2, 1)]  # jobs[0] is the oldest
    per_job = 3 * SIZE + RESULT
    # 100 kB disk, 83.4 kB used by others: the data folder's 16.5 kB make 99.9 %. Purging two
    # jobs (6.6 kB) leaves 93.3 %, three 90.0 %: exactly three must go.
    usage = site.usage(100_000, 100_000 - 5 * per_job - 100)
    assert 100 * usage(site.data_dir).used / 100_000 > 99

    run = purge_once(site.cfg, site.ledger, now=NOW, usage=usage)

    assert purged(trail()) == jobs[:3] and run.by_disk == 3 and run.by_age == 0
    assert run.disk_used_percent <= 90
    assert all(site.ledger.job(j).purged_at is None for j in jobs[3:])


def test_high_water_never_purges_undelivered_or_just_finished_jobs(tmp_path, trail, caplog):
    site = Site(tmp_path, max_age_days=None, disk_high_water_percent=50)
    delivered = site.job(3)
    pending = site.job(9, ending="pending")
    dead = site.job(8, ending="dead")
    just_now = site.job(SETTLE_S / 2 / DAY)  # delivered five minutes ago: its deliveries may be new
    usage = site.usage(10_000, 9_000)  # above the mark whatever is purged

    run = purge_once(site.cfg, site.ledger, now=NOW, usage=usage)

    assert purged(trail()) == [delivered] and run.disk_used_percent > 50
    for job in (pending, dead, just_now):
        assert site.ledger.job(job).purged_at is None and all(p.exists() for p in site.files_of(job))
    assert "nothing left to purge" in caplog.text
    # The dead letter is retried and sent: then, and only then, its files may go.
    delivery = site.ledger.deliveries(dead, states=[DeliveryState.DEAD])[0]
    site.ledger.retry_dead(dead, now=NOW - 2 * SETTLE_S)
    site.ledger.delivery_attempted(delivery.id, ok=True, now=NOW - 2 * SETTLE_S)
    assert site.ledger.job(dead).state == JobState.DELIVERED
    purge_once(site.cfg, site.ledger, now=NOW, usage=usage)
    assert dead in purged(trail()) and pending not in purged(trail())


def test_files_outside_the_spool_are_never_removed(tmp_path):
    site = Site(tmp_path, max_age_days=1, disk_high_water_percent=None)
    outside = tmp_path / "users-folder" / "ct.dcm"
    outside.parent.mkdir()
    outside.write_bytes(b"\0" * SIZE)
    site.ledger.record_instance("1.2.826.9.9", "1.2.826.9", "1.2.826.9.1", CT, outside, None, now=NOW - 5 * DAY)
    job = site.ledger.jobs()[-1].id
    site.ledger.transition(job, JobState.NOT_ANALYSED, reason="x", now=NOW - 5 * DAY)
    site.ledger.settle_report(job, [], now=NOW - 5 * DAY)

    purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0))

    assert outside.exists() and site.ledger.job(job).purged_at == NOW


def test_a_purged_series_sent_again_is_analysed_again(tmp_path):
    site = Site(tmp_path, max_age_days=1, disk_high_water_percent=None)
    job = site.job(3, slices=2)
    first = site.ledger.instance_paths(job)[0]
    sop, series = first.stem, first.parent.name
    purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0))
    assert not first.exists()
    # Recorded again only with its file in place (the receiver writes before it records).
    with pytest.raises(FileNotFoundError):
        site.ledger.record_instance(sop, first.parent.parent.name, series, CT, first, None, now=NOW)
    path = site.spool.put_file(first.parent.parent.name, series, sop, b"\1" * SIZE)
    assert site.ledger.record_instance(sop, first.parent.parent.name, series, CT, path, None, now=NOW)
    new = site.ledger.jobs()[-1]
    assert new.id != job and new.state == JobState.RECEIVED
    assert site.ledger.instance_paths(new.id) == [path], "purged instances must not join the new job"
    assert site.ledger.job(job).purged_at is not None  # the old job's record stays
    assert site.ledger.known_paths() == {str(path)}
    assert not site.ledger.record_instance(sop, first.parent.parent.name, series, CT, path, None, now=NOW)


def test_the_retention_thread_runs_at_start_and_stops(tmp_path):
    site = Site(tmp_path, max_age_days=1, disk_high_water_percent=None, interval_minutes=60)
    job = site.job(1)
    # The thread runs with the real clock: make the job two days old by it.
    site.ledger._db().execute("UPDATE jobs SET updated_at=? WHERE id=?", (time.time() - 2 * DAY, job))
    retention = Retention(site.cfg, Ledger(site.ledger.path), usage=site.usage(10**9, 0))
    started = time.time()
    retention.start()
    try:
        deadline = time.time() + 20
        while (retention_status()["last_run_at"] or 0) < started:
            assert time.time() < deadline, "retention did not run"
            time.sleep(0.05)
    finally:
        retention.stop()
    assert site.ledger.job(job).purged_at is not None
    status = retention_status()
    assert status["enabled"] and status["max_age_days"] == 1 and status["interval_minutes"] == 60
    assert metrics.REGISTRY.get_sample_value("dural_retention_last_run_timestamp_seconds") >= started


@pytest.mark.parametrize("retention, key", [
    ({"max_age_days": 0}, "retention.max_age_days"),
    ({"max_age_days": -3}, "retention.max_age_days"),
    ({"disk_high_water_percent": 0}, "retention.disk_high_water_percent"),
    ({"disk_high_water_percent": 101}, "retention.disk_high_water_percent"),
    ({"interval_minutes": 0}, "retention.interval_minutes"),
    ({"keep_days": 3}, "retention.keep_days: unknown key"),
])
def test_bad_retention_settings_are_refused_at_start(tmp_path, retention, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"node": {"data_dir": str(tmp_path)}, "retention": retention})


@pytest.mark.parametrize("section, key", [
    ({"max_file_mb": 0}, "audit.max_file_mb"),
    ({"files_kept": 0}, "audit.files_kept"),
])
def test_bad_audit_settings_are_refused_at_start(tmp_path, section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"node": {"data_dir": str(tmp_path)}, "audit": section})


def test_a_crash_leftover_is_emptied_and_unknown_files_in_a_series_folder_stay(tmp_path):
    site = Site(tmp_path, max_age_days=1, disk_high_water_percent=None)
    leftover = site.data_dir / "tmp" / "purge-7-0a1b2c3d" / "series0"
    leftover.mkdir(parents=True)
    (leftover / "x.dcm").write_bytes(b"\0" * SIZE)
    job = site.job(3)
    files = site.files_of(job)
    stray = files[0].parent / "1.2.826.0.99.dcm"  # in the series folder, unknown to the ledger
    stray.write_bytes(b"\0" * SIZE)

    run = purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0))

    assert run.jobs == 1 and not any(p.exists() for p in files)
    assert stray.exists(), "a file the job does not own must stay"
    assert not leftover.parent.exists()
    assert list((site.data_dir / "tmp").iterdir()) == []


def test_a_job_whose_files_cannot_be_moved_does_not_stop_the_others(tmp_path, monkeypatch):
    site = Site(tmp_path, max_age_days=1, disk_high_water_percent=None)
    stuck, fine = site.job(5), site.job(4)
    stuck_results = site.data_dir / "results" / str(stuck)
    rename = os.rename

    def failing(src, dst):  # as root nothing refuses a rename; an I/O error is what a bad disk gives
        if Path(src) == stuck_results:
            raise OSError(errno.EIO, "Input/output error")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    run = purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0))
    assert run.jobs == 1 and site.ledger.job(fine).purged_at is not None
    assert site.ledger.job(stuck).purged_at is None and stuck_results.exists()
    assert f"job {stuck}" in retention_status()["last_error"]
    monkeypatch.setattr(os, "rename", rename)
    assert purge_once(site.cfg, site.ledger, now=NOW, usage=site.usage(10**9, 0)).jobs == 1  # next run: done
    assert site.ledger.job(stuck).purged_at is not None and retention_status()["last_error"] is None
