"""The C-STORE path past pynetdicom's DIMSE layer: requests assembled from P-DATA values exactly
as sent, everything it does not take handed to pynetdicom whole, and answers equal to
pynetdicom's."""
from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from dicom_node import netfast
from dicom_node.config import parse_config
from dicom_node.ledger import Ledger
from dicom_node.scp import start_receiver
from dicom_node.store_path import StoreAssembler, StoreRequest, encode_p_data, read_command, serve

CONTEXTS = {1: (CTImageStorage, ExplicitVRLittleEndian), 3: (Verification, "1.2.840.10008.1.2"),
            5: (MRImageStorage, ExplicitVRLittleEndian)}
SOP = "1.2.826.0.1.3680043.8.498.77"


def _command(primitive: Any) -> bytes:
    message = (C_STORE_RQ if isinstance(primitive, C_STORE) else C_ECHO_RQ)()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _store_command(message_id: int = 7, sop_class: str = CTImageStorage, sop: str = SOP) -> bytes:
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID, rq.Priority = message_id, sop_class, sop, 2
    rq.DataSet = BytesIO(b"x")
    return _command(rq)


def _with_element(element: int, value: bytes) -> bytes:
    """A C-STORE-RQ command set with one element's value replaced (no pynetdicom check on the way)."""
    elements = read_command(_store_command())
    assert elements is not None
    elements[element] = value
    return b"".join(struct.pack("<HHL", 0, tag, len(raw)) + raw for tag, raw in sorted(elements.items()))


def _values(*items: tuple[int, int, bytes]) -> list[tuple[int, memoryview]]:
    return [(cid, memoryview(bytes([control]) + data)) for cid, control, data in items]


def _assembler() -> StoreAssembler:
    return StoreAssembler(lambda: dict(CONTEXTS))


def _handed(primitive: P_DATA | None) -> list[tuple[int, bytes]]:
    assert primitive is not None
    return [(cid, bytes(value)) for cid, value in primitive.presentation_data_value_list]


def test_a_store_request_is_assembled_from_fragments_over_several_pdus() -> None:
    assembler, command = _assembler(), _store_command()
    assert assembler.feed(_values((1, 0x01, command[:30]))) == ([], None)  # command, more to come
    assert assembler.feed(_values((1, 0x03, command[30:]), (1, 0x00, b"abc"))) == ([], None)
    assert not assembler.idle()
    done, handover = assembler.feed(_values((1, 0x00, b"def"), (1, 0x02, b"gh")))
    assert handover is None and assembler.idle()
    assert done == [StoreRequest(1, 7, CTImageStorage, SOP, ExplicitVRLittleEndian, b"abcdefgh")]


def test_two_requests_in_one_pdu() -> None:
    done, handover = _assembler().feed(_values((1, 0x03, _store_command(1)), (1, 0x02, b"one"),
                                                (5, 0x03, _store_command(2, MRImageStorage)), (5, 0x02, b"two")))
    assert handover is None
    assert [(r.message_id, r.context_id, r.data_set) for r in done] == [(1, 1, b"one"), (2, 5, b"two")]


def test_other_commands_go_to_pynetdicom_whole() -> None:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 3, Verification
    command = _command(echo)
    assembler = _assembler()
    assert assembler.feed(_values((3, 0x01, command[:20]))) == ([], None)
    done, handover = assembler.feed(_values((3, 0x03, command[20:])))
    assert done == [] and assembler.idle()
    assert _handed(handover) == [(3, b"\x01" + command[:20]), (3, b"\x03" + command[20:])]
    message = DIMSEMessage()
    assert message.decode_msg(handover)  # pynetdicom reads the message as sent
    assert type(message) is C_ECHO_RQ and message.command_set.MessageID == 3


@pytest.mark.parametrize("values", [
    [(1, 0x02, b"data before any command")],
    [(1, 0x03, b"\x00\x00\x00\x01\x10\x00\x00\x00ab")],  # an element longer than the command set
    [(1, 0x03, _store_command()[:-4])],  # cut inside the last element
    [(9, 0x03, _store_command()), (9, 0x02, b"x")],  # a context that was not accepted
    [(5, 0x03, _store_command()), (5, 0x02, b"x")],  # CT request on the MR context
    [(3, 0x03, _store_command(sop_class=Verification)), (3, 0x02, b"x")],  # not a storage class
    [(1, 0x03, _with_element(0x1000, SOP.encode()[:-2] + b"\xc3\xa9")), (1, 0x02, b"x")],  # not ASCII
    [(1, 0x03, _with_element(0x1000, b"1." + b"2" * 64)), (1, 0x02, b"x")],  # a UID of over 64 characters
    [(1, 0x03, _store_command()), (1, 0x00, b"x"), (5, 0x02, b"y")],  # data set moves to another context
    [(1, 0x03, _store_command()), (1, 0x00, b"x"), (1, 0x03, b"command in a data set")],
])
def test_anything_unusual_is_handed_over_with_what_was_taken(values: list[tuple[int, int, bytes]]) -> None:
    assembler = _assembler()
    done, handover = assembler.feed(_values(*values))
    assert done == [] and assembler.idle()
    assert _handed(handover) == [(cid, bytes([control]) + data) for cid, control, data in values]


