"""DICOM TLS configuration and contexts: every bad ``tls:`` block stops ``check-config`` with exit 2
and a message naming the key and the fix; good blocks give TLS 1.2+ contexts that verify what
the README says they verify (checked by real handshakes between Python's ssl sockets)."""
from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from dicom_node import cli, tls, tls_server
from dicom_node.config import load_config
from tests.tls_pki import Pki, make_pki

pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def node_tls(pki: Pki, **kw: Any) -> dict[str, Any]:
    return {"certificate": str(pki.node.cert), "private_key": str(pki.node.key), "ca_certificates": str(pki.ca),
            "require_client_certificate": True, **kw}


def dest(pki: Pki, **tls_kw: Any) -> dict[str, Any]:
    return {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
            "tls": {"ca_certificates": str(pki.ca), "certificate": str(pki.node.cert),
                    "private_key": str(pki.node.key), **tls_kw}}


def world_readable_key(pki: Pki, tmp: Path) -> str:
    path = tmp / "open.key"
    path.write_bytes(pki.node.key.read_bytes())
    os.chmod(path, 0o644)
    return str(path)


def encrypted_key(pki: Pki, tmp: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.node.key.read_bytes(), None)
    path = tmp / "enc.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    os.chmod(path, 0o600)
    return str(path)


def not_pem(tmp: Path) -> str:
    path = tmp / "der.crt"
    path.write_bytes(b"\x30\x82\x01\x0a garbage")
    return str(path)


Case = Callable[[Pki, Path], dict[str, Any]]
BAD: list[tuple[str, Case, list[str]]] = [
    ("certificate missing", lambda p, t: {"node": {"tls": node_tls(p, certificate=str(t / "nope.crt"))}},
     ["node.tls.certificate:", "nope.crt does not exist", "give the path of the PEM file"]),
    ("key missing", lambda p, t: {"node": {"tls": node_tls(p, private_key=str(t / "nope.key"))}},
     ["node.tls.private_key:", "nope.key does not exist"]),
    ("CA missing", lambda p, t: {"node": {"tls": node_tls(p, ca_certificates=str(t / "ca.pem"))}},
     ["node.tls.ca_certificates:", "ca.pem does not exist"]),
    ("certificate is a folder", lambda p, t: {"node": {"tls": node_tls(p, certificate=str(t))}},
     ["node.tls.certificate:", "is a folder"]),
    ("key of another certificate", lambda p, t: {"node": {"tls": node_tls(p, private_key=str(p.client.key))}},
     ["node.tls.private_key:", "is not the key of the certificate", "give the key the certificate was issued for"]),
    ("certificate file given as key", lambda p, t: {"node": {"tls": node_tls(p, private_key=str(p.node.cert))}},
     ["node.tls.private_key:", "is not a PEM private key"]),
    ("key readable by everyone", lambda p, t: {"node": {"tls": node_tls(p, private_key=world_readable_key(p, t))}},
     ["node.tls.private_key:", "readable by every user", "chmod 600"]),
    ("encrypted key", lambda p, t: {"node": {"tls": node_tls(p, private_key=encrypted_key(p, t))}},
     ["node.tls.private_key:", "is encrypted", "store it unencrypted"]),
    ("certificate not PEM", lambda p, t: {"node": {"tls": node_tls(p, certificate=not_pem(t))}},
     ["node.tls.certificate:", "holds no PEM certificate", "openssl x509 -inform der"]),
    ("expired certificate", lambda p, t: {"node": {"tls": node_tls(p, certificate=str(p.expired.cert),
                                                                    private_key=str(p.expired.key))}},
     ["node.tls.certificate:", "expired on", "renew it"]),
    ("CA file with only an expired certificate",
     lambda p, t: {"node": {"tls": node_tls(p, ca_certificates=str(p.expired.cert))}},
     ["node.tls.ca_certificates:", "expired on", "renew it"]),
    ("no CA while clients must present certificates",
     lambda p, t: {"node": {"tls": {k: v for k, v in node_tls(p).items() if k != "ca_certificates"}}},
     ["node.tls:", "ca_certificates must name the CA file", "require_client_certificate: false"]),
    ("unknown tls key", lambda p, t: {"node": {"tls": node_tls(p, certificat="x")}},
     ["node.tls.certificat: unknown key"]),
    ("plain_port without tls", lambda p, t: {"node": {"plain_port": 11113}},
     ["node.plain_port only applies beside node.tls"]),
    ("plain_port equals port", lambda p, t: {"node": {"port": 11112, "plain_port": 11112, "tls": node_tls(p)}},
     ["node.plain_port must differ from node.port"]),
    ("destination certificate without key",
     lambda p, t: {"destinations": [{**dest(p), "tls": {"ca_certificates": str(p.ca), "certificate": str(p.node.cert)}}]},
     ["destinations.0.tls:", "certificate and private_key must be given together"]),
    ("destination without CA", lambda p, t: {"destinations": [{**dest(p), "tls": {}}]},
     ["destinations.0.tls.ca_certificates:", "Field required"]),
    ("receiver setting on a destination", lambda p, t: {"destinations": [dest(p, require_client_certificate=True)]},
     ["destinations.0.tls:", "require_client_certificate applies to node.tls only"]),
    ("destination CA missing", lambda p, t: {"destinations": [dest(p, ca_certificates=str(t / "pacs-ca.pem"))]},
     ["destinations.0.tls (destination 'pacs').ca_certificates:", "pacs-ca.pem does not exist"]),
    ("destination key mismatch", lambda p, t: {"destinations": [dest(p, private_key=str(p.peer.key))]},
     ["destinations.0.tls (destination 'pacs').private_key:", "is not the key of the certificate"]),
]


