"""Receive journal and its mover: group commit, torn and stale records never replayed, kill -9
of a process appending from several threads replays every acknowledged record once, and the
mover's spool files and ledger rows."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dicom_node import journal as journal_module
from dicom_node.journal import Entry, Journal, JournalUnavailable, read_segment
from dicom_node.journal_mover import JournalMover
from dicom_node.ledger import Ledger
from dicom_node.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = 1 << 20
STUDY, SERIES, SOP_CLASS = "1.2.840.99.7", "1.2.840.99.7.1", "1.2.840.10008.5.1.4.1.1.2"


def entry(n: int, assoc: str | None = "a1") -> Entry:
    return Entry(STUDY, SERIES, f"1.2.840.99.7.1.{n}", SOP_CLASS, assoc, 1_700_000_000.0 + n)


def payload(n: int, size: int = 50_000) -> bytes:
    return bytes([n % 251]) * size + n.to_bytes(4, "little")


def small_journal(folder: Path, **kw: int) -> Journal:
    return Journal(folder, segment_bytes=SEGMENT, **{"max_segments": 3, "initial_segments": 2, **kw})


def test_records_come_back_in_order_byte_exact_after_reopening(tmp_path: Path) -> None:
    journal = small_journal(tmp_path)
    for n in range(30):  # 30 x 50 kB: spans two segments
        journal.append(entry(n), [b"meta", payload(n)])
    journal.release()
    recovered = small_journal(tmp_path).recover()
    assert [r.seq for r in recovered] == list(range(1, 31))
    assert len({r.segment.path for r in recovered}) == 2
    for n, record in enumerate(recovered):
        assert record.entry == entry(n)
        assert os.pread(record.segment.fd, record.length, record.offset) == b"meta" + payload(n)


def test_concurrent_appends_share_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushes = []
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:  # a disk where a flush takes 20 ms
        flushes.append(fd)
        time.sleep(0.02)
        real(fd)

    monkeypatch.setattr(journal_module.os, "fdatasync", slow_fdatasync)
    journal = small_journal(tmp_path, max_segments=4)
    threads = [threading.Thread(target=lambda k=k: [journal.append(entry(k * 10 + i), [payload(i, 1000)])
                                                    for i in range(5)]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committed = journal.take(0)
    assert sorted(r.seq for r in committed) == list(range(1, 41))
    # One flush per record would be 40; group commit covers several waiting records per flush.
    assert len(flushes) <= 20, len(flushes)


def _torn(record_size: int, how: str) -> tuple[int, bytes]:
    """Where to overwrite the last record, and with what, for each kind of torn write."""
    return {"payload tail never written": (record_size - 4096, bytes(4096)),
            "payload middle garbage": (record_size // 2, b"\xff" * 512),
            "header only": (60, bytes(record_size - 60)),
            "half a header": (20, bytes(record_size - 20))}[how]


@pytest.mark.parametrize("how", ["payload tail never written", "payload middle garbage", "header only",
                                 "half a header"])
def test_a_torn_last_record_is_discarded(tmp_path: Path, how: str) -> None:
    journal = small_journal(tmp_path)
    records = [journal.append(entry(n), [payload(n)]) for n in range(4)]
    last = records[-1]
    start = records[-2].offset + records[-2].length  # where the last record's header begins
    size = last.offset + last.length - start
    offset, garbage = _torn(size, how)
    os.pwrite(last.segment.fd, garbage, start + offset)
    journal.release()
    assert [r.entry for r in small_journal(tmp_path).recover()] == [entry(n) for n in range(3)]


@pytest.mark.parametrize("restart", [False, True], ids=["same run", "after a restart"])
def test_recycled_segments_never_replay_earlier_records(tmp_path: Path, restart: bool) -> None:
    journal = small_journal(tmp_path, initial_segments=1)
    old = [journal.append(entry(n), [payload(n)]) for n in range(5)]
    journal.moved(old)
    journal.seal_if_moved()
    for segment in journal.recyclable():
        journal.recycle(segment)
    assert not read_segment(old[0].segment)
    if restart:  # a new run numbers its records from 1 again; only the epoch tells them apart
        journal.release()
        journal = small_journal(tmp_path, initial_segments=1)
    # Same size as the old records: the old second record starts right where the new one ends.
    new = journal.append(entry(5), [payload(5)])
    assert new.segment.path == old[0].segment.path and new.offset == old[0].offset
    journal.release()
    assert [r.entry for r in small_journal(tmp_path).recover()] == [new.entry]


def test_a_full_journal_refuses_after_its_timeout(tmp_path: Path) -> None:
    journal = small_journal(tmp_path, max_segments=2)
    for n in range(40):  # two segments' worth (20 records each); nothing moves them
        journal.append(entry(n), [payload(n)])
    started = time.monotonic()
    with pytest.raises(JournalUnavailable, match="journal full"):
        journal.append(entry(99), [payload(99)], timeout=0.3)
    assert time.monotonic() - started >= 0.3
    journal.close()
    with pytest.raises(JournalUnavailable, match="stopping"):
        journal.append(entry(100), [payload(100)])


def test_spare_segments_are_added_and_one_cut_short_at_creation_is_dropped(tmp_path: Path) -> None:
    journal = small_journal(tmp_path, initial_segments=1)
    assert not journal.add_spare()  # one segment free already
    journal.append(entry(0), [payload(0)])
    assert journal.add_spare()  # the only one is in use now
    assert [name for name, _, _ in journal.iter_state()] == ["segment-000.bin", "segment-001.bin"]
    journal.release()
    (tmp_path / "segment-002.bin").write_bytes(bytes(1000))  # a crash while zero-filling it
    reopened = small_journal(tmp_path, initial_segments=1)
    assert not (tmp_path / "segment-002.bin").exists()
    assert [r.entry for r in reopened.recover()] == [entry(0)]


def test_mover_puts_records_into_spool_and_ledger_and_replay_adds_no_duplicates(tmp_path: Path) -> None:
    spool, ledger = Spool(tmp_path), Ledger(tmp_path / "ledger.sqlite3")
    journal = small_journal(tmp_path / "journal")
    for n in range(6):
        journal.append(entry(n), [b"meta-", payload(n)])
    # The receiver's low-disk check counts what the spool still has to take.
    assert journal.unmoved_bytes() == sum(len(b"meta-" + payload(n)) for n in range(6))
    mover = JournalMover(journal, spool, ledger)
    mover._move(journal.take(0))  # moved, not yet recycled: a crash now replays them again
    assert journal.unmoved_bytes() == 0
    journal.release()
    assert JournalMover(small_journal(tmp_path / "journal"), spool, ledger).replay() == 6
    files = sorted(spool.iter_files())
    assert [f.stem for f in files] == sorted(entry(n).sop_uid for n in range(6))
    for n in range(6):
        assert spool.path_for(STUDY, SERIES, entry(n).sop_uid).read_bytes() == b"meta-" + payload(n)
    assert ledger.known_paths() == {str(f) for f in files}
    assert ledger._db().execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 6
    # Replay recycled every segment: the next start has nothing to replay.
    assert JournalMover(small_journal(tmp_path / "journal"), spool, ledger).replay() == 0


def test_mover_thread_moves_waits_and_stops_clean(tmp_path: Path) -> None:
    spool, ledger = Spool(tmp_path), Ledger(tmp_path / "ledger.sqlite3")
    mover = JournalMover(small_journal(tmp_path / "journal"), spool, ledger)
    mover.start()
    for n in range(25):  # more than a segment: segments are recycled while appending goes on
        mover.journal.append(entry(n), [payload(n)])
    assert mover.journal.wait_moved(10)
    assert all(ledger.has_instance(entry(n).sop_uid) for n in range(25))
    mover.stop()
    assert JournalMover(small_journal(tmp_path / "journal"), spool, ledger).replay() == 0
    assert len(list(spool.iter_files())) == 25


_APPENDER = textwrap.dedent("""
    import sys, threading, time
    from dicom_node.journal import Entry, Journal
    journal = Journal(sys.argv[1], segment_bytes=1 << 20, max_segments=64, initial_segments=2)
    lock = threading.Lock()
    def run(k):
        for i in range(100000):
            sop = f"1.2.840.99.8.{k}.{i}"
            journal.append(Entry("1.2.840.99.8", "1.2.840.99.8.1", sop, "1.2.840.10008.5.1.4.1.1.2", None,
                                 time.time()), [sop.encode() * 2000])
            with lock:
                print(sop, flush=True)
    for k in range(4):
        threading.Thread(target=run, args=(k,)).start()
