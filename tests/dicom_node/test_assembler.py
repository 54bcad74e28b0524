"""Series assembly on a real ledger with real CT files: header cache, completion, eligibility,
re-opening by late instances."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node import assembler as assembler_mod
from dicom_node.assembler import BATCH_RELEASE_SETTLE_S, RELEASE_SETTLE_S, Assembler, needs_status_report
from dicom_node.config import parse_config
from dicom_node.eligibility import OWN_MANUFACTURER
from dicom_node.ledger import DeliveryState, JobState, Ledger
from segmenter.dicom_io import make_test_series

T0 = 1_700_000_000.0  # the ledger treats 0 as "now"; use a fixed epoch instead
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def cfg(tmp_path):
    return parse_config({"node": {"data_dir": str(tmp_path / "var")},
                         "series": {"quiet_seconds": 30, "min_slices": 10}})


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


@pytest.fixture(scope="module")
def ct12(tmp_path_factory):
    """One 12-slice CT series (files are only read, so tests share it)."""
    return make_test_series(tmp_path_factory.mktemp("ct12"), n_slices=12)


def record(ledger: Ledger, paths, assoc: str | None = "a1", now: float = T0) -> None:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                               str(ds.SOPClassUID), path, assoc, now=now)


def only_job(ledger: Ledger):
    jobs = ledger.jobs()
    assert len(jobs) == 1, jobs
    return jobs[0]


def test_headers_read_once_and_cached(cfg, ledger, ct12, monkeypatch):
    calls: list[str] = []
    real = assembler_mod.read_summary
    monkeypatch.setattr(assembler_mod, "read_summary", lambda p, s: calls.append(s) or real(p, s))
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12)
    asm = Assembler(cfg, ledger)
    # Not while the series is still streaming in: the receiver shares the process.
    assert asm.run_once(T0 + 0.1).headers_read == 0
    assert asm.run_once(T0 + 0.6).headers_read == 12
    assert asm.run_once(T0 + 0.7).headers_read == 0
    # A fresh assembler (a restart) uses the cache too.
    assert Assembler(cfg, ledger).run_once(T0 + 0.8).headers_read == 0
    assert len(calls) == 12 == len(set(calls))
    headers = ledger.headers_for_job(only_job(ledger).id)
    assert all(h["summary"]["modality"] == "CT" and h["summary"]["has_pixel_data"] for h in headers)
    assert not any("Phantom^Head" in str(h) or "PHANTOM0001" in str(h) or "19600101" in str(h) for h in headers)


def test_complete_when_released_and_contiguous(cfg, ledger, ct12):
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12)
    asm = Assembler(cfg, ledger)
    assert asm.run_once(T0 + 5).completed == []  # association still open
    ledger.close_association("a1", now=T0 + 5)
    # One association carried the whole series: only the short settle time applies.
    assert asm.run_once(T0 + BATCH_RELEASE_SETTLE_S / 2).completed == []
    report = asm.run_once(T0 + BATCH_RELEASE_SETTLE_S)
    job = only_job(ledger)
    assert report.completed == [job.id] and job.state == JobState.COMPLETE
    assert "associations released and 12 slices contiguous" in ledger.events(job.id)[-1][2]


def test_headers_read_at_release_without_waiting_for_a_pause(cfg, ledger, ct12):
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12)
    asm = Assembler(cfg, ledger)
    assert asm.run_once(T0 + 0.01).headers_read == 0  # still streaming in on an open association
    ledger.close_association("a1", now=T0 + 0.01)
    assert asm.run_once(T0 + 0.02).headers_read == 12


def test_one_instance_per_association_waits_the_full_settle_time(cfg, ledger, ct12):
    for i, path in enumerate(ct12):  # a sender that opens an association per instance
        ledger.open_association(f"a{i}", "SCU", now=T0)
        record(ledger, [path], assoc=f"a{i}")
        ledger.close_association(f"a{i}", now=T0)
    asm = Assembler(cfg, ledger)
    # Looks released and contiguous, but the sender may be about to open the next association.
    assert asm.run_once(T0 + BATCH_RELEASE_SETTLE_S).completed == []
    assert asm.run_once(T0 + RELEASE_SETTLE_S - 0.01).completed == []
    assert asm.run_once(T0 + RELEASE_SETTLE_S).completed == [only_job(ledger).id]


def test_gap_waits_for_quiet_timer_then_not_analysed(cfg, ledger, tmp_path):
    paths = make_test_series(tmp_path / "gap", n_slices=14)
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, paths[:6] + paths[7:])  # slice 6 missing
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    assert asm.run_once(T0 + 29).waiting == 1
    report = asm.run_once(T0 + 30)
    job = only_job(ledger)
    assert report.not_analysed == [job.id] and job.state == JobState.NOT_ANALYSED
    assert job.reason.startswith("gap: 1 slice(s) missing")
    assert job.result == {"status_report": True, "series_kind": "ct_image", "instances": 13}
    assert needs_status_report(job)


def test_quiet_timer_completes_despite_open_association(cfg, ledger, ct12):
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12)
    asm = Assembler(cfg, ledger)
    assert asm.run_once(T0 + 29.9).completed == []
    assert asm.run_once(T0 + 30).completed == [only_job(ledger).id]


def test_series_split_over_two_associations_is_one_job(cfg, ledger, ct12):
    ledger.open_association("a1", "SCU", now=T0)
    ledger.open_association("a2", "SCU", now=T0)
    record(ledger, ct12[:6], "a1")
    record(ledger, ct12[6:], "a2")
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    assert asm.run_once(T0 + 5).completed == []  # a2 still open
    ledger.close_association("a2", now=T0 + 5)
    job = only_job(ledger)
    assert asm.run_once(T0 + 5).completed == [job.id]
    assert ledger.instance_count(job.id) == 12


def test_late_instance_reopens_and_supersedes(cfg, ledger, ct12):
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12[:11])
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    first = only_job(ledger)
    assert asm.run_once(T0 + 2).completed == [first.id]
    ledger.open_association("a2", "SCU", now=T0 + 3)
    record(ledger, ct12[11:], "a2", now=T0 + 3)
    ledger.close_association("a2", now=T0 + 3)
    old, new = ledger.job(first.id), ledger.jobs([JobState.RECEIVED])[0]
    assert old.state == JobState.SUPERSEDED and old.superseded_by == new.id
    assert ledger.instance_count(new.id) == 12 and ledger.instance_count(old.id) == 0
    assert asm.run_once(T0 + 5).completed == [new.id]


def test_late_instance_after_delivery_keeps_the_delivered_job(cfg, ledger, ct12):
    cfg = cfg.model_copy(update={"destinations": []})
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12[:11])
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    first = only_job(ledger).id
    asm.run_once(T0 + 2)
    ledger.mark_submitted(first, "task-1", "stat", now=T0 + 3)
    ledger.transition(first, JobState.DONE, result={"files": ["seg.dcm"]}, now=T0 + 4)
    ledger.add_deliveries(first, ["pacs"], now=T0 + 4)
    ledger.delivery_attempted(ledger.deliveries(first)[0].id, ok=True, now=T0 + 5)
    assert ledger.job(first).state == JobState.DELIVERED
    record(ledger, ct12[11:], None, now=T0 + 10)
    old, new = ledger.job(first), ledger.jobs([JobState.RECEIVED])[0]
    # The delivered result stays delivered (it was sent); the new job carries the whole series.
    assert old.state == JobState.DELIVERED and old.superseded_by == new.id
    assert [d.state for d in ledger.deliveries(first)] == [DeliveryState.SENT]
    assert any("superseded by job" in (e[2] or "") for e in ledger.events(first))
    assert ledger.instance_count(new.id) == 12
    assert asm.run_once(T0 + 12).completed == [new.id]


def test_instance_recorded_while_deciding_defers_the_decision(cfg, ledger, ct12, monkeypatch):
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12[:11])
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    asm.read_headers(T0)
    real = assembler_mod.evaluate

    def racing(headers, series_cfg):
        record(ledger, ct12[11:], None, now=T0 + 1.5)  # the SCP records one more meanwhile
        return real(headers, series_cfg)

    monkeypatch.setattr(assembler_mod, "evaluate", racing)
    assert asm.run_once(T0 + 2).completed == []
    monkeypatch.setattr(assembler_mod, "evaluate", real)
    job = only_job(ledger)
    assert job.state == JobState.RECEIVED and ledger.instance_count(job.id) == 12
    assert asm.run_once(T0 + 3).completed == [job.id]


def test_unreadable_instance_makes_series_not_analysed(cfg, ledger, ct12, tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    ledger.open_association("a1", "SCU", now=T0)
    record(ledger, ct12)
    study = pydicom.dcmread(ct12[0], stop_before_pixels=True)
    ledger.record_instance("1.2.3.999", str(study.StudyInstanceUID), str(study.SeriesInstanceUID),
                           "1.2.840.10008.5.1.4.1.1.2", broken, "a1", now=T0)
    ledger.close_association("a1", now=T0)
    asm = Assembler(cfg, ledger)
    asm.run_once(T0 + 1)  # not contiguous-complete: a slice is unreadable
    assert only_job(ledger).state == JobState.RECEIVED
    asm.run_once(T0 + 30)
    job = only_job(ledger)
    assert job.state == JobState.NOT_ANALYSED
    assert job.reason.startswith("1 of 13 instance(s) unreadable (unreadable DICOM file")
    assert needs_status_report(job)  # announced as CT on the association


def test_mr_series_not_analysed_without_status_report(cfg, ledger, tmp_path):
    paths = make_test_series(tmp_path / "mr", n_slices=12,
                             extra={"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})
    record(ledger, paths, None)
    Assembler(cfg, ledger).run_once(T0 + 2)
    job = only_job(ledger)
    assert job.state == JobState.NOT_ANALYSED and job.reason == "modality must be CT; got MR"
    assert job.result["series_kind"] == "other" and not needs_status_report(job)


def _own_seg(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SEG_CLASS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Manufacturer = "SEG", OWN_MANUFACTURER
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = 1
    ds.PixelData = b"\0" * 8
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SEG_CLASS, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_own_result_never_analysed_and_no_report(cfg, ledger, tmp_path):
    record(ledger, [_own_seg(tmp_path / "seg.dcm")], None)
    Assembler(cfg, ledger).run_once(T0 + 31)
    job = only_job(ledger)
    assert job.state == JobState.NOT_ANALYSED and "written by this node" in job.reason
    assert job.result["series_kind"] == "own_result" and not needs_status_report(job)


@pytest.mark.parametrize("kw,expected", [
    ({"gantry_tilt_deg": 18.5}, None),  # analysed as acquired
    ({"gantry_tilt_deg": 18.5, "slice_offsets_mm": [4.0 * k for k in range(6)] + [21.0 + 7.0 * k for k in range(6)],
      "slice_thickness_mm": 4.0}, "gap: slices 4.00 mm thick are 7.00 mm apart"),
    ({"slice_offsets_mm": [0, 5, 10, 15, 20, 30, 35, 40, 45, 50, 55, 60]}, "gap: 1 slice(s) missing"),
    ({"orientation": (0, 1, 0, 0, 0, -1)}, "not axial"),
    ({"series_description": "Scout"}, "excluded by series.exclude.series_description[0]"),
    ({"omit": ("PixelData",)}, "12 instance(s) without pixel data"),
    ({"transfer_syntax": "1.2.840.10008.1.2.5"}, None),  # RLE: encapsulated pixel data counts
])
def test_real_files(cfg, ledger, tmp_path, kw, expected):
    record(ledger, make_test_series(tmp_path / "s", n_slices=12, **kw), None)
    Assembler(cfg, ledger).run_once(T0 + 30)
    job = only_job(ledger)
    if expected is None:
        assert job.state == JobState.COMPLETE
    else:
        assert job.state == JobState.NOT_ANALYSED and expected in job.reason, job.reason


@pytest.mark.parametrize("damage,expected", [
    (lambda data: data[:300], "no SOPClassUID"),  # truncated in the header
    (lambda data: b"not dicom at all" * 20, "InvalidDicomError"),
    (lambda data: b"", "InvalidDicomError"),
    (None, "FileNotFoundError"),
])
def test_read_summary_records_why_a_file_is_unreadable(ct12, tmp_path, damage, expected):
    from dicom_node.headers import read_summary

    path = tmp_path / "x.dcm"
    if damage is not None:
        path.write_bytes(damage(ct12[0].read_bytes()))
    summary = read_summary(path, "1.2.3")
    assert summary.error and summary.error.startswith("unreadable DICOM file") and expected in summary.error
    assert summary.modality is None and not summary.has_pixel_data


def test_read_summary_round_trip(ct12):
    from dicom_node.headers import HeaderSummary, read_summary

    summary = read_summary(ct12[0], "1.2.3")
    assert summary.error is None and summary.has_pixel_data and summary.rows == 64
    assert summary.slice_thickness_mm == 5.0
    assert HeaderSummary.from_dict(summary.to_dict()) == summary
