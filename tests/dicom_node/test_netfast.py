"""Receive-path tuning: what the acceptor offers, and the hand-encoded C-STORE response."""
from __future__ import annotations

import copy
import logging
import tomllib
from pathlib import Path

import pynetdicom
import pytest
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1,
                         JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage

from dicom_node.netfast import PYNETDICOM_VERSION, cache_uid_checks, storage_contexts, transfer_syntaxes
from dicom_node.scp import Receiver
from dicom_node.store_path import encode_p_data, encode_store_success

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
REMEASURE = ("dicom_node/netfast.py and dicom_node/reactor.py patch pynetdicom {measured} internals; "
             "re-measure them against stock pynetdicom (bench/receive.py --receiver stock --receiver tuned, "
             "docs/benchmarks.md) before moving to {found}, then update netfast.PYNETDICOM_VERSION and the pin")


def test_installed_pynetdicom_is_the_version_the_patches_were_measured_on() -> None:
    assert pynetdicom.__version__ == PYNETDICOM_VERSION, REMEASURE.format(
        measured=PYNETDICOM_VERSION, found=pynetdicom.__version__)


def test_pyproject_pins_that_exact_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d.split(";")[0].replace(" ", "") for d in dependencies if d.lower().startswith("pynetdicom")]
    assert pins == [f"pynetdicom=={PYNETDICOM_VERSION}"], REMEASURE.format(measured=PYNETDICOM_VERSION, found=pins)


@pytest.mark.parametrize("sop_class", [
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.200.1",  # CT Defined Procedure Protocol (not in pynetdicom's list)
    "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol (not in pynetdicom's list)
])
def test_storage_classes_offered_in_every_syntax(sop_class: str) -> None:
    contexts = {str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in storage_contexts()}
    offered = contexts[sop_class]
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
                   JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
                   ExplicitVRBigEndian):
        assert syntax in offered


def test_storage_commitment_and_dicomdir_are_not_offered() -> None:
    offered = {str(cx.abstract_syntax) for cx in storage_contexts()}
    assert "1.2.840.10008.1.20.1" not in offered and "1.2.840.10008.1.3.10" not in offered
    assert "1.2.840.10008.1.1" in offered  # Verification


def test_acceptor_prefers_native_then_lossless() -> None:
    order = transfer_syntaxes()
    assert order[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert order.index(JPEGLSLossless) < order.index(JPEGBaseline8Bit)
    assert order.index(JPEG2000Lossless) < order.index(JPEG2000)
    assert order[-1] == ExplicitVRBigEndian and len(order) == len(set(order))


@pytest.mark.parametrize("message_id, sop_class, sop_instance", [
    (1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"),  # odd-length UID: NUL padded
    (65535, "1.2.840.10008.5.1.4.1.1.66.4", "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012"),
])
def test_store_success_matches_pynetdicom_encoding(message_id: int, sop_class: str, sop_instance: str) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.Status = message_id, 0x0000
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = sop_class, sop_instance
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_store_success(message_id, sop_class, sop_instance) == encode(message.command_set, True, True)


@pytest.mark.parametrize("context_id, pdv", [(1, b"\x03" + bytes(10)), (255, b"\x02" + bytes(range(256)) * 3)])
def test_p_data_matches_pynetdicom_encoding(context_id: int, pdv: bytes) -> None:
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, pdv))
    assert encode_p_data(context_id, pdv) == P_DATA_TF(primitive).encode()


def test_cached_uid_checks_give_the_same_uids_and_still_refuse_bad_ones(caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom import pdu_items, presentation, utils

    cache_uid_checks()
    # Negotiation: each proposed syntax arrives as bytes in an A-ASSOCIATE-RQ item.
    first, again = pdu_items.AbstractSyntaxSubItem(), pdu_items.AbstractSyntaxSubItem()
    first.abstract_syntax_name = again.abstract_syntax_name = CTImageStorage.encode("ascii")
    assert first.abstract_syntax_name == CTImageStorage
    assert first.abstract_syntax_name is again.abstract_syntax_name  # checked once, remembered
    too_long = "1." + "2" * 63  # UIDs are at most 64 characters
    for _ in range(2):  # a failed check is not remembered: it fails every time
        with pytest.raises(ValueError, match="Invalid 'abstract_syntax' value"):
            presentation.build_context(too_long)
        with pytest.raises(ValueError, match="Invalid 'Abstract Syntax Name' value"):
            first.abstract_syntax_name = too_long.encode("ascii")
    # Decoded PDU items hand over UID instances: remembered too, unless they carry state.
    plain = UID(CTImageStorage)
    assert presentation.build_context(plain).abstract_syntax is presentation.build_context(UID(plain)).abstract_syntax
    private = UID("1.2.3.4.5")
    private.set_private_encoding(False, True)
    assert presentation.build_context(private).abstract_syntax is not presentation.build_context(private).abstract_syntax
    # SOP Instance UIDs are checked each time, never kept.
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert utils.set_uid(uid, "Affected SOP Instance UID") == uid
    assert type(utils.set_uid(uid, "Affected SOP Instance UID")) is UID
    assert utils.set_uid(uid, "Affected SOP Instance UID") is not utils.set_uid(uid, "Affected SOP Instance UID")
    # Only conformant ones skip pynetdicom's checks: it still warns about others and refuses bad ones.
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for odd in ("1.2.03", "1.2.x"):
            assert utils.set_uid(odd, "Affected SOP Instance UID") == odd
            assert f"Non-conformant 'Affected SOP Instance UID' value '{odd}'" in caplog.text
    with pytest.raises(ValueError, match="Invalid 'Affected SOP Instance UID' value"):
        utils.set_uid("1." + "2" * 63, "Affected SOP Instance UID")


@pytest.mark.network
def test_every_association_negotiates_from_the_same_unchanged_contexts(receiver: Receiver) -> None:
    from pynetdicom import AE, build_role

    def snapshot() -> list[tuple[object, ...]]:
        return [(cx.context_id, str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax], cx.scu_role,
                 cx.scp_role, cx.result) for cx in receiver.server.contexts]

    assert copy.deepcopy(receiver.server.contexts) is receiver.server.contexts
    before = snapshot()
    for syntaxes, chosen in (([ImplicitVRLittleEndian], ImplicitVRLittleEndian),
                             ([JPEG2000Lossless, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
                             ([JPEG2000Lossless], JPEG2000Lossless)):
        requestor = AE(ae_title="NEGOTIATE")
        requestor.add_requested_context(CTImageStorage, syntaxes)
        assoc = requestor.associate("127.0.0.1", receiver.port, ae_title="DURAL_AI",
                                    ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)])
        assert assoc.is_established
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [chosen]
        assoc.release()
    assert snapshot() == before
