"""DICOM TLS (PS3.15 B.9, BCP 195): the ``tls:`` blocks of ``config.yaml`` and the SSL contexts
built from them.

``node.tls`` makes the receiver speak TLS on ``node.port``; each ``destinations[].tls`` makes
every association to that peer (C-ECHO, C-STORE of results, C-FIND/C-MOVE/C-GET) use TLS. Both
use TLS 1.2 or newer with Python's default cipher list (forward-secret AEAD suites only).

Who is trusted:

* The receiver trusts a client whose certificate chains to ``node.tls.ca_certificates``;
  with ``require_client_certificate`` (the default) a client without one is refused during the
  handshake. Client host names are not checked: peers connect from addresses of their own, and
  ``node.allowed_calling_aets`` still applies on top.
* A sender trusts a peer whose certificate chains to ``destinations[].tls.ca_certificates`` and,
  with ``check_hostname`` (the default), names the destination's ``host`` in its
  subjectAltName (DNS name or IP address). Without that check any device holding a certificate
  from the same site CA could stand in for the PACS and receive results.

Files are checked when the configuration is loaded (:func:`check_files`), so a missing file, an
expired certificate or a key of another certificate stops the node at start with a message that
says what to fix, not at the first association. Certificates are read once per process: restart
the node after renewing them.
"""
from __future__ import annotations

import datetime as dt
import functools
import socket
import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

#: The oldest protocol either side negotiates (BCP 195; TLS 1.0 and 1.1 are deprecated, RFC 8996).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """``node.tls``: the receiver's certificate and whom it accepts."""

    certificate: Path
    private_key: Path
    #: Peers must present a certificate signed by one of these (PEM, one or more certificates).
    ca_certificates: Path | None = None
    require_client_certificate: bool = True

    @model_validator(mode="after")
    def _ca_when_required(self) -> "TlsConfig":
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates must name the CA file that signed the peers' certificates while "
                             "require_client_certificate is true (the default); or set "
                             "require_client_certificate: false to accept clients without a certificate")
        return self


class PeerTlsConfig(_Strict):
    """``destinations[].tls``: how the node proves itself to a peer and checks the peer."""

    #: Our client certificate and key, for a peer that requires one (mutual TLS).
    certificate: Path | None = None
    private_key: Path | None = None
    #: The peer's certificate must be signed by one of these (its CA, or its self-signed certificate).
    ca_certificates: Path
    #: The peer's certificate must name ``host`` (subjectAltName DNS name or IP address).
    check_hostname: bool = True

    @model_validator(mode="before")
    @classmethod
    def _receiver_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and "require_client_certificate" in data:
            raise ValueError("require_client_certificate applies to node.tls only (whether the node's receiver "
                             "demands client certificates); a destination decides that itself: remove it here")
        return data

    @model_validator(mode="after")
    def _pair(self) -> "PeerTlsConfig":
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key must be given together (client authentication) "
                             "or both left out")
        return self


AnyTls = TlsConfig | PeerTlsConfig


# -- checks at start ----------------------------------------------------------------------------
def resolve(tls: AnyTls, base_dir: Path) -> AnyTls:
    """``tls`` with its relative paths taken from ``base_dir`` (the configuration file's folder)."""
    update = {name: base_dir / path for name in ("certificate", "private_key", "ca_certificates")
              if (path := getattr(tls, name)) is not None and not path.is_absolute()}
    return tls.model_copy(update=update) if update else tls


