"""Series assembly: read each new instance's header once, decide when a series is complete and
whether it may be analysed.

The SCP spools bytes and records every instance in the ledger, which groups instances by Series
Instance UID into one job per series (a series sent over several associations lands in one job;
an instance arriving after completion opens a new job that supersedes the old one). This stage
only moves jobs out of ``received``:

- ``complete`` when the series is complete and eligible: the submitter picks it up;
- ``not_analysed`` with a reason when it is complete but ineligible (see ``eligibility``).

A series is complete when either

(a) every association that delivered its instances has been released, its slices form one
    evenly spaced stack without gaps (``series.spacing_tolerance_mm``) and a settle time
    passed since its last instance: :data:`BATCH_RELEASE_SETTLE_S` when the last association
    carried several of the series' instances, :data:`RELEASE_SETTLE_S` when it carried one; or
(b) ``series.quiet_seconds`` passed since its last instance (the idle timer every open DICOM
    router uses; it also covers senders that keep an association open and idle).

The settle time in (a) exists because some senders open one association per instance: without
it, a stack would look "released and contiguous" between two of those associations. A sender
that used one association for many instances is not waiting to open another for each, so its
settle is short (it still covers a sender that splits a series into chunks a few ms apart).

Both outcomes are single ledger transitions guarded by the job's ``last_instance_at``, so an
instance recorded while we were deciding makes the transition a no-op and the job is looked at
again on the next pass. After a crash the ledger still says ``received`` and the next pass
decides again: nothing here keeps state in memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dicom_node.config import Config
from dicom_node.contract import LANES
from dicom_node.eligibility import contiguity, evaluate
from dicom_node.headers import HeaderSummary, read_summary
from dicom_node.lanes import SeriesFacts, choose_lane
from dicom_node.ledger import Assessment, Job, JobState, Ledger
from dicom_node.logs import short_uid

logger = logging.getLogger(__name__)

#: Seconds after the last instance before a released, contiguous series counts as complete
#: when that instance came on an association of its own (capped at series.quiet_seconds).
RELEASE_SETTLE_S = 1.0
#: The same when the last association carried several instances of the series.
BATCH_RELEASE_SETTLE_S = 0.2
#: A series' headers are read once no instance arrived for this long, or once every association
#: that delivered it was released, whichever comes first.
HEADER_SETTLE_S = 0.5
#: Headers read per pass, so that one huge study does not hold up the rest of the loop.
HEADER_BATCH = 500


@dataclass
class AssemblyPass:
    """What one :meth:`Assembler.run_once` did."""

    headers_read: int = 0
    completed: list[int] = field(default_factory=list)
    not_analysed: list[int] = field(default_factory=list)
    waiting: int = 0


def needs_status_report(job: Job) -> bool:
    """Whether a ``not_analysed`` job should get a "not analysed: <reason>" status SR.

    The assembler records the decision with the job's assessment (``Job.status_report``): true
    for CT image series only, false for non-CT objects and this node's own results (an SR for
    those would loop through the PACS).
    """
    return job.state == JobState.NOT_ANALYSED and bool(job.status_report)


def job_headers(ledger: Ledger, job_id: int) -> list[HeaderSummary] | None:
    """The cached header summaries of a job's instances; ``None`` while any is not read yet."""
    headers: list[HeaderSummary] = []
    for row in ledger.headers_for_job(job_id):
        if row["summary"] is None:
            return None
        if row["error"]:
            headers.append(HeaderSummary(sop_uid=row["sop_uid"], error=row["error"],
                                         sop_class_uid=row["sop_class_uid"]))
        else:
            headers.append(HeaderSummary.from_dict(row["summary"]))
    return headers


