"""The query/retrieve client against a pynetdicom Q/R SCP: C-FIND answers, and the 0xA801 a
PACS gives for a move destination it does not know (Orthanc, in the integration tests, answers
0xC000 instead)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove)

from dicom_node import qr

pytestmark = pytest.mark.network


def _find(event):
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID, ds.Modality, ds.NumberOfSeriesRelatedInstances = "1.2.3", "CT", "24"
    ds.BodyPartExamined = "HEAD"
    yield 0xFF00, ds


def _move(event):
    yield None, None  # no address for the destination: pynetdicom answers 0xA801


@pytest.fixture
def pacs(free_port):
    ae = AE(ae_title="QRSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, _find), (evt.EVT_C_MOVE, _move)])
    try:
        yield SimpleNamespace(ae_title="QRSCP", host="127.0.0.1", port=port)
    finally:
        server.shutdown()


def test_find_series_returns_typed_attributes(pacs):
    [series] = qr.find_series(pacs, "DURAL_AI", "1.2", timeout=10)
    assert series == {"SeriesInstanceUID": "1.2.3", "Modality": "CT", "NumberOfSeriesRelatedInstances": 24,
                      "BodyPartExamined": "HEAD"}


def test_unknown_move_destination_is_0xA801_with_a_message_that_says_what_to_configure(pacs):
    result = qr.move_series(pacs, "DURAL_AI", "DURAL_AI", "1.2", "1.2.3", timeout=10)
    assert result.status == qr.STATUS_MOVE_DESTINATION_UNKNOWN and result.refused and not result.ok
    message = str(qr.MoveDestinationUnknown(pacs, "pacs", "DURAL_AI", 11112, result.status))
    for part in ("0xA801", "does not know this node's AE title 'DURAL_AI'", "port 11112", "retrieve: get"):
        assert part in message
