"""C-STORE requests taken from the received P-DATA values without pynetdicom's DIMSE layer.

For each instance pynetdicom decodes the command set with pydicom, copies every data set
fragment into a growing ``BytesIO`` (about a megabyte of copying per CT slice, reallocations
included), builds request and response primitives whose UIDs it validates, and goes through its
service class and event machinery. That is most of the receiver's interpreter time per instance,
and with several associations receiving at once every association thread waits for it.

:class:`StoreAssembler` (one per association, fed by the DUL thread) reads the command set
itself (PS3.7 9.3.1.1: implicit VR little endian, group 0000), keeps the data set fragments as
views of the received PDUs and joins them once. A complete C-STORE request goes to the
association as a :class:`StoreRequest`, and :func:`serve` calls the receiver's store function
and answers: on the DUL thread itself when the association thread has nothing in hand (the usual
case: a sender waits for each answer before its next request), else on the association thread.
Anything else (another command, a command set it cannot read, a context it does not know,
fragments out of order) is handed to pynetdicom with every value taken so far, so pynetdicom
sees the message exactly as received and behaves as it always does.
"""
from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass
from typing import Any, Callable

from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

logger = logging.getLogger(__name__)

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
#: Command set elements of a C-STORE-RQ (PS3.7 9.3.1.1) that the store path reads.
AFFECTED_SOP_CLASS_UID, COMMAND_FIELD, MESSAGE_ID = 0x00000002, 0x00000100, 0x00000110
DATA_SET_TYPE, AFFECTED_SOP_INSTANCE_UID = 0x00000800, 0x00001000
#: ... and those its C-STORE-RSP adds (PS3.7 9.3.1.2).
COMMAND_GROUP_LENGTH, MESSAGE_ID_BEING_RESPONDED_TO, STATUS = 0x00000000, 0x00000120, 0x00000900
C_STORE_RQ, C_STORE_RSP, NO_DATA_SET = 0x0001, 0x8001, 0x0101
#: Status an exception in the store function answers (pynetdicom's for a failing handler).
STATUS_HANDLER_ERROR = 0xC211

