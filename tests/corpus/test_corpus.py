"""The bad-input corpus sent to one running node over real DICOM (pynetdicom SCU, raw sockets).

Every kind asserts its outcome: refused at receive with which status and why, answered with
which PDUs, not eligible with which reason, not analysed by the worker with which reason (in
the ledger and in the status SR), or analysed. After every kind the node must still run, and
no kind may end as a result when its pixel values are not trustworthy.
"""
from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.requestor import guard
from segmenter.dicom_io import make_test_series
from tests.corpus.kind import Kind, Series
from tests.corpus.node import AnalysingNode
from tests.corpus.send import Reply, raw_exchange, store
from tests.corpus.series_kinds import SERIES_KINDS
from tests.corpus.wire_kinds import WIRE_KINDS

pytestmark = [pytest.mark.network, pytest.mark.slow]

KINDS = WIRE_KINDS + SERIES_KINDS
#: The node with the model loaded uses well under this; a PDU that claims 4 GiB must not change that.
MAX_NODE_RSS_KIB = 2 * 1024 * 1024
#: Identifiers the corpus files carry (segmenter.dicom_writer defaults and the charset kinds).
IDENTIFIERS = ("Phantom^Head", "PHANTOM0001", "19600101", "Yamada", "山田", "Wang^XiaoDong", "Müller")


@dataclass
class Observed:
    replies: list[Reply]
    answer: list[int] | None
    closed: bool | None
    series_uids: set[str]
    alive: bool


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def pdu_types(data: bytes) -> list[int]:
    """The PDU types in ``data``, a run of the same type counted once."""
    types: list[int] = []
    pos = 0
    while pos + 6 <= len(data):
        kind, _, length = struct.unpack_from(">BBL", data, pos)
        if not types or types[-1] != kind:
            types.append(kind)
        pos += 6 + length
    return types


def _series_uids(paths: list[Path], replies: list[Reply]) -> set[str]:
    uids = set()
    for path, reply in zip(paths, replies):
        if reply.status == 0:
            uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID))
    return uids


def _send(node: AnalysingNode, kind: Kind, folder: Path) -> Observed:
    sample = kind.build(folder)
    if kind.raw:
        data, closed = raw_exchange(node.port, sample.chunks)
        return Observed([], pdu_types(data), closed, set(), node.alive())
    replies: list[Reply] = []
    for batch in sample.batches:
        replies += store(node.port, batch)
    return Observed(replies, None, None, _series_uids(sample.files, replies), node.alive())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AnalysingNode, dict[str, Observed]]]:
    root = tmp_path_factory.mktemp("corpus")
    node = AnalysingNode(root / "node")
    try:
        observed = {kind.name: _send(node, kind, root / "in" / slug(kind.name)) for kind in KINDS}
        pending = {uid for kind in KINDS if kind.series for uid in observed[kind.name].series_uids}
        deadline = time.monotonic() + 420  # ~60 s on an idle 2-core machine
        while pending and time.monotonic() < deadline and node.alive():
            pending = {uid for uid in pending if not node.settled(node.job_for(uid))}
            time.sleep(0.25)
        assert not pending, f"{len(pending)} series never settled:\n{node.log()[-3000:]}"
        yield node, observed
    finally:
        node.close()


def test_corpus_has_at_least_40_kinds() -> None:
    assert len(KINDS) >= 40 and len({k.name for k in KINDS}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind(corpus, kind: Kind) -> None:  # type: ignore[no-untyped-def]
    node, observed = corpus
    seen = observed[kind.name]
    assert seen.alive, "the node died on this kind"
    if kind.raw:
        assert (tuple(seen.answer or ()), seen.closed) == (kind.answer, kind.closes), (seen.answer, seen.closed)
        return
    for index, reply in enumerate(seen.replies):
        status, words = kind.refused.get(index, (0, ""))
        assert reply.status == status, f"instance {index}: status {reply.status} ({reply.comment})"
        assert words in reply.comment and "\\" not in reply.comment, f"instance {index}: {reply.comment!r}"
    if kind.series is None:
        assert not seen.series_uids, "nothing of this kind may be stored"
        return
    [series_uid] = seen.series_uids
    job = node.job_for(series_uid)
    assert job is not None
    states = [state for state, _, _ in node.ledger.events(job.id)]
    if kind.series is Series.ANALYSED:
        assert job.state == "done" and job.reason is None, (job.state, job.reason)
        assert "sr" in {f["type"] for f in job.result["files"]}
        assert "caveat" not in job.result, job.result["caveat"]  # sent whole, released
        return
    assert job.state == "not_analysed", (job.state, job.reason)
    assert kind.reason in (job.reason or ""), job.reason
    # Decided by the assembler (never queued for analysis) or by the worker after reading the pixels.
    assert ("queued" in states) is (kind.series is Series.NOT_ANALYSED), states
    reports = [f for f in job.result.get("files", []) if f["type"] == "sr"]
    assert bool(reports) is kind.status_sr, job.result
    for report in reports:
        text = (node.data_dir / report["path"]).read_bytes()
        assert kind.reason.encode() in text, "the status SR does not state the reason"


def test_series_whose_association_was_aborted_says_it_may_be_incomplete(corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A sender that aborts halfway (and never resends): the slices that came are analysed, and
    the report says the transfer was interrupted instead of reading as a complete result."""
    node, _ = corpus
    files = make_test_series(tmp_path / "series", n_slices=24, rows=64, cols=64, seed=41)
    ae = AE(ae_title="ABORTING_SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = guard(ae.associate("127.0.0.1", node.port, ae_title="DURAL_AI"))
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(path).Status) for path in files[:16]]
    assoc.abort()
    assert statuses == [0] * 16
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    deadline = time.monotonic() + 180
    while not node.settled(job := node.job_for(series_uid)):
        assert time.monotonic() < deadline and node.alive(), node.log()[-3000:]
        time.sleep(0.25)
    assert job.state == "done", (job.state, job.reason)
    assert any("association was aborted" in (d or "") for _, _, d in node.ledger.events(job.id))
    caveat = job.result["caveat"]
    assert "Transfer interrupted" in caveat and "after 16 instance(s)" in caveat
    [report] = [f for f in job.result["files"] if f["type"] == "sr"]
    text = (node.data_dir / report["path"]).read_bytes()
    assert b"Transfer interrupted" in text and b"after 16 instance(s)" in text


def test_node_survived_the_corpus(corpus) -> None:  # type: ignore[no-untyped-def]
    node, _ = corpus
    assert node.alive()
    ae = AE(ae_title="CORPUS_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DURAL_AI")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    _, peak = node.rss_kib()
    assert peak < MAX_NODE_RSS_KIB, f"node peak RSS {peak} KiB"
    log = node.log()
    assert "Exception in thread" not in log, "a thread died of an uncaught exception"
    # pynetdicom logs the exception with which it aborts an association on a malformed PDU, and
    # pydicom the decoder's error on garbage fragments; any other traceback is a failure the
    # node did not expect.
    unexpected = [line for line in log.splitlines() if "Traceback" in line
                  and not any(f"logger={lib}." in line for lib in ("pynetdicom", "pydicom"))]
    assert not unexpected, [line[:300] + " ... " + line[-300:] for line in unexpected]
    assert list(node.tmp.iterdir()) == [], "partial writes left behind"
    for text in IDENTIFIERS:
        assert text not in log, f"{text!r} in the node's log"