@pytest.mark.parametrize("case,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_tls_config_exits_2_naming_the_key(pki, tmp_path, capsys, case, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**case(pki, tmp_path), "http": {"enabled": False}}))
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dicom-node: {path}"), err
    for text in expected:
        assert text in err, err


def test_relative_paths_are_taken_from_the_config_folder(pki, tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    for src in (pki.node.cert, pki.node.key, pki.ca):
        (folder / src.name).write_bytes(src.read_bytes())
        os.chmod(folder / src.name, 0o600)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "var"), "tls": {
        "certificate": pki.node.cert.name, "private_key": pki.node.key.name, "ca_certificates": pki.ca.name}},
        "destinations": [{**dest(pki), "tls": {"ca_certificates": pki.ca.name}}]}))
    cfg = load_config(path)
    assert cfg.node.tls is not None and cfg.node.tls.certificate == folder / pki.node.cert.name
    assert cfg.node.tls.require_client_certificate is True  # mutual TLS unless turned off
    assert cfg.destinations[0].tls is not None and cfg.destinations[0].tls.ca_certificates == folder / pki.ca.name
    assert cfg.destinations[0].tls.check_hostname is True


def test_a_stale_entry_in_a_ca_bundle_is_tolerated(pki, tmp_path):
    bundle = tmp_path / "trusted.crt"
    bundle.write_bytes(pki.expired.cert.read_bytes() + pki.ca.read_bytes())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "var"),
                                             "tls": node_tls(pki, ca_certificates=str(bundle))}}))
    assert load_config(path).node.tls is not None


def test_shipped_config_has_tls_off(tmp_path):
    shipped = Path(__file__).resolve().parents[2] / "config.yaml"
    data = yaml.safe_load(shipped.read_text())
    assert "tls" not in data["node"] and all("tls" not in d for d in data.get("destinations", []))
    assert "tls:" in shipped.read_text()  # the commented example is there


# -- handshakes between the contexts ------------------------------------------------------------------
def serve_once(server_ctx: ssl.SSLContext) -> tuple[int, threading.Thread, dict[str, Any]]:
    """A TLS server for one connection on loopback; ``out["server"]`` gets its error, if any."""
    listener = socket.create_server(("127.0.0.1", 0))
    out: dict[str, Any] = {"server": None}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.settimeout(3)
                s.recv(1)
        except (ssl.SSLError, OSError) as exc:
            out["server"] = exc
        finally:
            listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return listener.getsockname()[1], thread, out


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "127.0.0.1"
              ) -> tuple[BaseException | None, BaseException | None, str | None]:
    """Run one handshake over loopback; returns (server error, client error, TLS version)."""
    port, thread, out = serve_once(server_ctx)
    client_error, version = None, None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=host) as s:
                version = s.version()
                s.sendall(b"x")
                s.settimeout(1)
                try:
                    s.recv(1)
                except (TimeoutError, socket.timeout):
                    pass
    except (ssl.SSLError, OSError) as exc:
        client_error = exc
    thread.join(10)
    return out["server"], client_error, version


