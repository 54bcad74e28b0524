"""The durable outbox: one delivery per job and destination, with its attempts."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from dicom_node.ledger.records import OUTCOME_STATES, Delivery, DeliveryState, JobState
from dicom_node.ledger.store import Store


class Deliveries(Store):
    """Deliveries of a job's result files; the last one sent moves the job to ``delivered``."""

    def add_deliveries(self, job_id: int, destinations: Iterable[str], now: float | None = None) -> None:
        now = now or time.time()
        with self._tx() as db:
            for name in destinations:
                db.execute("INSERT OR IGNORE INTO deliveries(job_id, destination, state, next_attempt_at, "
                           "updated_at) VALUES (?,?,?,?,?)", (job_id, name, DeliveryState.PENDING.value, now, now))

    def add_notification(self, job_id: int, destination: str, kind: str, payload: dict[str, Any],
                         now: float | None = None) -> bool:
        """Queue one notification of a job's result; False when it was queued before (so a
        result version notifies each receiver once, however often this is called)."""
        now = now or time.time()
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO deliveries(job_id, destination, state, next_attempt_at, "
                             "updated_at, kind, payload_json) VALUES (?,?,?,?,?,?,?)",
                             (job_id, destination, DeliveryState.PENDING.value, now, now, kind,
                              json.dumps(payload, sort_keys=True)))
            return cur.rowcount == 1

    def earlier_notifications(self, series_uid: str, destination: str, before_job: int) -> list[Delivery]:
        """Notifications of earlier results of the series to ``destination`` that were sent or
        are still to be sent (dead letters excluded), oldest first."""
        rows = self._db().execute(
            "SELECT d.* FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE j.series_uid=? AND d.destination=? "
            "AND d.job_id<? AND d.state IN (?,?) ORDER BY d.job_id",
            (series_uid, destination, before_job, DeliveryState.SENT.value, DeliveryState.PENDING.value))
        return [Delivery.from_row(r) for r in rows]

    def deliveries(self, job_id: int | None = None, states: Iterable[DeliveryState] | None = None) -> list[Delivery]:
        query = "SELECT * FROM deliveries WHERE 1=1"
        args: list[Any] = []
        if job_id is not None:
            query, args = query + " AND job_id=?", [job_id]
        if states is not None:
            values = [DeliveryState(s).value for s in states]
            query += f" AND state IN ({','.join('?' * len(values))})"
            args += values
        rows = self._db().execute(query + " ORDER BY id", args)
        return [Delivery.from_row(r) for r in rows]

    def due_deliveries(self, now: float) -> list[Delivery]:
        rows = self._db().execute("SELECT * FROM deliveries WHERE state=? AND next_attempt_at<=? ORDER BY "
                                  "next_attempt_at", (DeliveryState.PENDING.value, now))
        return [Delivery.from_row(r) for r in rows]

    def delivery_attempted(self, delivery_id: int, *, ok: bool, error: str | None = None,
                           next_attempt_at: float | None = None, dead: bool = False,
                           now: float | None = None) -> None:
        """Record one send attempt; when every delivery of the job is sent the job is delivered."""
        now = now or time.time()
        state = DeliveryState.SENT if ok else (DeliveryState.DEAD if dead else DeliveryState.PENDING)
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?, next_attempt_at=?, "
                       "updated_at=? WHERE id=?", (state.value, error, next_attempt_at or now, now, delivery_id))
            job_id = db.execute("SELECT job_id FROM deliveries WHERE id=?", (delivery_id,)).fetchone()[0]
            left = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id=? AND state!=?",
                              (job_id, DeliveryState.SENT.value)).fetchone()[0]
            job_state = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if ok and left == 0 and job_state in {s.value for s in OUTCOME_STATES}:
                db.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=?",
                           (JobState.DELIVERED.value, now, job_id))
                self._event(db, job_id, JobState.DELIVERED, now, None)

    def retry_dead(self, job_id: int | None = None, now: float | None = None, *,
                   delivery_id: int | None = None) -> int:
        """Requeue dead-lettered deliveries (all, one job's, or one); returns how many."""
        now = now or time.time()
        query = "UPDATE deliveries SET state=?, attempts=0, next_attempt_at=?, updated_at=? WHERE state=?"
        args: list[Any] = [DeliveryState.PENDING.value, now, now, DeliveryState.DEAD.value]
        if job_id is not None:
            query, args = query + " AND job_id=?", args + [job_id]
        if delivery_id is not None:
            query, args = query + " AND id=?", args + [delivery_id]
        with self._tx() as db:
            return db.execute(query, args).rowcount
