"""How long a dependency (the queue broker) has been unreachable, and when to raise the alarm.

A broker that is down for a moment is routine: jobs stay ``complete`` in the ledger and are
sent on a later pass. One that stays down means no series is being analysed, which an
operator must hear about: the node logs one ERROR when the outage passes ``alert_after_s``,
reports it on ``/healthz`` and in ``dicom-node status`` until it ends, and logs the recovery.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class Outage:
    """Reachability of one dependency, fed by every attempt to use it."""

    def __init__(self, name: str, alert_after_s: float) -> None:
        self.name = name
        self.alert_after_s = alert_after_s
        self.since: float | None = None
        self.last_error: str | None = None
        self._alerted = False

    def ok(self, now: float) -> None:
        if self.since is not None:
            log = logger.info if not self._alerted else logger.warning
            log(f"{self.name} reachable again", extra={"down_s": round(now - self.since, 1)})
        self.since, self.last_error, self._alerted = None, None, False

    def failed(self, now: float, error: BaseException | str) -> None:
        self.last_error = str(error)[:200]
        if self.since is None:
            self.since = now
        if not self._alerted and now - self.since >= self.alert_after_s:
            self._alerted = True
            logger.error(f"{self.name} unreachable: series are not being analysed",
                         extra={"down_s": round(now - self.since, 1), "error": self.last_error})

    def problem(self, now: float) -> str | None:
        """A line for health checks once the outage is past ``alert_after_s``; else None."""
        if self.since is None or now - self.since < self.alert_after_s:
            return None
        return f"{self.name} unreachable for {now - self.since:.0f} s: {self.last_error}"
