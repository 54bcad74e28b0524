"""Ledger rows of directly written instances, committed together (group commit).

Several associations writing straight into the spool each record their instance in the ledger
before they answer. One SQLite transaction per instance, taken one after another under the
receiver's ledger lock, kept each association thread waiting for the others about a fifth of
its time with 8 associations (py-spy, wall time). Here a thread that finds no commit running
commits every row handed in so far in one transaction; the others wait for it, and their rows
are in the ledger when they return, as before. A batch that fails is recorded row by row by
the threads that handed them in, so each gets its own error as it would alone.
"""
from __future__ import annotations

import threading

from dicom_node.ledger import Ledger
from dicom_node.ledger.receiving import InstanceRow


class GroupRecorder:
    """``record(row)`` returns once ``row`` is committed; raises as ``Ledger.record_instance``."""

    def __init__(self, ledger: Ledger, ledger_lock: threading.Lock) -> None:
        self._ledger, self._ledger_lock = ledger, ledger_lock
        self._cond = threading.Condition()
        self._pending: list[InstanceRow] = []
        self._issued = 0  # rows handed in so far
        self._ended = 0  # rows whose batch has been committed or has failed
        self._committing = False
        self._alone: set[int] = set()  # tickets of failed batches, to record one by one

    def record(self, row: InstanceRow) -> None:
        with self._cond:
            self._pending.append(row)
            self._issued += 1
            ticket = self._issued
            while self._ended < ticket:
                if self._committing:
                    self._cond.wait()
                    continue
                self._committing = True
                batch, self._pending = self._pending, []
                first, last = self._issued - len(batch) + 1, self._issued
                self._cond.release()
                committed = False
                try:
                    with self._ledger_lock:
                        self._ledger.record_instances(batch)
                    committed = True
                except Exception:  # noqa: BLE001 - each row's own attempt below says what failed
                    pass
                finally:
                    self._cond.acquire()
                    self._committing = False
                    self._ended = last
                    if not committed:
                        self._alone.update(range(first, last + 1))
                    self._cond.notify_all()
            if ticket not in self._alone:
                return
            self._alone.discard(ticket)
        with self._ledger_lock:
            self._ledger.record_instances([row])
