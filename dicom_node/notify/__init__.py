"""Notifications of results to the RIS (HL7 v2.5.1 ORU^R01 over MLLP) and to on-call systems
(signed JSON webhook), through the node's durable outbox.

=================  ==========================================================================
``queueing``       which receivers hear of a result, its category, and corrections
``notice``         what a notification says, from the ledger and the source header
``hl7``            the ORU^R01 message (hl7apy), MLLP framing and the ACK
``webhook``        the JSON body, its HMAC-SHA256 signature and the POST
``send``           one attempt at one notification: success, retry, or give up
=================  ==========================================================================

A notification is one row of the ``deliveries`` table (kind ``hl7`` or ``webhook``, destination
``hl7:<name>`` or ``webhook:<name>``), so it gets the outbox's backoff, dead letter and
``dicom-node retry``. The row is unique per job and receiver: one notification per result
version. Its payload freezes the category and the correction facts when it is queued; the PHI
the receivers need (patient ID and name, accession number) is read from the source header when
it is sent and never stored in the ledger or logged.
"""
from __future__ import annotations

from dicom_node.notify.queueing import destination_name, queue_notifications

__all__ = ["destination_name", "queue_notifications"]
