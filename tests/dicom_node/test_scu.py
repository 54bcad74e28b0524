"""The client: destinations, presentation contexts, echo/send commands, results and errors, against
the node and dcmtk's storescp."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from dicom_node.config import ConfigError, Destination
from dicom_node.scu import DeliveryError, _contexts, echo, parse_destination, send_datasets, send_files

EXE = Path(sys.executable).parent / "dicom-node"
CONFIGURED = [Destination(name="pacs", ae_title="ORTHANC", host="10.0.0.5", port=4242)]


@pytest.mark.parametrize("text, expected", [
    ("pacs", ("ORTHANC", "10.0.0.5", 4242)),
    ("STORESCP@127.0.0.1:104", ("STORESCP", "127.0.0.1", 104)),
    ("A@pacs.example.org:11112", ("A", "pacs.example.org", 11112)),
    ("V6@[::1]:4242", ("V6", "::1", 4242)),
])
def test_parse_destination(text: str, expected: tuple[str, str, int]) -> None:
    dest = parse_destination(text, CONFIGURED)
    assert (dest.ae_title, dest.host, dest.port) == expected


@pytest.mark.parametrize("text", ["orthanc", "AE@host", "@host:1", "AE@host:99999", "A" * 17 + "@h:1", "AE@h:x"])
def test_parse_destination_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="destination"):
        parse_destination(text, CONFIGURED)


def _ds(sop_class: str, syntax: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def test_contexts_request_exactly_the_classes_sent() -> None:
    ct, seg = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.66.4"
    batches = _contexts([_ds(ct, ExplicitVRLittleEndian), _ds(ct, ExplicitVRLittleEndian),
                         _ds(seg, RLELossless)], ExplicitVRLittleEndian)
    assert len(batches) == 1
    proposed = {(str(cx.abstract_syntax), tuple(map(str, cx.transfer_syntax))) for cx in batches[0]}
    assert proposed == {
        (ct, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (seg, (RLELossless,)),
        (seg, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),  # native fallback for a compressed file
    }


def test_contexts_split_over_associations_at_128() -> None:
    datasets = [_ds(f"1.2.826.0.1.3680043.9.1.{i}", JPEG2000Lossless) for i in range(100)]
    batches = _contexts(datasets, ExplicitVRLittleEndian)
    assert [len(b) for b in batches] == [128, 72]
    classes = [{str(cx.abstract_syntax) for cx in b} for b in batches]
    assert not classes[0] & classes[1], "a SOP class's contexts must stay in one association"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})


@pytest.mark.network
def test_echo_command(shared_node, node_factory) -> None:  # type: ignore[no-untyped-def]
    ok = cli("--config", str(shared_node.config), "echo", shared_node.address())
    assert ok.returncode == 0 and "success" in ok.stdout, ok.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = cli("--config", str(shared_node.config), "echo", f"NOBODY@127.0.0.1:{closed_port}")
    assert down.returncode == 1 and "cannot be reached" in down.stderr
    strict = node_factory(allowed_calling_aets=["SOMEONE_ELSE"])
    refused = cli("--config", str(shared_node.config), "echo", strict.address())
    assert refused.returncode == 1 and "rejected the association" in refused.stderr
    unknown = cli("--config", str(shared_node.config), "echo", "not-configured")
    assert unknown.returncode == 2 and "AE@host:port" in unknown.stderr


@pytest.mark.network
def test_send_command_recurses_folders_and_reports(shared_node, series_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = series_factory("cli_send", n_slices=4)
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / ("sub" if i % 2 else "") / f.name).write_bytes(f.read_bytes())
    (folder / "README.txt").write_text("not DICOM")
    result = cli("--config", str(shared_node.config), "send", str(folder), "--to", shared_node.address())
    assert result.returncode == 0, result.stderr
    assert "4 of 4 stored" in result.stdout and "1 non-DICOM files skipped" in result.stdout
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert len(list((shared_node.spool / ds.StudyInstanceUID / ds.SeriesInstanceUID).iterdir())) == 4
    named = cli("--config", str(shared_node.config), "send", str(folder / "README.txt"), "--to",
                shared_node.address())
    assert named.returncode == 2 and "no DICOM files" in named.stderr
    mixed = cli("--config", str(shared_node.config), "send", str(folder / "README.txt"), str(files[0]), "--to",
                shared_node.address())
    assert mixed.returncode == 1 and "README.txt: not a readable DICOM file" in mixed.stderr


@pytest.fixture
def storescp(tmp_path: Path, dcmtk) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """dcmtk storescp (uncompressed transfer syntaxes only, its default) writing to a folder."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen([dcmtk("storescp"), "--aetitle", "STORESCP", "-od", str(out), "-uf", str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    dest = Destination(name="storescp", ae_title="STORESCP", host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            echo(dest, "TEST_SCU", timeout=5)
            break
        except DeliveryError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield dest, out
    proc.kill()
    proc.wait(10)


@pytest.mark.network
def test_send_to_storescp_decompresses_when_the_peer_refuses_the_syntax(storescp, series_factory) -> None:  # type: ignore[no-untyped-def]
    dest, out = storescp
    plain = series_factory("scu_plain", n_slices=2)
    j2k = series_factory("scu_j2k", n_slices=1, transfer_syntax=JPEG2000Lossless)
    results = send_files(plain + j2k, dest, "TEST_SCU")
    assert [r.status for r in results] == [0, 0, 0] and all(r.ok for r in results)
    assert [r.path for r in results] == plain + j2k
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in out.iterdir()}
    source = pydicom.dcmread(j2k[0])
    got = received[source.SOPInstanceUID]
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, source.pixel_array)  # lossless round trip


@pytest.mark.network
def test_failures_raise_delivery_error_with_per_instance_results(shared_node, node_factory, series_factory,  # type: ignore[no-untyped-def]
                                                                  storescp) -> None:
    files = series_factory("scu_errors", n_slices=2)
    datasets = [pydicom.dcmread(f) for f in files]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = Destination(name="down", ae_title="DOWN", host="127.0.0.1", port=s.getsockname()[1])
    with pytest.raises(DeliveryError, match="cannot be reached") as err:
        send_datasets(datasets, closed, "TEST_SCU", timeout=5)
    assert [r.status for r in err.value.results] == [None, None] and not any(r.ok for r in err.value.results)
    strict = node_factory(allowed_calling_aets=["SOMEONE_ELSE"])
    with pytest.raises(DeliveryError, match="rejected"):
        send_datasets(datasets, parse_destination(strict.address()), "TEST_SCU", timeout=5)
    # A peer that does not support the SOP class: the association fails, nothing is sent.
    sc = datasets[0].copy()
    sc.SOPClassUID = "1.2.826.0.1.3680043.9.7777.2"
    with pytest.raises(DeliveryError, match="aborted|no common"):
        send_datasets([sc], storescp[0], "TEST_SCU", timeout=5)


@pytest.mark.network
def test_refused_instance_is_reported_not_raised(node_factory, series_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(min_free_disk_gb=1e9)
    files = series_factory("scu_refused", n_slices=2)
    results = send_files(files, parse_destination(node.address()), "TEST_SCU", timeout=10)
    assert [r.status for r in results] == [0xA700, 0xA700]
    assert not any(r.ok for r in results) and "disk" in (results[0].error or "")
