"""A throwaway PKI for the DICOM TLS tests: ``from tests.tls_pki import make_pki``.

Two CAs: the site CA signs the node's, the peers' and a client certificate; another CA signs a
client certificate that the node must refuse. Keys are RSA 2048 (what dcmtk's BCP 195 profile
and Orthanc expect), written PEM, unencrypted, mode 0600.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the site CA's certificate: what ca_certificates points to
    node: Pair  # the node's certificate (server and client use), names 127.0.0.1 and localhost
    peer: Pair  # a PACS or modality (server and client use), names 127.0.0.1 and localhost
    client: Pair  # a modality signed by the site CA
    rogue: Pair  # a client signed by another CA
    other_ca: Path
    wrong_name: Pair  # signed by the site CA, names only pacs.invalid
    expired: Pair  # signed by the site CA, expired yesterday


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dural-node tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(folder: Path, cn: str) -> tuple[Path, x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = folder / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def issue(folder: Path, cn: str, ca: tuple[Path, x509.Certificate, rsa.RSAPrivateKey],
          names: tuple[str, ...] = ("127.0.0.1", "localhost"), days: tuple[float, float] = (-1, 30)) -> Pair:
    """A leaf certificate for ``cn`` signed by ``ca``, for server and client use, naming ``names``
    (IP addresses and DNS names) and valid from ``days[0]`` to ``days[1]`` days from now."""
    _, ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path = folder / f"{cn}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pair(cert_path, _write_key(key, folder / f"{cn}.key"))


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    site = _ca(folder, "site-ca")
    other = _ca(folder, "other-ca")
    return Pki(ca=site[0], node=issue(folder, "dural-node", site), peer=issue(folder, "pacs", site),
               client=issue(folder, "modality", site), rogue=issue(folder, "rogue", other), other_ca=other[0],
               wrong_name=issue(folder, "elsewhere", site, names=("pacs.invalid",)),
               expired=issue(folder, "expired", site, days=(-30, -1)))
