"""Read-only summaries of the ledger for ``dicom-node status`` and ``GET /status``."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from dicom_node.ledger.records import Job, JobState
from dicom_node.ledger.store import Store


class Reporting(Store):
    """Counts and recent jobs; nothing here writes."""

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def recent_jobs(self, states: Iterable[JobState], limit: int) -> list[Job]:
        """The ``limit`` most recently updated jobs in ``states``, newest first."""
        values = [JobState(s).value for s in states]
        rows = self._db().execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(values))}) "
                                  "ORDER BY updated_at DESC, id DESC LIMIT ?", (*values, limit))
        return [Job.from_row(r) for r in rows]

    def series_count(self) -> int:
        return int(self._db().execute("SELECT COUNT(DISTINCT series_uid) FROM jobs").fetchone()[0])

    def iter_instances(self) -> Iterator[sqlite3.Row]:
        yield from self._db().execute("SELECT * FROM instances ORDER BY received_at")

    def receiver_summary(self) -> dict[str, Any]:
        """Instances, associations still open and the time of the last instance, for status."""
        db = self._db()
        instances, last = db.execute("SELECT COUNT(*), MAX(received_at) FROM instances").fetchone()
        open_assocs = db.execute("SELECT COUNT(*) FROM associations WHERE closed_at IS NULL").fetchone()[0]
        return {"instances": int(instances), "last_instance_at": last, "open_associations": int(open_assocs)}

    # -- operators' views: metrics (dicom_node.observability) and the audit trail ----------------
    def series_by_state(self) -> dict[str, int]:
        """Series counted by the state of their latest job (the one nothing superseded: a newer
        job of a series always marks the one before it)."""
        rows = self._db().execute("SELECT state, COUNT(*) FROM jobs WHERE superseded_by IS NULL GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def outbox_summary(self) -> list[sqlite3.Row]:
        """Per destination and kind: ``pending``, ``retrying`` (pending after a failed attempt)
        and ``dead`` deliveries."""
        return list(self._db().execute(
            "SELECT destination, kind, SUM(state='pending') AS pending, "
            "SUM(state='pending' AND attempts>0) AS retrying, SUM(state='dead') AS dead "
            "FROM deliveries GROUP BY destination, kind ORDER BY destination, kind"))

    def events_after(self, after_id: int, limit: int = 1000) -> list[sqlite3.Row]:
        """State-change events with ``id > after_id``, oldest first, with their job's columns
        (prefixed ``job_``) and, per event, ``queued_at``: the latest ``queued`` event before it.

        Event ids grow in commit order (one writer at a time), so a reader that remembers the
        last id it saw misses none and sees none twice.
        """
        return list(self._db().execute(
            "SELECT e.id, e.job_id, e.state, e.at, e.detail, j.series_uid AS job_series_uid, "
            "j.study_uid AS job_study_uid, j.reason AS job_reason, j.fail_stage AS job_fail_stage, "
            "j.lane AS job_lane, j.triage AS job_triage, j.last_instance_at AS job_last_instance_at, "
            "j.worker_outcome_json AS job_worker_outcome_json, j.files_json AS job_files_json, "
            "j.assessed_instances AS job_assessed_instances, "
            "(SELECT MAX(q.at) FROM events q WHERE q.job_id=e.job_id AND q.id<e.id AND q.state='queued') "
            "AS queued_at, "
            "(SELECT MAX(o.at) FROM events o WHERE o.job_id=e.job_id AND o.id<e.id "
            "AND o.state IN ('done','failed','not_analysed')) AS outcome_at, "
            "(SELECT COUNT(*) FROM events c WHERE c.job_id=e.job_id AND c.id<e.id "
            "AND c.state IN ('complete','not_analysed')) AS decided_before "
            "FROM events e JOIN jobs j ON j.id = e.job_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (after_id, limit)))

    def last_event_id(self) -> int:
        return int(self._db().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def last_sent_at(self, job_id: int) -> dict[str, float]:
        """Per delivery kind (``dicom``, ``hl7``, ``webhook``): when the job's last delivery of
        that kind was acknowledged."""
        rows = self._db().execute("SELECT kind, MAX(updated_at) FROM deliveries WHERE job_id=? AND state='sent' "
                                  "GROUP BY kind", (job_id,))
        return {r[0]: r[1] for r in rows}
