"""DICOM TLS against the running node (``dicom-node serve``): dcmtk's echoscu and storescu over
TLS with and without a client certificate, a certificate from another CA, plain DICOM and a
silent TCP peer on the TLS port, the plain listener beside it, and the node's own client
(``dicom-node echo``, ``scu.send_files``) over TLS."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from dicom_node.config import parse_config
from dicom_node.scu import DeliveryError, echo, send_files
from tests.tls_pki import Pki, make_pki

pytestmark = pytest.mark.network
EXE = Path(sys.executable).parent / "dicom-node"
ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def node_tls(pki: Pki, **kw: Any) -> dict[str, Any]:
    return {"certificate": str(pki.node.cert), "private_key": str(pki.node.key), "ca_certificates": str(pki.ca),
            **kw}


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)


def tls_echoscu(dcmtk: Any, pki: Pki, port: int, pair: Any = "client") -> subprocess.CompletedProcess[str]:
    """dcmtk echoscu over TLS; ``pair`` names our certificate, None for anonymous TLS (+tla)."""
    auth = ["+tla"] if pair is None else ["+tls", str(getattr(pki, pair).key), str(getattr(pki, pair).cert)]
    return run([dcmtk("echoscu"), *auth, "+cf", str(pki.ca), "-aec", "DURAL_AI", "-to", "10", "127.0.0.1", str(port)])


def stored_series(node: Any, series_uid: str, n: int) -> list[dict[str, Any]]:
    """The ledger's rows of ``series_uid`` once all ``n`` are recorded."""
    deadline = time.monotonic() + 20
    while True:
        rows = [r for r in node.ledger().iter_instances() if r["series_uid"] == series_uid]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def wait_log(node: Any, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"{text!r} not in the node's log:\n{node.log()[-3000:]}"
        time.sleep(0.05)
    return node.log()


@pytest.fixture(scope="module")
def tls_node(pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    """A node with mutual TLS on node.port (require_client_certificate left at its default)."""
    from tests.dicom_node.conftest import Node

    node = Node(tmp_path_factory.mktemp("tls_node"), tls=node_tls(pki))
    yield node
    node.kill9()


def test_dcmtk_echo_and_store_with_a_site_certificate(tls_node, pki, dcmtk, series_factory, no_phi):
    assert 'msg="receiver listening"' in tls_node.log() and "tls=True" in tls_node.log()
    echo_run = tls_echoscu(dcmtk, pki, tls_node.port)
    assert echo_run.returncode == 0, echo_run.stderr
    files = series_factory("tls_dcmtk", n_slices=5)
    store = run([dcmtk("storescu"), "+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca),
                 "-aec", "DURAL_AI", "-aet", "MODALITY", "127.0.0.1", str(tls_node.port), *map(str, files)])
    assert store.returncode == 0, store.stderr
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    rows = stored_series(tls_node, series_uid, len(files))
    assert len(rows) == len(files)
    stored = pydicom.dcmread(rows[0]["path"])
    assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY"
    # The association log names the client's certificate (a device), never a patient.
    log = wait_log(tls_node, "tls_peer=modality")
    no_phi(log)


@pytest.mark.parametrize("pair,why", [
    (None, "the client presented no certificate"),
    ("rogue", "not signed by node.tls.ca_certificates"),
])
def test_clients_without_a_site_certificate_are_refused(tls_node, pki, dcmtk, pair, why):
    refused = tls_echoscu(dcmtk, pki, tls_node.port, pair)
    assert refused.returncode != 0
    wait_log(tls_node, why)
    assert tls_node.alive()
    assert tls_echoscu(dcmtk, pki, tls_node.port).returncode == 0  # still serving


def test_plain_dicom_on_the_tls_port_fails_cleanly(tls_node, pki, dcmtk, series_factory):
    files = series_factory("tls_plain", n_slices=2)
    plain_echo = run([dcmtk("echoscu"), "-aec", "DURAL_AI", "-to", "10", "127.0.0.1", str(tls_node.port)])
    plain_store = run([dcmtk("storescu"), "-aec", "DURAL_AI", "-to", "10", "127.0.0.1", str(tls_node.port),
                       *map(str, files)])
    assert plain_echo.returncode != 0 and plain_store.returncode != 0
    wait_log(tls_node, "the client spoke plain DICOM (or another protocol) to the TLS port")
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert [r for r in tls_node.ledger().iter_instances() if r["series_uid"] == series_uid] == []
    assert tls_node.alive() and tls_echoscu(dcmtk, pki, tls_node.port).returncode == 0


def test_a_silent_connection_does_not_hold_up_other_peers(tls_node, pki, dcmtk):
    # The handshake runs in the connection's own thread: a peer that connects and sends nothing
    # must not stop the node from accepting the next one.
    with socket.create_connection(("127.0.0.1", tls_node.port)):
        started = time.monotonic()
        assert tls_echoscu(dcmtk, pki, tls_node.port).returncode == 0
        assert time.monotonic() - started < 10


def test_sigterm_does_not_wait_for_a_pending_handshake(node_factory, pki):
    node = node_factory(tls=node_tls(pki), acse_timeout_s=60)
    with socket.create_connection(("127.0.0.1", node.port)):
        time.sleep(0.2)  # the handshake thread is waiting for the silent peer
        started = time.monotonic()
        assert node.stop() == 0, node.log()[-3000:]
        assert time.monotonic() - started < 15
    assert 'msg="dicom-node stopped"' in node.log()


def test_optional_client_certificate_and_the_plain_listener(node_factory, pki, dcmtk, series_factory, free_port):
    node = node_factory(tls=node_tls(pki, require_client_certificate=False), plain_port=free_port())
    assert tls_echoscu(dcmtk, pki, node.port, None).returncode == 0  # anonymous TLS is let in
    assert tls_echoscu(dcmtk, pki, node.port, "rogue").returncode != 0  # a certificate must still chain to the CA
    plain_port = yaml.safe_load(node.config.read_text())["node"]["plain_port"]
    assert "unencrypted listener open beside the TLS one" in node.log()
    files = series_factory("tls_plain_port", n_slices=2)
    store = run([dcmtk("storescu"), "-aec", "DURAL_AI", "127.0.0.1", str(plain_port), *map(str, files)])
    assert store.returncode == 0, store.stderr
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert len(stored_series(node, series_uid, len(files))) == len(files)


def _destination(tls_node: Any, pki: Pki, **tls: Any) -> dict[str, Any]:
    return {"name": "node", "ae_title": "DURAL_AI", "host": "127.0.0.1", "port": tls_node.port, "timeout_s": 10,
            "tls": {"ca_certificates": str(pki.ca), **tls}}


def test_echo_command_over_tls(tls_node, pki, tmp_path):
    config = tmp_path / "client.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"ae_title": "DURAL_SCU", "data_dir": str(tmp_path / "var")}, "http": {"enabled": False},
        "destinations": [_destination(tls_node, pki, certificate=str(pki.peer.cert), private_key=str(pki.peer.key)),
                         {**_destination(tls_node, pki), "name": "nocert", "ae_title": "DURAL_AI2"}]}))
    ok = run([str(EXE), "--config", str(config), "echo", "node"])
    assert ok.returncode == 0 and ", TLS): success" in ok.stdout, ok.stdout + ok.stderr
    refused = run([str(EXE), "--config", str(config), "echo", "nocert"])
    assert refused.returncode == 1
    assert "requires a client certificate: set tls.certificate and tls.private_key" in refused.stderr, refused.stderr