#: ``store(assoc, transfer_syntax, sop_class_uid, sop_instance_uid, data_set) -> status``, the
#: status being 0x0000 or a Dataset with Status and ErrorComment
#: (:func:`dicom_node.receive_handlers.store_instance`).
StoreFunction = Callable[[Any, str, str, str, bytes], "int | Dataset"]


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _encoded_uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_success(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RSP with status Success (implicit VR little endian)."""
    body = b"".join((
        _element(AFFECTED_SOP_CLASS_UID, _encoded_uid(sop_class_uid)),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        _element(DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(STATUS, _US.pack(0x0000)),
        _element(AFFECTED_SOP_INSTANCE_UID, _encoded_uid(sop_instance_uid)),
    ))
    return _element(COMMAND_GROUP_LENGTH, struct.pack("<L", len(body))) + body


def encode_p_data(context_id: int, pdv: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one presentation data value (PS3.8 9.3.5)."""
    return struct.pack(">BBLLB", 0x04, 0, 5 + len(pdv), 1 + len(pdv), context_id) + pdv


def send_success_now(assoc: Any, context_id: int, message_id: int, sop_class_uid: str,
                     sop_instance_uid: str) -> bool:
    """Send a hand-encoded C-STORE-RSP Success from the calling thread
    (:meth:`dicom_node.reactor.EventDUL.send_now`); False, with nothing sent, when it must go
    pynetdicom's way instead: longer than the peer's maximum PDU, PDU events observed, or the
    association not in a state to send it directly."""
    pdv = b"\x03" + encode_store_success(message_id, sop_class_uid, sop_instance_uid)  # command, last fragment
    limit = assoc.dimse.maximum_pdu_size
    send_now = getattr(assoc.dul, "send_now", None)
    return bool(send_now is not None and (not limit or len(pdv) + 6 <= limit)
                and not assoc.get_handlers(evt.EVT_PDU_SENT) and not assoc.get_handlers(evt.EVT_DATA_SENT)
                and send_now(encode_p_data(context_id, pdv)))


@dataclass(frozen=True)
class StoreRequest:
    """A complete C-STORE request."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set: bytes


def read_command(raw: bytes) -> dict[int, bytes] | None:
    """The elements of an encoded command set; None when an element runs past the end."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(raw, pos)
        if group != 0x0000 or pos + 8 + length > end:
            return None
        elements[element] = raw[pos + 8:pos + 8 + length]
        pos += 8 + length
    return elements


def _decoded_uid(raw: bytes | None) -> str | None:
    """The UID of a command element; None when empty, not ASCII or longer than 64 characters
    (pynetdicom refuses the message then, and so does it when handed over)."""
    if not raw:
        return None
    try:
        text = raw.rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text and len(text) <= 64 else None


@functools.lru_cache(maxsize=1024)
def _is_storage(sop_class_uid: str) -> bool:
    return bool(pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE) or \
        uid_to_service_class(sop_class_uid) is StorageServiceClass


class StoreAssembler:
    """Builds C-STORE requests from one association's P-DATA values (DUL thread only).

    ``contexts`` maps accepted context ids to (abstract syntax, transfer syntax).
    """

    def __init__(self, contexts: Callable[[], dict[int, tuple[str, str]]]) -> None:
        self._read_contexts = contexts
        self._contexts: dict[int, tuple[str, str]] | None = None  # fixed once negotiated
        self._taken: list[tuple[int, memoryview]] = []  # values of the message being assembled
        self._command: list[memoryview] = []
        self._request: tuple[int, int, str, str, str] | None = None  # once its command set is read
        self._data: list[memoryview] = []

    def feed(self, values: list[tuple[int, memoryview]]) -> tuple[list[StoreRequest], P_DATA | None]:
        """Take one PDU's values: the requests they complete, and a P-DATA for pynetdicom (the
        values of a message this path does not take, with those of it taken before) or None."""
        done: list[StoreRequest] = []
        for index, (context_id, value) in enumerate(values):
            if not self._take(context_id, value, done):
                handover = P_DATA()
                handover.presentation_data_value_list.extend(self._taken)  # type: ignore[arg-type]
                handover.presentation_data_value_list.extend(values[index:])  # type: ignore[arg-type]
                self._reset()
                return done, handover
        return done, None

    def idle(self) -> bool:
        """No message partly assembled."""
        return not self._taken

    def _reset(self) -> None:
        self._taken, self._command, self._request, self._data = [], [], None, []

    def _take(self, context_id: int, value: memoryview, done: list[StoreRequest]) -> bool:
        control = value[0]
        is_command, is_last = bool(control & 1), bool(control & 2)
        if self._taken and context_id != self._taken[0][0]:
            return False
        if is_command:
            if self._request is not None:
                return False  # a command fragment in the middle of a data set
            if is_last:
                self._request = self._store_request(context_id, b"".join([*self._command, value[1:]]))
                if self._request is None:
                    return False
            self._taken.append((context_id, value))
            self._command.append(value[1:])
            return True
        if self._request is None:
            return False  # a data set fragment before its command set is complete
        self._taken.append((context_id, value))
        self._data.append(value[1:])
        if is_last:
            context_id, message_id, sop_class, sop_uid, syntax = self._request
            data_set = b"".join(self._data)
            self._reset()
            done.append(StoreRequest(context_id, message_id, sop_class, sop_uid, syntax, data_set))
        return True

    def _store_request(self, context_id: int, raw: bytes) -> tuple[int, int, str, str, str] | None:
        elements = read_command(raw)
        if elements is None:
            return None
        field, message_id, data_set = (elements.get(e) for e in (COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE))
        sop_class = _decoded_uid(elements.get(AFFECTED_SOP_CLASS_UID))
        sop_uid = _decoded_uid(elements.get(AFFECTED_SOP_INSTANCE_UID))
        if (field is None or len(field) != 2 or _US.unpack(field)[0] != C_STORE_RQ or message_id is None
                or len(message_id) != 2 or data_set is None or len(data_set) != 2
                or _US.unpack(data_set)[0] == NO_DATA_SET or sop_class is None or sop_uid is None):
            return None
        if self._contexts is None:
            self._contexts = self._read_contexts()
        context = self._contexts.get(context_id)
        if context is None or context[0] != sop_class or not _is_storage(sop_class):
            return None
        return context_id, _US.unpack(message_id)[0], sop_class, sop_uid, context[1]


def serve(assoc: Any, request: StoreRequest, store: StoreFunction,
          abort: Callable[[], object] | None = None) -> None:
    """Store the instance and answer the request. When no answer can be built or sent, the
    association is aborted (``abort``, default ``assoc.abort``), as pynetdicom does with a
    message it cannot handle: the sender then knows the instance was not taken."""
    try:
        status = store(assoc, request.transfer_syntax, request.sop_class_uid, request.sop_instance_uid,
                       request.data_set)
    except Exception:  # noqa: BLE001 - the peer gets an answer whatever happens
        logger.exception("store function failed")
        status = STATUS_HANDLER_ERROR
    if not assoc.is_established:
        return  # aborted or released meanwhile: nobody to answer
    try:
        _answer(assoc, request, status)
    except Exception:  # noqa: BLE001 - never leave the sender waiting for an answer
        logger.exception("cannot answer a C-STORE request; aborting the association")
        (abort or assoc.abort)()


def _answer(assoc: Any, request: StoreRequest, status: "int | Dataset") -> None:
    if isinstance(status, int) and status == 0 and send_success_now(
            assoc, request.context_id, request.message_id, request.sop_class_uid, request.sop_instance_uid):
        return
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = request.message_id
    rsp.AffectedSOPClassUID = request.sop_class_uid
    rsp.AffectedSOPInstanceUID = request.sop_instance_uid
    rsp = StorageServiceClass(assoc).validate_status(status, rsp)
    assoc.dimse.send_msg(rsp, request.context_id)
