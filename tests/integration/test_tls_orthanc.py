"""The node and Orthanc talking DICOM TLS only, both sides demanding certificates from the site CA.

Path: Orthanc (Lua forwards the stable CT series over TLS) -> `dicom-node serve` (node.tls,
embedded queue: the model runs in the node's process) -> results C-STOREd over TLS back to
Orthanc (destinations[].tls, host name checked). Then query/retrieve (C-FIND, C-GET) over TLS,
and what the node says when Orthanc refuses it for lack of a client certificate.

Orthanc's DICOM TLS options (DicomTlsEnabled, DicomTlsCertificate, DicomTlsPrivateKey,
DicomTlsTrustedCertificates: 1.9.0; DicomTlsRemoteCertificateRequired: 1.9.3) and a modality's
UseDicomTls; the Debian package here is 1.10.1.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
import requests
import yaml

from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.qr import find_series, get_series
from dicom_node.scu import DeliveryError, echo
from tests.integration.conftest import Orthanc, Proc, wait_until
from tests.helpers import free_port
from tests.tls_pki import Pki, make_pki

pytestmark = [pytest.mark.network, pytest.mark.slow]
BIN = Path(sys.executable).parent


class TlsStack:
    def __init__(self, root: Path, pki: Pki, weights: Path) -> None:
        self.root, self.pki = root, pki
        self.node_port = free_port()
        self.orthanc = Orthanc(root / "orthanc", "DURAL_AI", self.node_port)
        config = json.loads(self.orthanc.config.read_text())
        config.update(DicomTlsEnabled=True, DicomTlsCertificate=str(pki.peer.cert),
                      DicomTlsPrivateKey=str(pki.peer.key), DicomTlsTrustedCertificates=str(pki.ca),
                      DicomTlsRemoteCertificateRequired=True, DicomAlwaysAllowFind=True, DicomAlwaysAllowGet=True,
                      DicomModalities={"node": {"AET": "DURAL_AI", "Host": "127.0.0.1", "Port": self.node_port,
                                                "UseDicomTls": True}})
        self.orthanc.config.write_text(json.dumps(config, indent=1))
        self.data_dir = root / "node"
        self.config_path = root / "node.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.node_port,
                     "data_dir": str(self.data_dir),
                     "tls": {"certificate": str(pki.node.cert), "private_key": str(pki.node.key),
                             "ca_certificates": str(pki.ca), "require_client_certificate": True}},
            # Few slices keep the model's share of the test short; the path is what is tested.
            "series": {"quiet_seconds": 2, "min_slices": 6},
            "destinations": [self.destination()],
            "queue": {"broker_url": "embedded"},
            "model": {"weights": str(weights), "device": "cpu", "threads": 2},
            "http": {"enabled": False},
        }))
        self.node: Proc | None = None

    def destination(self, **tls: Any) -> dict[str, Any]:
        return {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": self.orthanc.dicom_port,
                "backoff_base_s": 1, "backoff_max_s": 2, "timeout_s": 10,
                "tls": {"ca_certificates": str(self.pki.ca), "certificate": str(self.pki.node.cert),
                        "private_key": str(self.pki.node.key), **tls}}

    def start(self) -> None:
        self.orthanc.start()
        self.node = Proc([str(BIN / "dicom-node"), "--config", str(self.config_path), "serve"],
                         self.root / "node.log")

        def listening() -> bool:
            assert self.node is not None and self.node.alive(), f"the node exited:\n{self.node.log()}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.node_port)) == 0

        wait_until(listening, 60, "the node's DICOM TLS port")

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.orthanc.stop()


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[TlsStack]:
    root = tmp_path_factory.mktemp("tls_e2e")
    stack = TlsStack(root, make_pki(root / "pki"), weights)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()


def test_ct_forwarded_over_tls_and_results_back_over_tls(tls_stack, make_ct):
    files, uids = make_ct("sdh", slices=8)
    tls_stack.orthanc.upload(files)
    ledger = Ledger(tls_stack.data_dir / "ledger.sqlite3")

    def delivered() -> Any:
        jobs = [j for j in ledger.jobs() if j.series_uid == uids["series"]]
        return jobs[-1] if jobs and jobs[-1].state == "delivered" else None

    try:
        job = wait_until(delivered, 240, "the job to be delivered over TLS")
    except AssertionError:
        assert tls_stack.node is not None
        raise AssertionError(f"{tls_stack.node.log(4000)}\n--- orthanc\n{tls_stack.orthanc.proc.log(3000)}")
    files_sent = job.result["files"]
    assert {f["type"] for f in files_sent} == {"seg", "sr", "sc", "kos"}
    for f in files_sent:
        assert tls_stack.orthanc.count_sop(f["sop_instance_uid"]) == 1, f
    assert tls_stack.node is not None
    log = tls_stack.node.log(200_000)
    assert "tls_peer=pacs" in log  # Orthanc's association came in with its certificate
    assert "TLS connection refused" not in log


def test_query_and_c_get_over_tls(tls_stack, make_ct, tmp_path):
    files, uids = make_ct("edh", slices=2)
    requests.post(f"{tls_stack.orthanc.url}/instances", data=files[0].read_bytes(), timeout=30).raise_for_status()
    cfg = parse_config({"node": {"ae_title": "DURAL_QR", "data_dir": str(tmp_path / "var")},
                        "destinations": [tls_stack.destination()]})
    [orthanc] = cfg.destinations
    assert echo(orthanc, "DURAL_QR", timeout=10) == 0
    series = find_series(orthanc, "DURAL_QR", uids["study"], timeout=10)
    assert [s["SeriesInstanceUID"] for s in series] == [uids["series"]]
    got: list[pydicom.Dataset] = []

    def on_store(event: Any) -> int:
        got.append(event.dataset)
        return 0x0000

    result = get_series(orthanc, "DURAL_QR", uids["study"], uids["series"], on_store, timeout=10)
    assert result.ok and result.completed == 1 and [str(ds.SeriesInstanceUID) for ds in got] == [uids["series"]]


def test_orthanc_refuses_a_node_without_a_client_certificate(tls_stack, tmp_path):
    cfg = parse_config({"node": {"ae_title": "DURAL_QR", "data_dir": str(tmp_path / "var")},
                        "destinations": [{**tls_stack.destination(), "tls": {"ca_certificates": str(tls_stack.pki.ca)}}]})
    with pytest.raises(DeliveryError, match="TLS: the peer requires a client certificate: set tls.certificate"):
        echo(cfg.destinations[0], "DURAL_QR", timeout=10)
    rogue = parse_config({"node": {"ae_title": "DURAL_QR", "data_dir": str(tmp_path / "var")},
                          "destinations": [tls_stack.destination(certificate=str(tls_stack.pki.rogue.cert),
                                                                 private_key=str(tls_stack.pki.rogue.key))]})
    with pytest.raises(DeliveryError, match="TLS: the peer refused our certificate"):
        echo(rogue.destinations[0], "DURAL_QR", timeout=10)
    other_ca = parse_config({"node": {"ae_title": "DURAL_QR", "data_dir": str(tmp_path / "var")},
                             "destinations": [tls_stack.destination(ca_certificates=str(tls_stack.pki.other_ca))]})
    with pytest.raises(DeliveryError, match="TLS: .*tls.ca_certificates"):
        echo(other_ca.destinations[0], "DURAL_QR", timeout=10)
    assert tls_stack.orthanc.proc is not None and tls_stack.orthanc.proc.alive()