def test_send_files_over_tls(tls_node, pki, tmp_path, series_factory):
    cfg = parse_config({"node": {"ae_title": "DURAL_SCU", "data_dir": str(tmp_path / "var")},
                        "destinations": [_destination(tls_node, pki, certificate=str(pki.peer.cert),
                                                      private_key=str(pki.peer.key))]})
    [dest] = cfg.destinations
    assert echo(dest, "DURAL_SCU", timeout=10) == 0
    files = series_factory("tls_scu", n_slices=4, rows=256, cols=256)  # PDUs larger than one TLS record
    results = send_files(files, dest, "DURAL_SCU", timeout=10)
    assert [r.status for r in results] == [0] * len(files)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert len(stored_series(tls_node, series_uid, len(files))) == len(files)
    wrong = parse_config({"node": {"ae_title": "DURAL_SCU", "data_dir": str(tmp_path / "var")},
                          "destinations": [_destination(tls_node, pki, ca_certificates=str(pki.other_ca),
                                                        certificate=str(pki.peer.cert),
                                                        private_key=str(pki.peer.key))]}).destinations[0]
    with pytest.raises(DeliveryError, match="TLS: .*not in tls.ca_certificates|TLS: .*not signed by a CA in tls"):
        send_files(files[:1], wrong, "DURAL_SCU", timeout=10)
