"""Query/retrieve client (Study Root): C-FIND studies and series, C-MOVE or C-GET one series.

Used by ``dicom-node reprocess``. Identifiers are never logged: they carry names, IDs and
accession numbers (the CLI also switches pynetdicom's identifier logging off).

C-MOVE asks the PACS to C-STORE the series to an AE title it must know in advance (host and
port are configured at the PACS); a PACS that does not know it answers 0xA801, which
:class:`MoveDestinationUnknown` turns into a message saying what to configure there. C-GET needs
no set-up at the PACS: the instances come back on our own association, for which we offer
the storage SOP classes in the SCP role (PS3.4 C.4.3, PS3.7 D.3.3.4).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.contract import CT_FAMILY
from dicom_node.requestor import guard
from dicom_node.scu import DeliveryError, Peer, _associate, _why_not_established
from dicom_node.tls import tls_args

#: Move destination unknown (PS3.4 C.4.2.1.5): the PACS has no address for the AE title.
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
#: C-FIND/C-MOVE/C-GET pending statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
PENDING = frozenset({0xFF00, 0xFF01})
#: Sub-operations complete with one or more failures or warnings (PS3.4 C.4.2.1.5).
WARNING_SUBOPS = 0xB000
#: Transfer syntaxes we accept as C-GET storage SCP; a PACS converts to one of them.
GET_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "ModalitiesInStudy", "StudyDescription")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
               "NumberOfSeriesRelatedInstances")


class QueryError(RuntimeError):
    """A C-FIND, C-MOVE or C-GET failed; the message says which and with what status."""


class MoveDestinationUnknown(QueryError):
    """The PACS refused a C-MOVE to our AE title: 0xA801, or a failure before any sub-operation
    (Orthanc 1.10 answers 0xC000 for an AE title it does not know)."""

    def __init__(self, source: Peer, name: str, move_aet: str, node_port: int, status: int) -> None:
        if status == STATUS_MOVE_DESTINATION_UNKNOWN:
            what = "with 0xA801 (move destination unknown): the PACS does not know"
        else:
            what = (f"with 0x{status:04X} before sending anything, as a PACS does (0xA801 in the standard) "
                    "when it does not know")
        super().__init__(
            f"C-MOVE refused by {source.ae_title}@{source.host}:{source.port} {what} this node's AE title "
            f"{move_aet!r}. Add it at the PACS as a DICOM node: AE title {move_aet}, this machine's address, "
            f"port {node_port} (node.port). Until then the series are fetched with C-GET; set retrieve: get "
            f"on destination {name!r} to skip the C-MOVE.")


@dataclass(frozen=True)
class Retrieved:
    """Sub-operation counts of one retrieve (PS3.4 C.4.2.1.5)."""

    method: str  # "move" or "get"
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    comment: str = ""  # the final response's ErrorComment

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, WARNING_SUBOPS) and self.failed == 0

    @property
    def refused(self) -> bool:
        """A failure before any sub-operation: the retrieve was refused, not cut short."""
        return not self.ok and self.completed == self.failed == self.warning == 0


def dicom_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _identifier(level: str, keys: tuple[str, ...], **match: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        setattr(ds, key, "")
    for key, value in match.items():
        setattr(ds, key, value)
    return ds


def _find(src: Peer, calling_ae: str, timeout: float, query: Dataset) -> list[dict[str, Any]]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = _associate(ae, src, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    found: list[dict[str, Any]] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if "Status" not in status:
                raise QueryError(f"{src.ae_title}: no C-FIND response within {timeout:g} s")
            code = int(status.Status)
            if code in PENDING and identifier is not None:
                found.append({key: _value(identifier, key) for key in (*STUDY_KEYS, *SERIES_KEYS)
                              if key in identifier})
            elif code != 0x0000:
                raise QueryError(f"{src.ae_title}: C-FIND failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def _value(ds: Dataset, key: str) -> Any:
    value = ds.get(key)
    if value is None or value == "":
        return None
    if key in ("SeriesNumber", "NumberOfSeriesRelatedInstances"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if key == "ModalitiesInStudy":
        return [str(v) for v in value] if not isinstance(value, str) else value.split("\\")
    return str(value)


def find_studies(src: Peer, calling_ae: str, *, since: dt.date | None = None, until: dt.date | None = None,
                 accession: str | None = None, timeout: float = 30) -> list[dict[str, Any]]:
    """Studies with a CT series in the window (StudyDate range), or the study with ``accession``."""
    match: dict[str, str] = {}
    if accession is not None:
        match["AccessionNumber"] = accession
    else:
        match["ModalitiesInStudy"] = "CT"
        match["StudyDate"] = f"{dicom_date(since) if since else ''}-{dicom_date(until) if until else ''}"
    return _find(src, calling_ae, timeout, _identifier("STUDY", STUDY_KEYS, **match))


def find_series(src: Peer, calling_ae: str, study_uid: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The series of one study with the attributes eligibility can judge from a query."""
    return _find(src, calling_ae, timeout, _identifier("SERIES", SERIES_KEYS, StudyInstanceUID=study_uid))


