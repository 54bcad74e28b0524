"""The job ledger: SQLite (WAL) in ``data_dir``, the node's single source of truth.

It records every received instance, every association, every job and every job state change with
a timestamp, and the per-destination delivery records (the durable outbox). It is the only code
that changes job state. Its parts, each a mixin over one :class:`~.store.Store`:

=================  ==========================================================================
``schema``         tables and migrations (``PRAGMA user_version``)
``records``        ``JobState``, ``FailStage``, ``DeliveryState``, the ``Job`` and ``Delivery`` rows
``receiving``      associations and instances; one job per series, superseded when it grows
``jobs``           the forward-only state machine, submissions, status-report bookkeeping
``deliveries``     the durable outbox
``header_cache``   header summaries read once per instance
``reporting``      counts and recent jobs for status
``reprocessing``   batch reprocessing runs and the progress of each series they found
``access``         operator console API tokens and browser sessions (digests only)
``browsing``       the console's worklist: current jobs by arrival or study
``purging``        retention: jobs whose files may go, and the record that they went
=================  ==========================================================================
"""
from __future__ import annotations

from dicom_node.ledger.access import Access, TokenInfo
from dicom_node.ledger.browsing import Browsing
from dicom_node.ledger.deliveries import Deliveries
from dicom_node.ledger.header_cache import HeaderCache
from dicom_node.ledger.jobs import Jobs
from dicom_node.ledger.purging import Purging
from dicom_node.ledger.receiving import Receiving
from dicom_node.ledger.records import (
    OPEN_STATES, OUTCOME_STATES, Assessment, Delivery, DeliveryState, FailStage, Job, JobState, ReanalysisRefused,
    TransitionError,
)
from dicom_node.ledger.reporting import Reporting
from dicom_node.ledger.reprocessing import Reprocessing
from dicom_node.ledger.schema import SCHEMA_VERSION, SchemaError

__all__ = [
    "OPEN_STATES", "OUTCOME_STATES", "SCHEMA_VERSION", "Assessment", "Delivery", "DeliveryState", "FailStage",
    "Job", "JobState", "Ledger", "ReanalysisRefused", "SchemaError", "TokenInfo", "TransitionError",
]


class Ledger(Receiving, Jobs, Deliveries, HeaderCache, Reporting, Reprocessing, Access, Browsing,
             Purging):
    """Thread-safe access to the ledger database at ``path`` (see the module docstring)."""