""")


@pytest.mark.slow
def test_kill9_while_four_threads_append_replays_every_acknowledged_record_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path / "journal")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 150:  # segments have been switched several times by now
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(30)
    acknowledged += [line.strip() for line in proc.stdout]  # printed before the kill landed
    spool, ledger = Spool(tmp_path), Ledger(tmp_path / "ledger.sqlite3")
    replayed = JournalMover(Journal(tmp_path / "journal", segment_bytes=1 << 20, max_segments=64), spool,
                            ledger).replay()
    stored = {p.stem: p for p in spool.iter_files()}
    assert set(acknowledged) <= set(stored), "an acknowledged record was not replayed"
    assert replayed == len(stored), "a record was replayed twice"
    assert len(stored) - len(acknowledged) <= 4  # at most each thread's record in flight at the kill
    for sop, path in stored.items():
        assert path.read_bytes() == sop.encode() * 2000
    assert ledger.known_paths() == {str(p) for p in stored.values()}


@pytest.mark.slow
def test_node_replays_what_a_crashed_run_left_in_the_journal_before_listening(node_factory, series_factory) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    node = node_factory()
    assert node.stop() == 0  # a clean stop leaves an empty journal
    files = series_factory("journal_replay", n_slices=3)
    journal = Journal(node.data_dir / "journal")
    for source in files:  # what a run killed right after acknowledging these would leave
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        journal.append(Entry(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, None,
                             time.time()), [source.read_bytes()])
    journal.release()
    node.start()
    assert 'msg="replayed acknowledged instances from the receive journal" count=3' in node.log()
    ledger = node.ledger()
    for source in files:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        stored = node.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert stored.read_bytes() == source.read_bytes()
        assert ledger.has_instance(ds.SOPInstanceUID)


def test_the_journal_grows_only_while_the_disk_may_give_the_space(tmp_path: Path) -> None:
    room = {"segments": 0}
    journal = Journal(tmp_path, segment_bytes=SEGMENT, max_segments=4, initial_segments=1,
                      may_grow=lambda nbytes: room["segments"] * SEGMENT >= nbytes)
    assert not journal.fits(10)  # no room for even one segment: the receiver writes directly
    room["segments"] = 1
    assert journal.add_spare() and journal.fits(10)
    room["segments"] = 0
    for n in range(20):  # fills the only segment
        journal.append(entry(n), [payload(n)])
    with pytest.raises(JournalUnavailable, match="journal full"):
        journal.append(entry(20), [payload(20)], timeout=0.1)
    assert not journal.add_spare() and len(list(journal.iter_state())) == 1


def test_mover_recycles_only_when_quiet_or_short_of_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While records arrive and segments are left, the spool is not flushed (its syncfs would
    hold up the receivers' own flushes); once quiet, or down to the last free segments, it is."""
    from dicom_node import journal_mover

    monkeypatch.setattr(journal_mover, "IDLE_RECYCLE_S", 0.5)
    spool, ledger = Spool(tmp_path), Ledger(tmp_path / "ledger.sqlite3")
    mover = JournalMover(small_journal(tmp_path / "journal", max_segments=8, initial_segments=1), spool, ledger)
    flushes: list[int] = []
    flush = mover._flush_spool
    monkeypatch.setattr(mover, "_flush_spool", lambda: (flushes.append(len(mover._unflushed)), flush())[1])
    mover.start()
    try:
        for n in range(40):  # about three segments, one record every 10 ms: busy throughout
            mover.journal.append(entry(n), [payload(n)])
            time.sleep(0.01)
        assert mover.journal.wait_moved(10)
        assert flushes == [], "recycled while records kept arriving and free segments were left"
        assert mover.journal.free_segments() >= journal_mover.MIN_FREE_SEGMENTS
        deadline = time.monotonic() + 10
        while not flushes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flushes and flushes[0] == 40  # quiet: one flush for every file moved so far
        time.sleep(0.2)
        assert [written for _, written, _ in mover.journal.iter_state()] == [0] * len(list(mover.journal.iter_state()))
    finally:
        mover.stop()
    # Short of segments: a journal that may not grow recycles while busy.
    tight = JournalMover(small_journal(tmp_path / "tight", max_segments=2, initial_segments=2), spool, ledger)
    tight_flush = tight._flush_spool
    monkeypatch.setattr(tight, "_flush_spool", lambda: (flushes.append(-1), tight_flush())[1])
    tight.start()
    try:
        for n in range(40):
            tight.journal.append(entry(100 + n), [payload(n)])
            time.sleep(0.01)
        assert -1 in flushes, "two segments, never recycled while busy: the appends could not have fitted"
    finally:
        tight.stop()
