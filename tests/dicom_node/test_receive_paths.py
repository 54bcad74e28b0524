"""Which way an instance reaches the spool: through the receive journal while one association is
open, straight into the spool (flushed before the answer) while several are, and never an older
journalled copy over a newer direct one."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicom_node.scp import Receiver

pytestmark = [pytest.mark.network]
STUDY, SERIES = generate_uid(), generate_uid()


def _associate(receiver: Receiver, title: str) -> Any:
    requestor = AE(ae_title=title)
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = requestor.associate("127.0.0.1", receiver.port, ae_title="DURAL_AI")
    assert assoc.is_established
    return assoc


def _instance(sop: str, comment: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.ImageComments = STUDY, SERIES, comment
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _stored(receiver: Receiver, sop: str) -> Path:
    return receiver.spool.path_for(STUDY, SERIES, sop)


def test_a_lone_association_journals_and_concurrent_ones_write_straight_to_the_spool(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    assert receiver.mover is not None
    journal = receiver.mover.journal
    journalled: list[str] = []
    append = journal.append
    monkeypatch.setattr(journal, "append", lambda entry, parts, **kw: journalled.append(entry.sop_uid)
                        or append(entry, parts, **kw))
    first, second, third = generate_uid(), generate_uid(), generate_uid()
    alone = _associate(receiver, "ALONE")
    assert alone.send_c_store(_instance(first, "one")).Status == 0x0000
    other = _associate(receiver, "OTHER")
    assert other.send_c_store(_instance(second, "two")).Status == 0x0000
    # Answered only once the file and its folder were flushed: it is there already.
    assert pydicom.dcmread(_stored(receiver, second)).ImageComments == "two"
    other.release()
    assert alone.send_c_store(_instance(third, "three")).Status == 0x0000
    alone.release()
    assert journalled == [first, third]
    assert {p.stem for p in receiver.spool.iter_files()} == {first, second, third}


def test_a_direct_write_waits_for_the_journalled_copy_of_the_same_instance(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The older copy, still in the journal, would otherwise be moved over the newer one."""
    unblock = threading.Event()
    put_copy = receiver.spool.put_copy

    def slow_put_copy(*args: Any) -> Path:
        assert unblock.wait(20), "the mover was never released"
        return put_copy(*args)

    monkeypatch.setattr(receiver.spool, "put_copy", slow_put_copy)
    sop = generate_uid()
    alone = _associate(receiver, "ALONE")
    assert alone.send_c_store(_instance(sop, "older")).Status == 0x0000  # journalled, not yet moved
    other = _associate(receiver, "OTHER")
    timer = threading.Timer(0.5, unblock.set)
    timer.start()
    try:
        assert other.send_c_store(_instance(sop, "newer")).Status == 0x0000  # written directly
    finally:
        timer.join()
    other.release()
    alone.release()
    assert pydicom.dcmread(_stored(receiver, sop)).ImageComments == "newer"
