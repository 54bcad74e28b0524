"""A reprocess run's pacing against a pynetdicom Q/R SCP: retrievals per minute, retrievals at
once, the pause while stat work waits, the hours of a scheduled run, the progress it reports
(and the bar a terminal shows) and its summary table.

The SCP answers C-FIND with head-CT studies and C-MOVE with success after ``hold`` seconds and
no sub-operation, recording when each C-MOVE arrived; the run then finds nothing delivered and
records that, which is all these tests need (the runs that really move series are in
tests/integration/test_reprocess.py).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove)

from dicom_node.commands.reprocess import format_summary
from dicom_node.config import parse_config
from dicom_node.ledger import JobState, Ledger
from dicom_node.reprocess import ModelIdentity, Params, Reprocessor

pytestmark = pytest.mark.network
CT = "1.2.840.10008.5.1.4.1.1.2"
NO_INSTANCE = "C-MOVE delivered no instance to the node"


class Pacs:
    """The Q/R SCP: ``studies`` head CTs, one series each; C-MOVE takes ``hold`` seconds."""

    def __init__(self, port: int, studies: int, hold: float = 0.0) -> None:
        self.port, self.hold = port, hold
        self.studies = [f"1.2.826.0.1.3680043.10.{n}" for n in range(1, studies + 1)]
        self.moves: list[float] = []  # arrival times
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def find(self, event):
        query = event.identifier
        for uid in self.studies:
            ds = Dataset()
            ds.QueryRetrieveLevel = query.QueryRetrieveLevel
            ds.StudyInstanceUID = uid
            if query.QueryRetrieveLevel == "STUDY":
                ds.StudyDate, ds.ModalitiesInStudy, ds.StudyDescription = "20260110", "CT", "CT HEAD"
            elif query.StudyInstanceUID == uid:
                ds.SeriesInstanceUID, ds.Modality, ds.BodyPartExamined = f"{uid}.1", "CT", "HEAD"
                ds.SeriesNumber, ds.NumberOfSeriesRelatedInstances = 2, 30
            else:
                continue
            yield 0xFF00, ds

    def move(self, event):
        with self._lock:
            self.moves.append(time.monotonic())
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.hold)
        with self._lock:
            self.active -= 1
        yield "127.0.0.1", 1
        yield 0  # nothing to send: success with no sub-operation


@pytest.fixture
def pacs_factory(free_port):
    servers = []

    def make(studies: int, hold: float = 0.0) -> Pacs:
        pacs = Pacs(free_port(), studies, hold)
        ae = AE(ae_title="QRSCP")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.maximum_associations = 16
        servers.append(ae.start_server(("127.0.0.1", pacs.port), block=False,
                                       evt_handlers=[(evt.EVT_C_FIND, pacs.find), (evt.EVT_C_MOVE, pacs.move)]))
        return pacs

    yield make
    for server in servers:
        server.shutdown()


def raw_config(tmp_path: Path, pacs: Pacs, **reprocess) -> dict:
    return {"node": {"data_dir": str(tmp_path / "data"), "ae_title": "DURAL_AI"},
            "series": {"include": {"body_part_examined": ["HEAD"]}},
            "destinations": [{"name": "pacs", "ae_title": "QRSCP", "host": "127.0.0.1", "port": pacs.port,
                              "timeout_s": 10}],
            "reprocess": {"source": "pacs", "stat_poll_s": 0.05, "wait_s": 0, **reprocess}}


def reprocessor(tmp_path: Path, pacs: Pacs, *, params: Params | None = None, **kwargs) -> Reprocessor:
    cfg = parse_config(raw_config(tmp_path, pacs, **kwargs.pop("reprocess", {})))
    ledger = Ledger(cfg.data_dir / "ledger.sqlite3")
    return Reprocessor(cfg, ledger, cfg.destination("pacs"), params or Params(source="pacs", since=dt.date(2026, 1, 1)),
                       ModelIdentity("2.0", "cd" * 32), **kwargs)


def test_retrievals_keep_to_the_rate_and_the_number_at_once(tmp_path, pacs_factory):
    # One retrieval may start per second and two may run; each takes 2.5 s, so the third must
    # wait for a slot (at 2.5 s) although the rate would let it start at 2 s.
    pacs = pacs_factory(studies=3, hold=2.5)
    run = reprocessor(tmp_path, pacs, reprocess={"studies_per_minute": 60, "max_concurrent_retrieves": 2})
    summary = run.run()
    assert summary.finished and summary.counts["failed"] == 3
    gaps = [b - a for a, b in zip(pacs.moves, pacs.moves[1:])]
    assert len(pacs.moves) == 3 and gaps[0] >= 0.8 and gaps[1] >= 1.2, gaps
    assert pacs.max_active == 2


def test_stat_work_waiting_pauses_retrieval(tmp_path, pacs_factory):
    pacs = pacs_factory(studies=2)
    looks: list[int] = []

    def sleep(seconds: float) -> None:
        looks.append(len(pacs.moves))
        if len(looks) == 3:  # the node has analysed the stat series meanwhile
            ledger.transition(stat_job, JobState.DONE)
        time.sleep(min(seconds, 0.05))

    run = reprocessor(tmp_path, pacs, sleep=sleep, reprocess={"studies_per_minute": 6000})
    ledger = run.ledger
    ledger.record_instance("9.9.1", "9.9", "9.9.9", CT, "spool/x", None)  # a modality's series: stat lane
    stat_job = ledger.latest_job("9.9.9").id
    assert ledger.stat_work_waiting() == 1
    summary = run.run()
    assert looks[:3] == [0, 0, 0], looks  # nothing retrieved while the stat series waited
    assert len(pacs.moves) == 2 and summary.finished


def test_scheduled_run_retrieves_only_inside_its_hours_and_goes_on_next_time(tmp_path, pacs_factory):
    pacs = pacs_factory(studies=3)
    clock = iter([dt.datetime(2026, 2, 1, 2, 0), dt.datetime(2026, 2, 1, 6, 0)])
    run = reprocessor(tmp_path, pacs, scheduled=True, now_local=lambda: next(clock, dt.datetime(2026, 2, 1, 6, 0)),
                      reprocess={"hours": "01:00-05:00", "studies_per_minute": 6000})
    first = run.run()
    assert len(pacs.moves) == 1 and not first.finished and "outside reprocess.hours (01:00-05:00)" in first.stopped
    assert first.counts["pending"] == 2
    next_night = reprocessor(tmp_path, pacs, scheduled=True, now_local=lambda: dt.datetime(2026, 2, 2, 1, 30),
                             reprocess={"hours": "01:00-05:00", "studies_per_minute": 6000})
    second = next_night.run()
    assert second.resumed and second.finished and len(pacs.moves) == 3  # the first study is not fetched again
    # A run started by hand (not scheduled) ignores the hours.
    by_hand = reprocessor(tmp_path, pacs, now_local=lambda: dt.datetime(2026, 2, 2, 12, 0),
                          params=Params(source="pacs", since=dt.date(2026, 1, 2)),
                          reprocess={"hours": "01:00-05:00", "studies_per_minute": 6000})
    assert by_hand.run().finished and len(pacs.moves) == 6


def test_progress_reaches_the_total_and_the_summary_table_gives_reasons(tmp_path, pacs_factory):
    pacs = pacs_factory(studies=3)
    seen: list[tuple[int, int]] = []
    summary = reprocessor(tmp_path, pacs, on_progress=lambda done, total: seen.append((done, total)),
                          reprocess={"studies_per_minute": 6000}).run()
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    table = format_summary(summary).splitlines()
    rows = {line[:40].strip(): line[40:].strip() for line in table if not line.startswith("      ")}
    assert rows["found"] == "3" and rows["failed"] == "3" and rows["analysed"] == "0"
    assert f"3 x {NO_INSTANCE}" in "\n".join(table)


def test_terminal_shows_a_progress_bar(tmp_path, pacs_factory):
    pacs = pacs_factory(studies=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw_config(tmp_path, pacs, studies_per_minute=6000)))
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dicom-node"), "--config", str(config), "reprocess",
                             "--since", "2026-01-01"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=child, env=os.environ)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(parent, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=120)
    os.close(parent)
    terminal = b"".join(chunks).decode(errors="replace")
    assert "reprocess: 100%" in terminal and "2/2" in terminal, terminal
    assert proc.returncode == 1 and "failed" in out.decode()  # nothing was delivered by this SCP
