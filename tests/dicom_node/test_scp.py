"""The receiver against real peers: dcmtk echoscu/storescu and a pynetdicom sender, talking to
``dicom-node serve`` as a subprocess. Plus in-process checks of the handler's failure mapping and
of the start-up rescan."""
from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGLSLossless, RLELossless, SecondaryCaptureImageStorage, generate_uid)
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.names import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OUT_OF_RESOURCES
from dicom_node.receive_handlers import ReceiverState, handle_store
from dicom_node.scp import start_receiver
from dicom_node.spool import Spool
from dicom_node.wire import file_meta, scan

pytestmark = [pytest.mark.network]
ENV = {**os.environ, "TCP_NODELAY": "1"}


def body(raw: bytes) -> bytes:
    """Data set bytes after preamble and file meta."""
    return raw[144 + struct.unpack_from("<L", raw, 140)[0]:]


def stored_path(node: Any, source: Path) -> Path:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    return node.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def assert_stored_exactly(node: Any, sources: Sequence[Path]) -> None:
    for source in sources:
        path = stored_path(node, source)
        assert path.exists(), f"{source.name} not in the spool"
        assert body(path.read_bytes()) == body(source.read_bytes())


@pytest.fixture
def raw_send(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``raw_send(port, files)``: pynetdicom sends each file's data set bytes as they are on disk
    (no decode/re-encode), one context per (SOP class, transfer syntax); returns the statuses."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    def send(port: int, files: Sequence[Path], calling: str = "TEST_SCU",
             extra_contexts: Sequence[str] = ()) -> list[int | None]:
        contexts, seen = [], set()
        for f in files:
            meta = pydicom.filereader.read_file_meta_info(f)
            key = (meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
            if key not in seen:
                seen.add(key)
                contexts.append(build_context(key[0], [key[1]]))
        contexts += [build_context(uid, [ExplicitVRLittleEndian]) for uid in extra_contexts]
        assoc = AE(ae_title=calling).associate("127.0.0.1", port, contexts=contexts, ae_title="DURAL_AI")
        assert assoc.is_established, "association with the node failed"
        try:
            statuses = []
            for f in files:
                rsp = assoc.send_c_store(f)
                statuses.append(int(rsp.Status) if "Status" in rsp else None)
            return statuses
        finally:
            assoc.release()

    return send


def run_tool(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)


def wait_for(predicate: Any, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- dcmtk peers ----------------------------------------------------------------------------------
def test_dcmtk_echoscu_and_storescu(shared_node, series_factory, dcmtk, no_phi) -> None:  # type: ignore[no-untyped-def]
    files = series_factory("dcmtk", n_slices=8)
    echo = run_tool([dcmtk("echoscu"), "-aec", "DURAL_AI", "127.0.0.1", str(shared_node.port)])
    assert echo.returncode == 0, echo.stderr
    store = run_tool([dcmtk("storescu"), "-aec", "DURAL_AI", "-aet", "DCMTK_SCU", "127.0.0.1", str(shared_node.port),
                      *map(str, files)])
    assert store.returncode == 0, store.stderr
    assert_stored_exactly(shared_node, files)
    first = pydicom.dcmread(stored_path(shared_node, files[0]))
    assert first.file_meta.SourceApplicationEntityTitle == "DCMTK_SCU"
    assert first.PatientName == "Zyxwert^Quillon"  # stored as sent, never logged
    ledger = shared_node.ledger()
    rows = [r for r in ledger.iter_instances() if r["series_uid"] == first.SeriesInstanceUID]
    assert len(rows) == 8 and len({r["assoc_id"] for r in rows}) == 1 and rows[0]["assoc_id"]
    assert {r["path"] for r in rows} == {str(stored_path(shared_node, f)) for f in files}
    closed = lambda: ledger._db().execute(  # noqa: E731
        "SELECT closed_at FROM associations WHERE id=?", (rows[0]["assoc_id"],)).fetchone()[0]
    wait_for(closed, what="the association to be closed in the ledger")
    no_phi(shared_node.log())


def test_study_over_two_concurrent_associations_lands_in_one_series_folder(shared_node, series_factory,  # type: ignore[no-untyped-def]
                                                                             dcmtk) -> None:
    files = series_factory("two_assocs", n_slices=10)
    halves = [files[::2], files[1::2]]
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", "DURAL_AI", "127.0.0.1", str(shared_node.port),
                               *map(str, half)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for half in halves]
    assert [p.wait(120) for p in procs] == [0, 0]
    folder = stored_path(shared_node, files[0]).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(stored_path(shared_node, f).name for f in files)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    rows = [r for r in shared_node.ledger().iter_instances() if r["series_uid"] == series_uid]
    assert len(rows) == 10 and len({r["assoc_id"] for r in rows}) == 2
    assert len({r["job_id"] for r in rows}) == 1, "both halves must belong to one job"


def test_disallowed_calling_ae_is_rejected_at_association(node_factory, series_factory, dcmtk, no_phi) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(allowed_calling_aets=["GOOD_SCU"])
    bad = run_tool([dcmtk("echoscu"), "-aet", "BAD_SCU", "-aec", "DURAL_AI", "127.0.0.1", str(node.port)])
    assert bad.returncode != 0 and "Association Rejected" in bad.stdout + bad.stderr
    files = series_factory("rejected", n_slices=2)
    store = run_tool([dcmtk("storescu"), "-aet", "BAD_SCU", "-aec", "DURAL_AI", "127.0.0.1", str(node.port),
                      *map(str, files)])
    assert store.returncode != 0
    assert node.spool_files() == []
    line = wait_for(lambda: next((ln for ln in node.log().splitlines() if "association rejected" in ln), None))
    assert "calling_ae=BAD_SCU" in line and "not in node.allowed_calling_aets" in line
    good = run_tool([dcmtk("echoscu"), "-aet", "GOOD_SCU", "-aec", "DURAL_AI", "127.0.0.1", str(node.port)])
    assert good.returncode == 0, good.stderr
    no_phi(node.log())


def test_max_associations_and_idle_timeout(node_factory, dcmtk) -> None:  # type: ignore[no-untyped-def]
    """A second association beyond node.max_associations is rejected (and logged); an idle one is
    closed by the node after node.network_timeout_s (the reactor's idle-timer path)."""
    node = node_factory(max_associations=1, network_timeout_s=1.5)
    ae = AE(ae_title="HOLDER")
    held = ae.associate("127.0.0.1", node.port, ae_title="DURAL_AI", contexts=[build_context(Verification)])
    assert held.is_established
    second = run_tool([dcmtk("echoscu"), "-aec", "DURAL_AI", "127.0.0.1", str(node.port)])
    assert second.returncode != 0
    assert "node.max_associations (1)" in wait_for(
        lambda: next((ln for ln in node.log().splitlines() if "association rejected" in ln), None))
    started = time.monotonic()
    wait_for(lambda: not held.is_established, 10, "the node to end the idle association")
    assert 1.0 < time.monotonic() - started < 6
    # The slot frees once the node's association threads have wound down.
    wait_for(lambda: run_tool([dcmtk("echoscu"), "-aec", "DURAL_AI", "127.0.0.1", str(node.port)]).returncode == 0,
             10, "a new association to be accepted")
    assert time.monotonic() - started < 6


# -- transfer syntaxes ----------------------------------------------------------------------------
def _jpeg_baseline_sc(folder: Path) -> Path:
    """An 8-bit secondary capture in JPEG baseline (encoded with Pillow, encapsulated by hand)."""
    pixels = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=90)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType, ds.PatientName, ds.PatientID = "OT", "WSD", "Zyxwert^Quillon", "PID-738291-Q"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = folder / "sc_jpeg.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_compressed_syntaxes_are_stored_byte_exact(shared_node, series_factory, raw_send, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = [series_factory(f"ts_{ts}", n_slices=1, transfer_syntax=ts)[0]
             for ts in (RLELossless, JPEG2000Lossless, JPEGLSLossless)]
    deflated = pydicom.dcmread(series_factory("ts_deflate_src", n_slices=1)[0])
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    files += [tmp_path / "deflated.dcm", _jpeg_baseline_sc(tmp_path / "sc")]
    assert raw_send(shared_node.port, files) == [0] * len(files)
    assert_stored_exactly(shared_node, files)
    for source in files:
        stored = pydicom.dcmread(stored_path(shared_node, source))
        assert stored.file_meta.TransferSyntaxUID == pydicom.dcmread(source).file_meta.TransferSyntaxUID
    sc = pydicom.dcmread(stored_path(shared_node, files[-1]))
    assert sc.pixel_array.shape == (64, 64)  # the JPEG survived intact


