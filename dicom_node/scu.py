"""DICOM client: C-ECHO and C-STORE to a peer, with per-instance results and typed errors.

Used by ``dicom-node echo`` / ``dicom-node send`` and by the outbox sender. Associations request
exactly the SOP classes being sent (PS3.7 allows at most 128 presentation contexts per
association; bigger batches are split over several associations). Each SOP class is proposed
once in the transfer syntax its files are in, and once in the destination's preferred native
syntax as a fallback; a compressed file whose syntax the peer refuses is decompressed and sent in
the native one.

Statuses: Success (0x0000) and the warnings 0xB000, 0xB006, 0xB007 count as delivered. A peer that
cannot be reached, rejects the association or aborts it raises :class:`DeliveryError`, whose
``results`` say which instances were acknowledged before that happened.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from dicom_node.config import ConfigError, Destination
from dicom_node.logs import short_uid
from dicom_node.requestor import guard
from dicom_node.tls import probe, tls_args

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128
#: Warnings (PS3.4 B.2.3): the peer stored the instance.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
_ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


class Peer(Protocol):
    ae_title: str
    host: str
    port: int


class DeliveryError(RuntimeError):
    """The peer could not be reached, rejected the association or aborted it.

    ``results`` holds one :class:`InstanceResult` per instance handed in so far: acknowledged
    ones keep their status, the rest have ``status=None`` and the reason in ``error``.
    """

    def __init__(self, message: str, results: Sequence["InstanceResult"] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class InstanceResult:
    sop_instance_uid: str
    sop_class_uid: str
    status: int | None  # None: no response (not sent, or the association ended first)
    error: str | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or self.status in WARNING_STATUSES)


def parse_destination(text: str, destinations: Iterable[Destination] = ()) -> Destination:
    """A configured destination by name, or ``AE@host:port``.

    Raises
    ------
    ConfigError
        Neither a configured name nor a valid ``AE@host:port``.
    """
    for dest in destinations:
        if dest.name == text:
            return dest
    match = _ADDRESS.match(text)
    if not match:
        names = ", ".join(d.name for d in destinations) or "none configured"
        raise ConfigError(f"destination must be a name under destinations: ({names}) or AE@host:port; got {text!r}")
    try:
        return Destination(name="command-line", ae_title=match["ae"], host=match["host"].strip("[]"),
                           port=int(match["port"]))
    except ValueError as exc:
        raise ConfigError(f"destination {text!r}: {exc}") from None


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def _where(dest: Peer) -> str:
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def _associate(ae: AE, dest: Peer, contexts: list[PresentationContext]):  # -> Association
    """An established association to ``dest`` (over TLS when it has a ``tls:`` block); raises
    :class:`DeliveryError` saying why not."""
    tls = tls_args(dest)
    assoc = ae.associate(dest.host, int(dest.port), contexts=contexts, ae_title=dest.ae_title, tls_args=tls)
    if assoc.is_established:
        return guard(assoc)
    if assoc.is_rejected:
        raise DeliveryError(f"{_where(dest)} rejected the association "
                            "(called AE title wrong, our calling AE not allowed there, or too busy)")
    raise DeliveryError(f"{_where(dest)} {_why_not_established(ae, dest, tls)}")


def _why_not_established(ae: AE, dest: Peer, tls: tuple[ssl.SSLContext, str] | None) -> str:
    """pynetdicom reports a failed TCP connect and a failed TLS handshake as an abort: connect
    once more to tell the admin which it was."""
    if tls is not None:
        why = probe(dest.host, int(dest.port), tls[0], ae.connection_timeout or 30)
        return why or "aborted the association during negotiation (no common presentation context, or the peer failed)"
    try:
        socket.create_connection((dest.host, int(dest.port)), timeout=ae.connection_timeout).close()
    except OSError as exc:
        return f"cannot be reached: {exc.strerror or exc}"
    return "aborted the association during negotiation (no common presentation context, or the peer failed)"


def echo(dest: Peer, calling_ae: str, timeout: float = 30) -> int:
    """C-ECHO ``dest``; returns the DIMSE status (0x0000 when the peer is fine).

    Raises
    ------
    DeliveryError
        Unreachable, association rejected or aborted, or no response within ``timeout``.
    """
    assoc = _associate(_ae(calling_ae, timeout), dest, [build_context(Verification)])
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in rsp:
        raise DeliveryError(f"{_where(dest)} gave no C-ECHO response within {timeout:g} s")
    return int(rsp.Status)


# -- C-STORE -----------------------------------------------------------------------------------
def _contexts(datasets: Sequence[Dataset], fallback: UID) -> list[list[PresentationContext]]:
    """Presentation contexts per association: (class, own syntax) plus (class, native fallback)."""
    wanted: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
        own = str(ds.file_meta.TransferSyntaxUID)
        if own not in syntaxes:
            syntaxes.append(own)
    batches: list[list[PresentationContext]] = [[]]
    for sop_class, syntaxes in wanted.items():
        natives = [str(fallback)] + [str(ts) for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                                     if ts != fallback]
        group = [build_context(sop_class, [ts]) for ts in syntaxes]
        if not set(syntaxes) <= set(natives):
            group.append(build_context(sop_class, natives))
        elif len(syntaxes) == 1:
            group = [build_context(sop_class, [syntaxes[0]] + [t for t in natives if t != syntaxes[0]])]
        if len(group) > MAX_CONTEXTS:
            raise ValueError(f"SOP class {sop_class} needs {len(group)} contexts; at most {MAX_CONTEXTS}")
        if len(batches[-1]) + len(group) > MAX_CONTEXTS:
            batches.append([])
        batches[-1].extend(group)
    return batches


def _send_one(assoc, ds: Dataset, path: Path | None) -> InstanceResult:  # type: ignore[no-untyped-def]
    sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    try:
        rsp = assoc.send_c_store(ds)
    except ValueError:
        # No accepted context in the file's own (compressed) syntax: send it decompressed.
        try:
            plain = copy.deepcopy(ds)
            plain.decompress(generate_instance_uid=False)
            rsp = assoc.send_c_store(plain)
        except Exception as exc:  # noqa: BLE001 - reported per instance
            return InstanceResult(sop_uid, sop_class, None, f"peer accepted no usable transfer syntax: {exc}", path)
    if "Status" not in rsp:
        return InstanceResult(sop_uid, sop_class, None, "no response (association ended or timed out)", path)
    status = int(rsp.Status)
    comment = str(rsp.get("ErrorComment", "")) or None
    result = InstanceResult(sop_uid, sop_class, status, None if status == 0 else comment or f"status 0x{status:04X}",
                            path)
    log = logger.debug if result.ok else logger.warning
    log("C-STORE response", extra={"sop": short_uid(sop_uid), "status": f"0x{status:04X}"})
    return result


def send_datasets(datasets: Iterable[Dataset], dest: Peer, calling_ae: str, transfer_syntax: str | None = None,
                  timeout: float = 30, paths: Sequence[Path | None] | None = None) -> list[InstanceResult]:
    """C-STORE ``datasets`` (each with ``file_meta.TransferSyntaxUID``) to ``dest``.

    Returns
    -------
    list of InstanceResult
        One per data set, in order; check ``ok``.

    Raises
    ------
    DeliveryError
        The peer cannot be reached, rejects or aborts the association; ``results`` carries the
        instances acknowledged until then.
    """
    items = list(datasets)
    where = list(paths) if paths is not None else [None] * len(items)
    return _deliver(list(zip(items, where)), dest, calling_ae, transfer_syntax, timeout, lazy=False)


def _deliver(items: list[tuple[Dataset, Path | None]], dest: Peer, calling_ae: str, transfer_syntax: str | None,
             timeout: float, lazy: bool) -> list[InstanceResult]:
    """Send ``items``; with ``lazy`` the data sets are headers and each file is read in full just
    before it is sent, so a large folder never sits in memory at once."""
    fallback = UID(transfer_syntax or ExplicitVRLittleEndian)
    ae = _ae(calling_ae, timeout)
    results: list[InstanceResult] = []
    pending = items
    for contexts in _contexts([ds for ds, _ in items], fallback):
        classes = {str(cx.abstract_syntax) for cx in contexts}
        batch = [(ds, p) for ds, p in pending if str(ds.SOPClassUID) in classes]
        pending = [(ds, p) for ds, p in pending if str(ds.SOPClassUID) not in classes]
        try:
            assoc = _associate(ae, dest, contexts)
        except DeliveryError as exc:
            raise DeliveryError(str(exc), results + _unsent(batch + pending, str(exc))) from None
        try:
            for index, (ds, path) in enumerate(batch):
                if not assoc.is_established:
                    why = f"{_where(dest)} ended the association"
                    raise DeliveryError(why, results + _unsent(batch[index:] + pending, why))
                if lazy and path is not None:
                    try:
                        ds = read_for_sending(path)
                    except (OSError, InvalidDicomError) as exc:
                        results.append(InstanceResult(str(ds.SOPInstanceUID), str(ds.SOPClassUID), None,
                                                      f"cannot read the file: {exc}", path))
                        continue
                results.append(_send_one(assoc, ds, path))
            if not assoc.is_established:  # aborted while answering the last one
                why = f"{_where(dest)} aborted the association"
                raise DeliveryError(why, results + _unsent(pending, why))
        finally:
            if assoc.is_established:
                assoc.release()
    return results


def _unsent(items: Sequence[tuple[Dataset, Path | None]], why: str) -> list[InstanceResult]:
    return [InstanceResult(str(ds.SOPInstanceUID), str(ds.SOPClassUID), None, why, p) for ds, p in items]


def iter_dicom_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files given, and every file under folders given (recursively, sorted)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_for_sending(path: Path, header_only: bool = False) -> Dataset:
    """Read a DICOM file (Part 10 with preamble) to send; raises ``InvalidDicomError`` otherwise.

    ``header_only`` stops before the pixel data (enough to plan the presentation contexts).
    """
    ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    if "TransferSyntaxUID" not in ds.file_meta or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise InvalidDicomError(f"{path}: lacks TransferSyntaxUID, SOPClassUID or SOPInstanceUID")
    return ds


def send_files(paths: Sequence[str | os.PathLike[str]], dest: Peer, calling_ae: str,
               transfer_syntax: str | None = None, timeout: float = 30) -> list[InstanceResult]:
    """C-STORE DICOM files (folders are recursed); same results and errors as
    :func:`send_datasets`. Headers are read first (to request exactly their SOP classes and
    syntaxes), each whole file only when its turn comes. Raises ``InvalidDicomError``/``OSError``
    before anything is sent when a file cannot be read as DICOM."""
    files = list(iter_dicom_files(paths))
    headers = [read_for_sending(p, header_only=True) for p in files]
    return _deliver(list(zip(headers, files)), dest, calling_ae, transfer_syntax, timeout, lazy=True)


send = send_files