def test_a_store_request_without_a_data_set_is_handed_over() -> None:
    command = bytearray(_store_command())
    fields = read_command(bytes(command))
    assert fields is not None and fields[0x0800] == b"\x01\x00"  # "a data set follows"
    at = bytes(command).index(b"\x00\x00\x00\x08\x02\x00\x00\x00") + 8
    command[at:at + 2] = b"\x01\x01"  # no data set
    done, handover = _assembler().feed(_values((1, 0x03, bytes(command))))
    assert done == [] and _handed(handover) == [(1, b"\x03" + bytes(command))]


class _Sent:
    def __init__(self, established: bool = True, send_now_ok: bool = True) -> None:
        self.is_established = established
        self.aborted = False
        self.pdus: list[bytes] = []
        self.messages: list[tuple[Any, int]] = []
        self.dimse = SimpleNamespace(maximum_pdu_size=16384, send_msg=lambda rsp, cid: self.messages.append((rsp, cid)))
        self.dul = SimpleNamespace(send_now=lambda pdu: send_now_ok and not self.pdus.append(pdu))

    def get_handlers(self, event: Any) -> list[Any]:
        return []

    def abort(self) -> None:
        self.aborted = True


def _pynetdicom_response(status: int, comment: str | None = None) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = 7, CTImageStorage, SOP
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode(message.command_set, True, True))


REQUEST = StoreRequest(1, 7, CTImageStorage, SOP, ExplicitVRLittleEndian, b"data set")


def test_success_is_answered_as_pynetdicom_would_from_the_calling_thread() -> None:
    assoc, seen = _Sent(), []
    serve(assoc, REQUEST, lambda *args: seen.append(args) or 0)
    assert seen == [(assoc, ExplicitVRLittleEndian, CTImageStorage, SOP, b"data set")]
    assert assoc.pdus == [encode_p_data(1, b"\x03" + _pynetdicom_response(0x0000))] and not assoc.messages


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status, ds.ErrorComment = status, comment
    return ds


@pytest.mark.parametrize("store, status, comment", [
    (lambda *args: _failure(0xA900, "SOPInstanceUID differs"), 0xA900, "SOPInstanceUID differs"),
    (lambda *args: 1 / 0, 0xC211, None),  # a store function that raises still gets the peer an answer
])
def test_failures_are_answered_through_pynetdicom(store: Callable[..., Any], status: int, comment: str | None) -> None:
    assoc = _Sent()
    serve(assoc, REQUEST, store)
    assert not assoc.pdus
    (rsp, cid), = assoc.messages
    assert cid == 1 and rsp.Status == status and rsp.MessageIDBeingRespondedTo == 7
    assert rsp.AffectedSOPInstanceUID == SOP and rsp.ErrorComment == comment


def test_success_goes_through_pynetdicom_when_the_pdu_cannot_be_sent_directly() -> None:
    assoc = _Sent(send_now_ok=False)
    serve(assoc, REQUEST, lambda *args: 0)
    (rsp, _), = assoc.messages
    assert rsp.Status == 0x0000


def test_an_answer_that_cannot_be_built_aborts_the_association() -> None:
    assoc = _Sent()
    odd = StoreRequest(1, 7, CTImageStorage, "1." + "2" * 64, ExplicitVRLittleEndian, b"data set")
    serve(assoc, odd, lambda *args: _failure(0xA900, "refused"))  # pynetdicom will not encode that UID
    assert assoc.aborted and not assoc.pdus and not assoc.messages


def test_nothing_is_sent_once_the_association_ended() -> None:
    assoc = _Sent(established=False)
    serve(assoc, REQUEST, lambda *args: 0)
    assert not assoc.pdus and not assoc.messages


@pytest.mark.network
def test_one_association_mixing_echoes_and_stores_in_small_pdus(
        tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver announcing 4 KiB PDUs: each data set arrives in several fragments, between echoes."""
    monkeypatch.setattr(netfast, "MAX_PDU", 4096)
    fed: list[int] = []
    feed = StoreAssembler.feed
    monkeypatch.setattr(StoreAssembler, "feed", lambda self, values: fed.append(len(values)) or feed(self, values))
    cfg = parse_config({"node": {"bind": "127.0.0.1", "port": free_port(), "data_dir": str(tmp_path / "var"),
                                 "min_free_disk_gb": 0}})
    receiver = start_receiver(cfg, Ledger(tmp_path / "var" / "ledger.sqlite3"))
    requestor = AE(ae_title="MIXED")
    requestor.add_requested_context(Verification)
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    study, series = generate_uid(), generate_uid()
    sent = {}
    try:
        assoc = requestor.associate("127.0.0.1", receiver.port, ae_title="DURAL_AI", max_pdu=4096)
        assert assoc.is_established
        for k in range(3):
            assert assoc.send_c_echo().Status == 0x0000
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "MIXED-1"
            ds.ImageComments = f"{k}" * (20_000 + k)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            assert assoc.send_c_store(ds).Status == 0x0000
            sent[ds.SOPInstanceUID] = ds.ImageComments
        assoc.release()
        stored = {p.stem: dcmread(p).ImageComments for p in receiver.spool.iter_files()}
        assert stored == sent
        assert len(fed) >= 3 * 5  # command + at least four data PDUs per instance
    finally:
        receiver.shutdown()
