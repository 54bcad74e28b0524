"""Senders for the corpus: C-STORE of files exactly as they are on disk, and raw bytes on a socket."""
from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.multival import MultiValue
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_node.requestor import guard

#: What a C-STORE got: its status and ErrorComment, or ``status=None`` with ``comment`` saying
#: why nothing was sent (its presentation context was rejected).
REJECTED = "presentation context rejected"


@dataclass(frozen=True)
class Reply:
    status: int | None
    comment: str = ""


def store(port: int, files: Sequence[Path], calling: str = "CORPUS_SCU", timeout_s: float = 30) -> list[Reply]:
    """Send ``files`` over one association, each data set's bytes as stored (never re-encoded):
    the request carries the file meta's SOP Class and Instance UIDs, so a file whose data set
    disagrees with its meta is sent as the mismatch it is. One context per (class, syntax)."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        contexts, seen = [], set()
        for path in files:
            meta = pydicom.filereader.read_file_meta_info(path)
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            if key not in seen:
                seen.add(key)
                contexts.append(build_context(key[0], [key[1]]))
        contexts.append(build_context(Verification))  # the association stands even if all else is rejected
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="DURAL_AI")
        assert assoc.is_established, "the node refused the association"
        guard(assoc)
        try:
            accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
            replies = []
            for path in files:
                meta = pydicom.filereader.read_file_meta_info(path)
                if not assoc.is_established:
                    replies.append(Reply(None, "association ended"))
                    continue
                if (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)) not in accepted:
                    replies.append(Reply(None, REJECTED))
                    continue
                rsp = assoc.send_c_store(path)
                status = int(rsp.Status) if "Status" in rsp else None
                comment = rsp.get("ErrorComment", "")
                # Several values (a backslash in the text) come back as a list: keep them visible.
                replies.append(Reply(status, "\\".join(comment) if isinstance(comment, MultiValue) else str(comment)))
            return replies
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved


def raw_exchange(port: int, chunks: Sequence[bytes], quiet_s: float = 1.5) -> tuple[bytes, bool]:
    """Send ``chunks`` on a fresh TCP connection and collect what the node answers.

    Returns the bytes received and whether the node closed the connection itself; reading stops
    there or after ``quiet_s`` without a byte (the node is then waiting for more, as it may, up
    to ``node.network_timeout_s``). With no chunks the connection is closed at once.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=quiet_s) as sock:
        if not chunks:
            return b"", True
        for index, chunk in enumerate(chunks):
            sock.sendall(chunk)
            if index < len(chunks) - 1:  # the next chunk answers the node's reply: wait for it
                try:
                    received += sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    pass
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return received, True
            except TimeoutError:
                return received, False
            if not data:
                return received, True
            received += data
