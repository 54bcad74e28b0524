"""Spool: UID sanitising, atomic fsynced writes, idempotency, crash leftovers, rescan listing."""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from dicom_node.spool import Spool, clean_uid

STUDY, SERIES = "1.2.840.99.1", "1.2.840.99.1.2"


@pytest.mark.parametrize("raw, clean", [
    ("1.2.3", "1.2.3"),
    ("1.2.3\x00", "1.2.3"),  # NUL padding to even length (PS3.5 9.1)
    ("1.2.3 ", "1.2.3"),
    ("0", "0"),
    ("1." + "2" * 62, "1." + "2" * 62),  # 64 characters
])
def test_clean_uid_accepts_uids(raw: str, clean: str) -> None:
    assert clean_uid(raw) == clean


@pytest.mark.parametrize("raw", [
    "", None, "   ", "1.2.3a", "../1.2", "1.2/3", "1..2", ".1.2", "1.2.", "1.2.3\\4", "1." + "2" * 63,
    "1.2\n3", "１.２",  # full-width digits are not ASCII digits
])
def test_clean_uid_refuses_anything_but_digits_and_dots(raw: object) -> None:
    with pytest.raises(ValueError, match="must be 1-64 digits and dots"):
        clean_uid(raw)


def test_put_file_writes_complete_file_at_uid_path_and_nothing_in_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.put_file(STUDY, SERIES, "1.2.3.4", b"DICM-bytes")
    assert path == tmp_path / "spool" / STUDY / SERIES / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM-bytes"
    assert list(spool.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("payload, expected", [
    (b"abc" * 1000, b"abc" * 1000),
    (bytearray(b"xyz" * 10), b"xyz" * 10),
    (memoryview(b"view"), b"view"),
    (io.BytesIO(b"stream" * 100_000), b"stream" * 100_000),
    (lambda fh: (fh.write(b"head"), fh.write(b"tail")), b"headtail"),
], ids=["bytes", "bytearray", "memoryview", "stream", "writer"])
def test_put_file_payload_kinds(tmp_path: Path, payload: object, expected: bytes) -> None:
    assert Spool(tmp_path).put_file(STUDY, SERIES, "9.9", payload).read_bytes() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("study, series, sop", [
    ("../etc", SERIES, "1.2"), (STUDY, "1.2/..", "1.2"), (STUDY, SERIES, "1.2.3.dcm"), (STUDY, SERIES, ""),
])
def test_put_file_refuses_unsafe_uids_and_writes_nothing(tmp_path: Path, study: str, series: str, sop: str) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError):
        spool.put_file(study, series, sop, b"x")
    assert list(spool.iter_files()) == [] and list(spool.tmp_dir.iterdir()) == []


def test_same_sop_twice_replaces_atomically(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.put_file(STUDY, SERIES, "1.2.3", b"first")
    second = spool.put_file(STUDY, SERIES, "1.2.3", b"second version")
    assert first == second and second.read_bytes() == b"second version"
    assert list(spool.iter_files()) == [second]


def test_failing_writer_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put_file(STUDY, SERIES, "1.2.3", b"good")

    def broken(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.put_file(STUDY, SERIES, "1.2.3", broken)
    with pytest.raises(OSError):
        spool.put_file(STUDY, SERIES, "1.2.4", broken)
    assert [p.name for p in spool.iter_files()] == ["1.2.3.dcm"]
    assert (spool.spool_dir / STUDY / SERIES / "1.2.3.dcm").read_bytes() == b"good"
    assert list(spool.tmp_dir.iterdir()) == []


def test_put_copy_writes_through_the_descriptor_and_cleans_up_a_failed_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.put_copy(STUDY, SERIES, "1.2.3", lambda fd: os.write(fd, b"copied"))
    assert path == spool.path_for(STUDY, SERIES, "1.2.3") and path.read_bytes() == b"copied"

    def broken(fd: int) -> None:
        os.write(fd, b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.put_copy(STUDY, SERIES, "1.2.3", broken)
    assert path.read_bytes() == b"copied" and list(spool.tmp_dir.iterdir()) == []


def test_two_spools_on_one_folder_never_share_a_temporary_name(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)  # the node and a reprocessing run
    names = {first._tmp_path().name for _ in range(3)} | {second._tmp_path().name for _ in range(3)}
    assert len(names) == 6


def test_clean_tmp_removes_partial_writes_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.tmp_dir / "abc.part").write_bytes(b"partial")
    (spool.tmp_dir / "def.part").write_bytes(b"")
    (spool.tmp_dir / "keep.txt").write_bytes(b"not ours")
    kept = spool.put_file(STUDY, SERIES, "1.2", b"complete")
    assert spool.clean_tmp() == 2
    assert sorted(p.name for p in spool.tmp_dir.iterdir()) == ["keep.txt"]
    assert kept.read_bytes() == b"complete"
    assert spool.clean_tmp() == 0


def test_iter_files_lists_only_instances_in_the_layout(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    a = spool.put_file("1.1", "1.1.1", "1.1.1.1", b"a")
    b = spool.put_file("1.1", "1.1.2", "1.1.2.1", b"b")
    c = spool.put_file("1.2", "1.2.1", "1.2.1.1", b"c")
    (spool.spool_dir / "stray.dcm").write_bytes(b"top-level file")
    (a.parent / "notes.txt").write_text("x")
    assert list(spool.iter_files()) == [a, b, c]


def test_free_gb_reports_the_filesystem(tmp_path: Path) -> None:
    free = Spool(tmp_path).free_gb()
    st = os.statvfs(tmp_path)
    assert free == pytest.approx(st.f_bavail * st.f_frsize / 1e9, rel=0.05)


def test_concurrent_writers_into_one_series_folder(tmp_path: Path) -> None:
    """Group-committed folder fsyncs must not lose or mix files under concurrency."""
    spool = Spool(tmp_path)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(15):
                spool.put_file(STUDY, SERIES, f"1.2.{k}.{i}", f"{k}-{i}".encode() * 100)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    files = list(spool.iter_files())
    assert len(files) == 90
    for path in files:
        _, _, k, i = path.stem.rsplit(".", 3)
        assert path.read_bytes() == f"{k}-{i}".encode() * 100
    assert list(spool.tmp_dir.iterdir()) == []