def test_mutual_tls_handshake_and_minimum_version(pki):
    server = tls.server_context(tls.TlsConfig(certificate=pki.node.cert, private_key=pki.node.key,
                                              ca_certificates=pki.ca))
    client = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca, certificate=pki.peer.cert,
                                                  private_key=pki.peer.key))
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED and client.verify_mode == ssl.CERT_REQUIRED
    server_error, client_error, version = handshake(server, client)
    assert server_error is None and client_error is None and version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_client_is_refused(pki):
    server = tls.server_context(tls.TlsConfig(certificate=pki.node.cert, private_key=pki.node.key,
                                              require_client_certificate=False))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki.ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    server_error, client_error, version = handshake(server, old)
    assert client_error is not None and server_error is not None and version is None


@pytest.mark.parametrize("client_pair,refused_because,sender_told", [
    (None, "presented no certificate", "requires a client certificate"),
    ("rogue", "not signed by node.tls.ca_certificates", "refused our certificate"),
])
def test_receiver_refuses_clients_without_a_site_certificate(pki, client_pair, refused_because, sender_told):
    server = tls.server_context(tls.TlsConfig(certificate=pki.node.cert, private_key=pki.node.key,
                                              ca_certificates=pki.ca))
    pair = getattr(pki, client_pair) if client_pair else None
    client = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca, certificate=pair and pair.cert,
                                                  private_key=pair and pair.key))
    server_error, _, _ = handshake(server, client)
    assert server_error is not None and refused_because in tls_server.explain_refused(server_error, 30)
    # What a sender is told (with TLS 1.3 the verdict arrives after the client's own handshake).
    port, thread, _ = serve_once(server)
    why = tls.probe("127.0.0.1", port, client, timeout=5)
    thread.join(10)
    assert why is not None and sender_told in why, why


def test_probe_names_a_plain_peer_and_a_closed_port(pki):
    client = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def plain_dicom_peer() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(bytes.fromhex("0700000000040000 0000".replace(" ", "")))  # A-ABORT, as a DICOM peer would
        conn.close()

    thread = threading.Thread(target=plain_dicom_peer)
    thread.start()
    why = tls.probe("127.0.0.1", port, client, timeout=5)
    thread.join(10)
    listener.close()
    assert why is not None and "does not speak TLS on this port" in why, why
    assert "cannot be reached" in (tls.probe("127.0.0.1", port, client, timeout=5) or "")


def test_optional_client_certificate(pki):
    server = tls.server_context(tls.TlsConfig(certificate=pki.node.cert, private_key=pki.node.key,
                                              ca_certificates=pki.ca, require_client_certificate=False))
    assert server.verify_mode == ssl.CERT_OPTIONAL
    anonymous = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca))
    assert handshake(server, anonymous)[:2] == (None, None)
    rogue = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca, certificate=pki.rogue.cert,
                                                 private_key=pki.rogue.key))
    assert handshake(server, rogue)[0] is not None  # a certificate, when presented, must chain to the CA


@pytest.mark.parametrize("server_pair,check_hostname,host,hint", [
    ("peer", True, "127.0.0.1", None),
    ("wrong_name", True, "127.0.0.1", "does not name this host"),
    ("wrong_name", False, "127.0.0.1", None),
    ("rogue", True, "127.0.0.1", "not signed by a CA in tls.ca_certificates"),
])
def test_sender_checks_the_peer(pki, server_pair, check_hostname, host, hint):
    pair = getattr(pki, server_pair)
    server = tls.server_context(tls.TlsConfig(certificate=pair.cert, private_key=pair.key,
                                              require_client_certificate=False))
    client = tls.client_context(tls.PeerTlsConfig(ca_certificates=pki.ca, check_hostname=check_hostname))
    _, client_error, _ = handshake(server, client, host)
    if hint is None:
        assert client_error is None
    else:
        assert client_error is not None and hint in tls.explain(client_error)


def test_commented_examples_in_the_shipped_config_are_valid_blocks():
    text = (Path(__file__).resolve().parents[2] / "config.yaml").read_text().splitlines()
    blocks = []
    for i, line in enumerate(text):
        if line.lstrip().startswith("# tls:"):
            indent = line.index("#") + 2
            block = [line[indent:].split("  #")[0]]
            for follow in text[i + 1:]:
                body = follow[indent:] if follow.lstrip().startswith("#") else ""
                if not body.startswith("  "):
                    break
                block.append(body.split("  #")[0].rstrip())
            blocks.append(yaml.safe_load("\n".join(block))["tls"])
    node_block, dest_block = blocks
    tls.TlsConfig.model_validate(node_block)
    tls.PeerTlsConfig.model_validate(dest_block)
    assert set(node_block) == {"certificate", "private_key", "ca_certificates", "require_client_certificate"}