# -- bad input --------------------------------------------------------------------------------------
def _with_body(folder: Path, source: Path, new_body: bytes, name: str, sop_uid: str | None = None) -> Path:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    meta = file_meta(ds.SOPClassUID, sop_uid or ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, "1.2.3", "T", "T")
    path = folder / name
    path.write_bytes(meta + new_body)
    return path


def test_bad_data_sets_get_named_failures_and_the_node_keeps_running(shared_node, series_factory, raw_send,  # type: ignore[no-untyped-def]
                                                                      tmp_path, no_phi) -> None:
    good, other, no_pixels = series_factory("bad_src", n_slices=3)
    raw = good.read_bytes()
    truncated = _with_body(tmp_path, good, body(raw)[: len(body(raw)) * 6 // 10], "truncated.dcm")
    garbage = _with_body(tmp_path, other, os.urandom(3000), "garbage.dcm")
    mismatch = _with_body(tmp_path, other, body(other.read_bytes()), "mismatch.dcm", sop_uid=generate_uid())
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(tmp_path / "no_pixels.dcm", enforce_file_format=True)
    before = set(shared_node.spool_files())
    statuses = raw_send(shared_node.port, [truncated, garbage, mismatch, tmp_path / "no_pixels.dcm"])
    assert statuses == [STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, 0]
    assert set(shared_node.spool_files()) - before == {stored_path(shared_node, no_pixels)}
    assert list(shared_node.tmp.iterdir()) == []
    # An unknown SOP class is refused at negotiation; the association and the node go on.
    ae = AE(ae_title="TEST_SCU")
    assoc = ae.associate("127.0.0.1", shared_node.port, ae_title="DURAL_AI",
                         contexts=[build_context("1.2.826.0.1.3680043.9.7777.1", [ExplicitVRLittleEndian]),
                                   build_context(Verification)])
    assert assoc.is_established
    assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == ["1.2.826.0.1.3680043.9.7777.1"]
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert shared_node.alive()
    assert "refused an undecodable data set" in shared_node.log()
    no_phi(shared_node.log())


def test_same_sop_twice_is_idempotent(shared_node, series_factory, raw_send) -> None:  # type: ignore[no-untyped-def]
    files = series_factory("twice", n_slices=2)
    assert raw_send(shared_node.port, files) == [0, 0]
    assert raw_send(shared_node.port, files[:1]) == [0]
    sop = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    rows = [r for r in shared_node.ledger().iter_instances() if r["sop_uid"] == sop]
    assert len(rows) == 1
    assert_stored_exactly(shared_node, files)


def test_low_disk_refuses_with_a700_and_writes_nothing(node_factory, series_factory, raw_send) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(min_free_disk_gb=1e9)
    files = series_factory("low_disk", n_slices=2)
    assert raw_send(node.port, files) == [STATUS_OUT_OF_RESOURCES] * 2
    assert node.spool_files() == [] and list(node.tmp.iterdir()) == []
    assert "free disk below node.min_free_disk_gb" in node.log()
    assert node.ledger().known_paths() == set()


# -- crashes ----------------------------------------------------------------------------------------
def _assert_consistent_after_restart(node: Any, acknowledged: Sequence[Path]) -> None:
    node.start()
    ledger = node.ledger()
    for source in acknowledged:
        sop = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert ledger.has_instance(sop), "an acknowledged instance is missing from the ledger"
    assert_stored_exactly(node, acknowledged)
    files = node.spool_files()
    assert ledger.known_paths() == {str(p) for p in files}, "spool and ledger disagree"
    for path in files:  # every file in the spool is complete
        meta = pydicom.filereader.read_file_meta_info(path)
        scan(body(path.read_bytes()), meta.TransferSyntaxUID)
    assert list(node.tmp.iterdir()) == []


@pytest.mark.slow
def test_kill9_between_instances_then_restart_loses_nothing(node_factory, series_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    node = node_factory()
    files = series_factory("kill_between", n_slices=20)
    assoc = AE(ae_title="TEST_SCU").associate(
        "127.0.0.1", node.port, ae_title="DURAL_AI",
        contexts=[build_context(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)])
    acknowledged = []
    for i, f in enumerate(files):
        if i == 7:
            node.kill9()
        rsp = assoc.send_c_store(f) if assoc.is_established else Dataset()
        if rsp.get("Status") == 0:
            acknowledged.append(f)
    assoc.release()
    assert len(acknowledged) == 7
    _assert_consistent_after_restart(node, acknowledged)


@pytest.mark.slow
def test_kill9_during_transfer_and_after_completion_then_restart(node_factory, series_factory, dcmtk, tool) -> None:  # type: ignore[no-untyped-def]
    node = node_factory()
    files = series_factory("kill_during", n_slices=40, rows=512, cols=512)
    # stdbuf: storescu's log goes through stdio, block-buffered into a pipe otherwise.
    proc = subprocess.Popen([tool("stdbuf"), "-oL", "-eL", dcmtk("storescu"), "-v", "-aec", "DURAL_AI", "127.0.0.1", str(node.port),
                             *map(str, files)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: sum("Received Store Response (Success)" in ln for ln in list(lines)) >= 5, 60,
                 "five acknowledged instances")
    except AssertionError:
        proc.kill()
        raise AssertionError("storescu did not get going:\n" + "".join(lines[-20:]) + node.log()) from None
    node.kill9()  # mid-association, most likely mid-instance
    proc.wait(60)
    reader.join(10)
    acknowledged = files[: sum("Received Store Response (Success)" in ln for ln in lines)]
    assert 5 <= len(acknowledged) < len(files)
    _assert_consistent_after_restart(node, acknowledged)
    # Now the whole series, then kill -9 right after the last acknowledgement.
    store = run_tool([dcmtk("storescu"), "-aec", "DURAL_AI", "127.0.0.1", str(node.port), *map(str, files)])
    assert store.returncode == 0, store.stdout + store.stderr
    node.kill9()
    _assert_consistent_after_restart(node, files)


# -- in process -------------------------------------------------------------------------------------
class _Assoc:
    requestor = SimpleNamespace(ae_title="TEST_SCU", address="127.0.0.1")


def _event(source: Path) -> Any:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    request = SimpleNamespace(AffectedSOPInstanceUID=ds.SOPInstanceUID, AffectedSOPClassUID=ds.SOPClassUID,
                              DataSet=io.BytesIO(body(source.read_bytes())))
    return SimpleNamespace(request=request, context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
                           assoc=_Assoc())


@pytest.mark.parametrize("failure, status", [
    (OSError(errno.ENOSPC, "No space left on device"), STATUS_OUT_OF_RESOURCES),
    (OSError(errno.EIO, "Input/output error"), STATUS_OUT_OF_RESOURCES),
    (RuntimeError("unexpected"), STATUS_CANNOT_UNDERSTAND),
])
def test_handler_maps_failures_to_statuses_and_never_raises(tmp_path, series_factory, failure, status) -> None:  # type: ignore[no-untyped-def]
    class Broken(Spool):
        def put_file(self, *args: Any, **kwargs: Any) -> Path:
            raise failure

    source = series_factory("handler", n_slices=1)[0]
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    state = ReceiverState(min_free_gb=0)
    rsp = handle_store(_event(source), Broken(tmp_path), ledger, state)
    assert rsp.Status == status and rsp.ErrorComment
    assert state.failed == 1 and ledger.known_paths() == set()
    ok = handle_store(_event(source), Spool(tmp_path), ledger, state)
    assert ok == 0 and len(ledger.known_paths()) == 1


def test_start_receiver_cleans_tmp_closes_associations_and_rescans(tmp_path, series_factory, free_port) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_config({"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": str(tmp_path / "var"),
                                 "min_free_disk_gb": 0}})
    spool = Spool(cfg.data_dir)
    source = series_factory("rescan", n_slices=1)[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    # A crash after the rename but before the ledger commit, and one in the middle of a write.
    spool.put_file(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, source.read_bytes())
    (spool.tmp_dir / "0123abcd.part").write_bytes(b"half an instance")
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    ledger.open_association("dead-run", "OLD_SCU")
    receiver = start_receiver(cfg, ledger)
    try:
        assert ledger.has_instance(ds.SOPInstanceUID)
        row = next(ledger.iter_instances())
        assert (row["study_uid"], row["series_uid"], row["sop_class_uid"]) == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID)
        assert list(spool.tmp_dir.iterdir()) == []
        assert ledger._db().execute("SELECT closed_at FROM associations").fetchone()[0] is not None
        assert receiver.status()["low_disk"] is False
    finally:
        receiver.shutdown()
