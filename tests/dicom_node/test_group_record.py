"""Group commit of directly written instances' ledger rows: concurrent rows share transactions,
each caller returns only once its row is committed, and a failing batch leaves every caller its
own outcome."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dicom_node.group_record import GroupRecorder
from dicom_node.ledger import Ledger

STUDY, SERIES, CT = "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"


def _row(tmp_path: Path, sop: str) -> tuple[Any, ...]:
    path = tmp_path / f"{sop}.dcm"
    path.write_bytes(b"x")
    return (sop, STUDY, SERIES, CT, path, None, time.time())


def _run_together(calls: list[Any]) -> dict[int, BaseException | None]:
    outcomes: dict[int, BaseException | None] = {}
    start = threading.Barrier(len(calls))

    def run(index: int, call: Any) -> None:
        start.wait()
        try:
            call()
            outcomes[index] = None
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_concurrent_rows_share_transactions_and_are_committed_on_return(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    recorder = GroupRecorder(ledger, threading.Lock())
    batches: list[int] = []
    record_instances = ledger.record_instances

    def slow_first(rows: list[Any]) -> int:
        batches.append(len(rows))
        if len(batches) == 1:
            time.sleep(0.3)  # the others arrive meanwhile and wait for the next commit
        return record_instances(rows)

    monkeypatch.setattr(ledger, "record_instances", slow_first)
    rows = [_row(tmp_path, f"1.2.3.4.{i}") for i in range(8)]
    seen_after_return: list[bool] = []

    def record(row: tuple[Any, ...]) -> None:
        recorder.record(row)
        seen_after_return.append(str(row[4]) in ledger.known_paths())

    outcomes = _run_together([lambda r=row: record(r) for row in rows])
    assert all(o is None for o in outcomes.values()) and all(seen_after_return)
    assert sum(batches) == 8 and len(batches) < 8, batches


def test_a_failing_batch_fails_only_the_row_that_cannot_be_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    recorder = GroupRecorder(ledger, threading.Lock())
    record_instances = ledger.record_instances
    commits: list[int] = []

    def refuse_bad(rows: list[Any]) -> int:
        commits.append(len(rows))
        if len(commits) == 1:
            time.sleep(0.3)
        if any(r[0] == "1.2.3.4.666" for r in rows):
            raise FileNotFoundError("removed by retention while being received")
        return record_instances(rows)

    monkeypatch.setattr(ledger, "record_instances", refuse_bad)
    sops = ["1.2.3.4.1", "1.2.3.4.666", "1.2.3.4.2", "1.2.3.4.3", "1.2.3.4.4"]
    outcomes = _run_together([lambda s=sop: recorder.record(_row(tmp_path, s)) for sop in sops])
    assert isinstance(outcomes[1], FileNotFoundError)
    assert all(outcomes[i] is None for i in (0, 2, 3, 4))
    known = {Path(p).stem for p in ledger.known_paths()}
    assert known == {"1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3", "1.2.3.4.4"}
