"""Prometheus metrics of the node, served at ``GET /metrics``.

Two sources, because the node is several processes (receiver and scheduler in ``serve``, Celery
workers possibly on other hosts):

- **Counters of this process** (receiver, sender, retention), incremented where the thing
  happens: instances received and refused, associations, delivery attempts, purges.
- **The ledger, read at scrape time** by :class:`~.ledger_metrics.LedgerCollector`: jobs and
  series by state, outbox depth, and the stage-latency histograms. Workers report their stage
  timings in the outcome the node records in the ledger, so every worker's latencies reach the
  node's ``/metrics`` without a push gateway or a multiprocess directory.

All metrics live in :data:`REGISTRY`, a registry of our own rather than prometheus_client's
global default, so that tests can read it in isolation and nothing imported by accident is
exported. The full list with meanings is in ``docs/operations.md``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from dicom_node.observability.ledger_metrics import LedgerCollector

if TYPE_CHECKING:
    from dicom_node.ledger import Ledger

__all__ = [
    "ASSOCIATIONS", "DELIVERY_ATTEMPTS", "INSTANCES_RECEIVED", "INSTANCES_REFUSED", "LEDGER", "REFUSAL_REASONS",
    "REGISTRY", "RETENTION_BYTES_FREED", "RETENTION_LAST_RUN", "RETENTION_PURGED_FILES", "RETENTION_PURGED_JOBS",
    "bind_ledger", "exposition",
]

REGISTRY = CollectorRegistry(auto_describe=True)

#: Why the receiver refused an instance (label ``reason`` of ``dural_instances_refused_total``).
REFUSAL_REASONS = ("low_disk", "disk_error", "undecodable", "mismatch", "error")

INSTANCES_RECEIVED = Counter("dural_instances_received", "Instances stored in the spool and recorded in the "
                             "ledger (answered Success)", registry=REGISTRY)
INSTANCES_REFUSED = Counter("dural_instances_refused", "Instances answered with a failure status, by reason",
                            ["reason"], registry=REGISTRY)
for _reason in REFUSAL_REASONS:
    INSTANCES_REFUSED.labels(_reason)  # present at 0, so rate() works from the first refusal
ASSOCIATIONS = Counter("dural_associations", "Associations requested of the receiver, by result "
                       "(accepted, rejected)", ["result"], registry=REGISTRY)
for _result in ("accepted", "rejected"):
    ASSOCIATIONS.labels(_result)
DELIVERY_ATTEMPTS = Counter("dural_delivery_attempts", "Attempts to deliver results or notifications, by "
                            "destination, kind (dicom, hl7, webhook) and result (sent, retry, dead)",
                            ["destination", "kind", "result"], registry=REGISTRY)
RETENTION_PURGED_JOBS = Counter("dural_retention_purged_jobs", "Jobs whose spool and result files retention "
                                "removed", registry=REGISTRY)
RETENTION_PURGED_FILES = Counter("dural_retention_purged_files", "Spool and result files retention removed",
                                 registry=REGISTRY)
RETENTION_BYTES_FREED = Counter("dural_retention_bytes_freed", "Bytes retention freed", registry=REGISTRY)
RETENTION_LAST_RUN = Gauge("dural_retention_last_run_timestamp_seconds", "When retention last finished a run "
                           "(Unix time; 0 before the first)", registry=REGISTRY)

#: Reads the ledger at scrape time; bound to the node's ledger by :func:`bind_ledger`.
LEDGER = LedgerCollector()
REGISTRY.register(LEDGER)


def bind_ledger(ledger: Ledger | None) -> None:
    """Serve the ledger-derived metrics from ``ledger`` (None: stop serving them)."""
    LEDGER.bind(ledger)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The current metrics, in the format the scraper asked for.

    Parameters
    ----------
    accept:
        The request's ``Accept`` header. Prometheus asks for OpenMetrics when it can; without a
        header the classic text format 0.0.4 is served, which every Prometheus version reads.

    Returns
    -------
    tuple[bytes, str]
        The body and its ``Content-Type`` header value.
    """
    if accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(REGISTRY), content_type
    return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