class Assembler:
    """Moves received series to ``complete`` or ``not_analysed``.

    Parameters
    ----------
    cfg:
        The node configuration (``series:`` section).
    ledger:
        The node's ledger; the only state this stage has.
    """

    def __init__(self, cfg: Config, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger

    def read_headers(self, now: float, limit: int = HEADER_BATCH) -> int:
        """Read and cache the header of up to ``limit`` instances not read yet.

        Only series that paused for :data:`HEADER_SETTLE_S` or whose associations were all
        released: reading headers while a series streams in would take the interpreter lock from
        the receiver in the same process (measured ~2.7 ms per instance), and nothing is
        decided before the series pauses anyway.
        """
        pending = self.ledger.instances_without_header(limit, settled_before=now - HEADER_SETTLE_S)
        for sop_uid, path in pending:
            summary = read_summary(path, sop_uid)
            self.ledger.record_header(sop_uid, {} if summary.error else summary.to_dict(),
                                      summary.error, now=now)
        return len(pending)

    def run_once(self, now: float) -> AssemblyPass:
        """Read new headers, then decide every ``received`` job once.

        Parameters
        ----------
        now:
            The current time (seconds since the epoch, as the ledger records them).
        """
        report = AssemblyPass(headers_read=self.read_headers(now))
        for job in self.ledger.jobs([JobState.RECEIVED]):
            state = self._decide(job, now)
            if state == JobState.COMPLETE:
                report.completed.append(job.id)
            elif state == JobState.NOT_ANALYSED:
                report.not_analysed.append(job.id)
            else:
                report.waiting += 1
        return report

    def completion(self, job: Job, headers: list[HeaderSummary], now: float) -> str | None:
        """Why the job's series counts as complete now, or None while it may still grow."""
        series = self.cfg.series
        idle = now - job.last_instance_at
        if idle >= series.quiet_seconds:
            return f"no instance for {idle:.1f} s (series.quiet_seconds {series.quiet_seconds:g})"
        if idle < min(BATCH_RELEASE_SETTLE_S, series.quiet_seconds):
            return None
        if self.ledger.open_associations_for_job(job.id):
            return None
        single = self.ledger.instances_in_last_association(job.id) < 2
        if single and idle < min(RELEASE_SETTLE_S, series.quiet_seconds):
            return None
        if len(headers) < 2 or any(h.error for h in headers):
            return None
        try:
            problem = contiguity(headers, series.spacing_tolerance_mm)
        except ValueError as exc:
            problem = str(exc)
        if problem is None:
            return f"associations released and {len(headers)} slices contiguous"
        return None

    def lane(self, job: Job, headers: list[HeaderSummary], now: float) -> tuple[str, int | None]:
        """The lane ``triage.rules`` choose for the series, and the index of the deciding rule.

        A lane the job already has (``batch`` for a series that reprocessing retrieves) is kept.
        """
        if job.lane in LANES:
            return str(job.lane), None
        calling, called = self.ledger.job_ae_titles(job.id)
        first = next((h for h in headers if not h.error), HeaderSummary(sop_uid=""))
        facts = SeriesFacts.at(now, calling_ae=calling, called_ae=called, study_description=first.study_description,
                               series_description=first.series_description, body_part=first.body_part,
                               station_name=first.station_name)
        return choose_lane(self.cfg.triage, facts)

    def _decide(self, job: Job, now: float) -> JobState | None:
        headers = job_headers(self.ledger, job.id)
        if not headers:
            return None  # headers not read yet (or no instance): next pass
        why = self.completion(job, headers, now)
        if why is None:
            return None
        if self.ledger.interrupted_transfer(job.id):
            why += "; its association was aborted, the series may be incomplete"
        verdict = evaluate(headers, self.cfg.series)
        lane, rule = self.lane(job, headers, now)
        log = {"job": job.id, "series": short_uid(job.series_uid), "instances": len(headers), "why": why,
               "lane": lane, "rule": rule}
        if verdict.eligible:
            moved = self.ledger.transition(
                job.id, JobState.COMPLETE, detail=f"complete: {why}; lane {lane}", expect=[JobState.RECEIVED],
                expect_last_instance_at=job.last_instance_at, now=now, lane=lane)
            if moved:
                logger.info("series complete", extra=log)
            return JobState.COMPLETE if moved else None
        moved = self.ledger.transition(
            job.id, JobState.NOT_ANALYSED, reason=verdict.reason, detail=f"complete: {why}; not analysed: "
            f"{verdict.reason}", expect=[JobState.RECEIVED], expect_last_instance_at=job.last_instance_at,
            assessment=Assessment(verdict.kind.value, verdict.status_report, len(headers)), now=now, lane=lane)
        if moved:
            logger.info("series not analysed", extra={**log, "reason": verdict.reason, "kind": verdict.kind.value})
        return JobState.NOT_ANALYSED if moved else None