def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
    return _identifier("SERIES", (), StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)


def _retrieved(method: str, responses: Any, src: Peer, timeout: float) -> Retrieved:
    last: Dataset | None = None
    for status, _ in responses:
        if "Status" not in status:
            raise QueryError(f"{src.ae_title}: no C-{method.upper()} response within {timeout:g} s")
        last = status
    if last is None:
        raise QueryError(f"{src.ae_title}: C-{method.upper()} ended without a final response")
    return Retrieved(method, int(last.Status), int(last.get("NumberOfCompletedSuboperations", 0) or 0),
                     int(last.get("NumberOfFailedSuboperations", 0) or 0),
                     int(last.get("NumberOfWarningSuboperations", 0) or 0), str(last.get("ErrorComment", "") or ""))


def move_series(src: Peer, calling_ae: str, move_aet: str, study_uid: str, series_uid: str,
                timeout: float = 30) -> Retrieved:
    """C-MOVE one series to ``move_aet``; the status 0xA801 (:data:`STATUS_MOVE_DESTINATION_UNKNOWN`)
    says the PACS does not know ``move_aet``. Raises ``DeliveryError`` when the PACS cannot be
    reached and ``ValueError`` when it refuses the C-MOVE presentation context."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.connection_timeout = timeout
    ae.network_timeout = ae.dimse_timeout = max(timeout, 600)  # a move answers after its sub-operations
    assoc = _associate(ae, src, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    try:
        result = _retrieved("move", assoc.send_c_move(_series_identifier(study_uid, series_uid), move_aet,
                                                      StudyRootQueryRetrieveInformationModelMove), src, timeout)
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def get_series(src: Peer, calling_ae: str, study_uid: str, series_uid: str, on_store: Callable[..., Any],
               on_open: Callable[[Any], None] | None = None, timeout: float = 30) -> Retrieved:
    """C-GET one series; ``on_store(event)`` is the C-STORE handler for each instance (it must
    return a status, as :func:`dicom_node.receive_handlers.handle_store` does). ``on_open(assoc)``
    is called once the association is up, before anything is stored."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.connection_timeout = timeout
    ae.network_timeout = ae.dimse_timeout = max(timeout, 600)
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(sop_class, GET_SYNTAXES) for sop_class in sorted(CT_FAMILY)]
    roles = [build_role(sop_class, scp_role=True) for sop_class in sorted(CT_FAMILY)]
    ae.requested_contexts = contexts
    assoc = ae.associate(src.host, int(src.port), ae_title=src.ae_title, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)], tls_args=tls_args(src))
    if not assoc.is_established:
        why = ("rejected the association (called AE title wrong, our calling AE not allowed there, or too busy)"
               if assoc.is_rejected else _why_not_established(ae, src, tls_args(src)))
        raise DeliveryError(f"{src.ae_title}@{src.host}:{src.port} (C-GET) {why}")
    guard(assoc)
    try:
        if on_open is not None:
            on_open(assoc)
        result = _retrieved("get", assoc.send_c_get(_series_identifier(study_uid, series_uid),
                                                    StudyRootQueryRetrieveInformationModelGet), src, timeout)
    finally:
        if assoc.is_established:
            assoc.release()
    return result
