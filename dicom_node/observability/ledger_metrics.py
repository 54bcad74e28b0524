"""Metrics read from the ledger at scrape time: jobs, series, outbox, stage latencies, model.

The ledger already records every state change with its time, and every worker's outcome with
its stage timings, whichever process or host ran it. So instead of each process keeping (and
losing at restart) histograms of its own, :class:`LedgerCollector` reads the ledger when
Prometheus scrapes:

- gauges (jobs by state, series by state, outbox depth) are counted afresh on each scrape;
- the stage histograms follow the ledger's event log: each scrape reads only the events added
  since the last one (event ids grow in commit order), turns each into the stage latencies it
  completes, and adds them to histograms kept in memory. After a restart the first scrape reads
  the whole log once, so the histograms count every job the ledger knows, never one twice.

Stages (label ``stage`` of ``dural_stage_duration_seconds``), each observed when it ends:

===================  ==========================================================================
receive_to_complete  the series' last instance -> series complete (or not analysed)
queue_wait           submitted to the queue -> a worker started the job
inference            the model's forward pass (worker timing)
object_building      building and writing SEG, SR, key images or status report (worker timing)
sending              job outcome -> the last DICOM destination acknowledged (at delivery)
notification         job outcome -> the last HL7/webhook receiver acknowledged (at delivery)
end_to_end           the series' last instance -> every delivery acknowledged
===================  ==========================================================================

Queue wait compares the node's clock with the worker's: on other hosts keep clocks in sync
(NTP); a negative difference is counted as 0.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dicom_node.ledger import Ledger

__all__ = ["BUCKETS", "DELIVERY_KINDS", "STAGES", "LedgerCollector", "StageHistograms", "stage_latencies"]

logger = logging.getLogger(__name__)

STAGES = ("receive_to_complete", "queue_wait", "inference", "object_building", "sending", "notification",
          "end_to_end")
#: Seconds; from a key-image write (tens of ms) to a stat job behind a night's batch (an hour).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
           math.inf)
DELIVERY_KINDS = ("dicom", "hl7", "webhook")
#: Job states, in the order of ``dicom_node.ledger.JobState`` (kept here so that reading the
#: metrics never needs more than the ledger's rows).
JOB_STATES = ("received", "complete", "queued", "running", "done", "failed", "not_analysed", "delivered",
              "superseded")
#: Worker timings that make up ``object_building`` (``worker.pipeline``: build, write, report).
_BUILD_TIMINGS = ("build", "write", "report")
_EVENTS_PER_READ = 2000


class StageHistograms:
    """Cumulative bucket counts and sums per stage."""

    def __init__(self) -> None:
        self.counts = {stage: [0] * len(BUCKETS) for stage in STAGES}
        self.sums = {stage: 0.0 for stage in STAGES}

    def observe(self, stage: str, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        counts = self.counts[stage]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.sums[stage] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("dural_stage_duration_seconds", "Latency of each pipeline stage, from the "
                                       "ledger (see docs/operations.md for where each stage starts and ends)",
                                       labels=["stage"])
        for stage in STAGES:
            buckets = [("+Inf" if math.isinf(b) else repr(b), c) for b, c in zip(BUCKETS, self.counts[stage])]
            family.add_metric([stage], buckets, self.sums[stage])
        return family


def _outcome(row: sqlite3.Row) -> dict[str, Any]:
    try:
        return json.loads(row["job_worker_outcome_json"] or "{}") or {}
    except ValueError:
        return {}


def stage_latencies(row: sqlite3.Row, sent_at: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """The stage latencies one ledger event completes (see the module docstring).

    Parameters
    ----------
    row:
        A row of ``Ledger.events_after``.
    sent_at:
        For a ``delivered`` event: when the job's last delivery of each kind was acknowledged.
    """
    state, at = row["state"], float(row["at"])
    found: list[tuple[str, float]] = []
    if state in ("complete", "not_analysed") and not row["decided_before"]:
        found.append(("receive_to_complete", at - row["job_last_instance_at"]))
    elif state in ("done", "failed"):
        outcome = _outcome(row)
        timings = outcome.get("timings") or {}
        if row["queued_at"] is not None and isinstance(outcome.get("started_at"), (int, float)):
            found.append(("queue_wait", outcome["started_at"] - row["queued_at"]))
        if isinstance(timings.get("inference"), (int, float)):
            found.append(("inference", timings["inference"]))
        built = [timings[k] for k in _BUILD_TIMINGS if isinstance(timings.get(k), (int, float))]
        if built:
            found.append(("object_building", sum(built)))
    elif state == "delivered":
        sent_at = sent_at or {}
        if row["outcome_at"] is not None:
            if "dicom" in sent_at:
                found.append(("sending", sent_at["dicom"] - row["outcome_at"]))
            notified = [t for kind, t in sent_at.items() if kind != "dicom"]
            if notified:
                found.append(("notification", max(notified) - row["outcome_at"]))
        found.append(("end_to_end", at - row["job_last_instance_at"]))
    return found


class LedgerCollector(Collector):
    """A prometheus_client collector over the ledger bound with :meth:`bind`.

    Thread-safe: scrapes are serialised, as each one advances the event cursor.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self._reset()

    def _reset(self) -> None:
        self._cursor = 0
        self._histograms = StageHistograms()
        self._model: dict[str, str] | None = None

    def bind(self, ledger: Ledger | None) -> None:
        """Read ``ledger`` from now on (the histograms start again from its whole event log)."""
        with self._lock:
            self._ledger = ledger
            self._reset()

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the bound ledger; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            ledger = self._ledger
            if ledger is None:
                return
            readable = GaugeMetricFamily("dural_ledger_readable", "1 when the last scrape could read the ledger")
            try:
                families = list(self._read(ledger))
            except sqlite3.Error:
                logger.warning("metrics: cannot read the ledger", exc_info=True)
                readable.add_metric([], 0)
                yield readable
                return
            readable.add_metric([], 1)
            yield readable
            yield from families

    def _read(self, ledger: Ledger) -> Iterator[Metric]:
        self._follow_events(ledger)
        jobs = GaugeMetricFamily("dural_jobs", "Jobs (one per series analysis) by state", labels=["state"])
        counts = ledger.counts()
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        series = GaugeMetricFamily("dural_series", "Series by the state of their latest job", labels=["state"])
        by_state = ledger.series_by_state()
        for state in JOB_STATES:
            if state != "superseded":
                series.add_metric([state], by_state.get(state, 0))
        depth = GaugeMetricFamily("dural_outbox_depth", "Deliveries waiting to be sent, by destination and kind",
                                  labels=["destination", "kind"])
        retrying = GaugeMetricFamily("dural_outbox_retrying", "Waiting deliveries whose last attempt failed, by "
                                     "destination and kind", labels=["destination", "kind"])
        dead = GaugeMetricFamily("dural_outbox_dead_letters", "Deliveries given up after their last attempt "
                                 "(`dicom-node retry` requeues them), by destination and kind",
                                 labels=["destination", "kind"])
        for row in ledger.outbox_summary():
            labels = [row["destination"], row["kind"]]
            depth.add_metric(labels, row["pending"] or 0)
            retrying.add_metric(labels, row["retrying"] or 0)
            dead.add_metric(labels, row["dead"] or 0)
        yield from (jobs, series, depth, retrying, dead, self._histograms.family())
        if self._model is not None:
            info = InfoMetricFamily("dural_model", "The model that produced the latest result (as the worker "
                                    "reported it)")
            info.add_metric([], self._model)
            yield info

    def _follow_events(self, ledger: Ledger) -> None:
        while True:
            rows = ledger.events_after(self._cursor, _EVENTS_PER_READ)
            for row in rows:
                sent_at = ledger.last_sent_at(row["job_id"]) if row["state"] == "delivered" else None
                for stage, seconds in stage_latencies(row, sent_at):
                    self._histograms.observe(stage, seconds)
                if row["state"] == "done":
                    model = _outcome(row).get("model")
                    if isinstance(model, dict) and model.get("version"):
                        self._model = {k: str(model.get(k, "")) for k in ("name", "version", "weights_sha256")}
                self._cursor = int(row["id"])
            if len(rows) < _EVENTS_PER_READ:
                return