def _readable(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{key}: {path} does not exist; give the path of the PEM file") from None
    except IsADirectoryError:
        raise ValueError(f"{key}: {path} is a folder; give the path of the PEM file") from None
    except PermissionError:
        raise ValueError(f"{key}: {path} is not readable by this user; fix its owner or permissions") from None


def _certificates(path: Path, key: str, now: dt.datetime, *, bundle: bool = False) -> list[Any]:
    """The PEM certificates in ``path``; each must be valid now, or for a ``bundle`` of trusted
    CAs at least one (a stale entry among several trusts nothing but harms nothing)."""
    from cryptography import x509

    data = _readable(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{key}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
                         "convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`") from None
    if bundle and any(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in certs):
        return certs
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        if cert.not_valid_after_utc < now:
            raise ValueError(f"{key}: the certificate {subject} in {path} expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it")
        if cert.not_valid_before_utc > now:
            raise ValueError(f"{key}: the certificate {subject} in {path} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock")
    return certs


def _no_password() -> bytes:
    raise ValueError("encrypted")


def _check_key(cert: Path, key_path: Path, where: str) -> None:
    _readable(key_path, f"{where}.private_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key_path, password=_no_password)
    except ValueError:
        raise ValueError(f"{where}.private_key: {key_path} is encrypted and the node cannot ask for a password "
                         f"at start; store it unencrypted, readable by the service user only "
                         f"(`openssl pkey -in {key_path} -out NEW.key`)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{where}.private_key: {key_path} is not the key of the certificate {cert} "
                             f"({where}.certificate); give the key the certificate was issued for") from None
        raise ValueError(f"{where}.private_key: {key_path} is not a PEM private key "
                         f"(-----BEGIN PRIVATE KEY-----) ({exc.reason or exc})") from None
    if key_path.stat().st_mode & 0o004:
        raise ValueError(f"{where}.private_key: {key_path} is readable by every user; "
                         f"`chmod 600 {key_path}` (or 640 with the service's group)")


def check_files(tls: AnyTls, where: str, now: dt.datetime | None = None) -> None:
    """Check the files of one ``tls:`` block; ``where`` is its key path (``node.tls``).

    Raises
    ------
    ValueError
        A file is missing or unreadable, is not PEM, a certificate has expired or is not yet
        valid, the key is encrypted, readable by everyone or not the certificate's key. The
        message names the key and says what to fix.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if tls.certificate is not None and tls.private_key is not None:
        _certificates(tls.certificate, f"{where}.certificate", now)
        _check_key(tls.certificate, tls.private_key, where)
    if tls.ca_certificates is not None:
        _certificates(tls.ca_certificates, f"{where}.ca_certificates", now, bundle=True)


# -- contexts -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The receiver's context: our certificate; client certificates required, optional (checked
    when presented) or not asked for, as ``tls`` says."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


@functools.lru_cache(maxsize=None)
def client_context(tls: PeerTlsConfig) -> ssl.SSLContext:
    """A sender's context: the peer must chain to ``ca_certificates`` (and name the host when
    ``check_hostname``); our certificate is presented when configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = tls.check_hostname
    context.load_verify_locations(cafile=tls.ca_certificates)
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context


def tls_args(peer: Any) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``peer`` (a destination), or None for
    plain TCP when it has no ``tls:`` block."""
    tls = getattr(peer, "tls", None)
    if tls is None:
        return None
    return client_context(tls), str(peer.host)


def peer_subject(sock: Any) -> str | None:
    """The common name of the certificate a TLS peer presented; None for plain TCP or none."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return None
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


# -- explaining a failed handshake ------------------------------------------------------------------
_NAME_HINT = ("the peer's certificate does not name this host in its subjectAltName: connect by a name or "
              "address it lists, or set tls.check_hostname: false to trust any certificate signed by "
              "tls.ca_certificates")
#: OpenSSL verification results (X509_V_ERR_*) and what the operator should do about them.
_VERIFY_HINTS = {
    2: "the peer's certificate is not signed by a CA in tls.ca_certificates",
    10: "the peer's certificate has expired; the peer must renew it",
    18: "the peer's certificate is self-signed: put it in tls.ca_certificates to trust it",
    19: "the peer's certificate chain ends in a CA that is not in tls.ca_certificates",
    20: "the peer's certificate is not signed by a CA in tls.ca_certificates",
    21: "the peer's certificate is not signed by a CA in tls.ca_certificates",
    62: _NAME_HINT,
    64: _NAME_HINT,
}


def explain(exc: BaseException) -> str:
    """An operator's reading of a failed TLS handshake, with what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code, "the peer's certificate cannot be verified")
        return f"TLS: {str(exc.verify_message).rstrip('.')}: {hint}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "CERTIFICATE_REQUIRED" in reason:
            return "TLS: the peer requires a client certificate: set tls.certificate and tls.private_key"
        if any(word in reason for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                                           "DECRYPT_ERROR", "ACCESS_DENIED")):
            return (f"TLS: the peer refused our certificate ({exc.reason}): it must trust the CA that "
                    "signed tls.certificate")
        if any(word in reason for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH_TOO_LONG",
                                           "HTTP_REQUEST", "UNEXPECTED_EOF", "EOF")):
            return "TLS: the peer does not speak TLS on this port (plain DICOM?), or closed the connection"
        if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
            return "TLS: the peer offers no protocol version of TLS 1.2 or newer"
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"


def probe(host: str, port: int, context: ssl.SSLContext, timeout: float) -> str | None:
    """Connect once and run a TLS handshake, to say why an association failed; None when the
    handshake goes through and the peer does not refuse us right after it (TLS 1.3 servers
    send their verdict on a client certificate after the client has finished)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as sock:
                sock.settimeout(min(timeout, 2.0))
                try:
                    if sock.recv(1) == b"":
                        return "TLS: the peer closed the connection right after the handshake"
                except (TimeoutError, socket.timeout):
                    return None
    except ssl.SSLError as exc:
        return explain(exc)
    except OSError as exc:
        return f"cannot be reached: {exc.strerror or exc}"
    return None
