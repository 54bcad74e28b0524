"""A tiny receiving PACS for ``dicom-node demo``: a storage SCP that files what it gets.

Every instance is written as ``<folder>/<SOP Instance UID>.dcm`` (a resend overwrites, as a
PACS keeps one copy per SOP Instance UID). It accepts every storage SOP class in every transfer
syntax pynetdicom knows, answers C-ECHO, and is not meant for anything but the demo and tests.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.atomic import write_atomic
from dicom_node.names import STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS
from dicom_node.spool import clean_uid

logger = logging.getLogger(__name__)


def handle_store(event: Any, folder: Path) -> int:
    """Write the received data set as a DICOM file; never raises."""
    try:
        name = clean_uid(event.request.AffectedSOPInstanceUID, "SOP Instance UID")
        data = event.encoded_dataset()
        # A demo archive: atomic so the demo never lists half a file, not fsynced.
        write_atomic(folder / f"{name}.dcm", lambda handle: handle.write(data), sync=False)
        return STATUS_SUCCESS
    except Exception:
        logger.exception("demo PACS could not store an instance")
        return STATUS_CANNOT_UNDERSTAND


def start_demo_pacs(folder: str | Path, port: int, ae_title: str = "DEMO_PACS", bind: str = "127.0.0.1") -> Any:
    """Start the SCP in the background; returns the pynetdicom server (call ``shutdown()``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae.start_server((bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store, [folder])])
