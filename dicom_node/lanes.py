"""Lane routing: which queue lane (``stat``, ``routine``, ``batch``) a complete series goes on.

The rules of ``triage.rules`` are tried in order and the first whose every condition holds
decides; ``triage.default_lane`` otherwise. The facts come from the ledger (the AE titles of
the association that carried the series' latest instance) and from the cached header summaries
(descriptions, body part, station name), plus the local hour when the series completed. Batch
reprocessing does not come through here: it always uses :data:`BATCH_LANE`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dicom_node.contract import LANES
from dicom_node.worklist_config import LaneRule, TriageConfig, parse_hours

__all__ = ["BATCH_LANE", "SeriesFacts", "choose_lane", "rule_matches"]

BATCH_LANE = LANES[-1]


@dataclass(frozen=True)
class SeriesFacts:
    """What the lane rules read of one series (no PHI)."""

    calling_ae: str | None = None
    called_ae: str | None = None
    study_description: str = ""
    series_description: str = ""
    body_part: str = ""
    station_name: str = ""
    hour: int = 0

    @classmethod
    def at(cls, when: float, **values: str | None) -> "SeriesFacts":
        """Facts with ``hour`` taken from ``when`` (seconds since the epoch) in local time."""
        texts = {k: v or "" for k, v in values.items() if k not in ("calling_ae", "called_ae")}
        return cls(calling_ae=values.get("calling_ae"), called_ae=values.get("called_ae"),
                   hour=time.localtime(when).tm_hour, **texts)


def _in_hours(hours: str, hour: int) -> bool:
    start, end = parse_hours(hours)
    return start <= hour < end if start < end else (hour >= start or hour < end)


def _any_search(patterns: list[str], text: str) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


def rule_matches(rule: LaneRule, facts: SeriesFacts) -> bool:
    """Whether every condition the rule gives holds for ``facts``; empty conditions are not
    checked (the config refuses a rule without any)."""
    checks = (
        (rule.calling_aets, lambda: (facts.calling_ae or "").strip() in rule.calling_aets),
        (rule.called_aets, lambda: (facts.called_ae or "").strip() in rule.called_aets),
        (rule.study_description, lambda: _any_search(rule.study_description, facts.study_description)),
        (rule.series_description, lambda: _any_search(rule.series_description, facts.series_description)),
        (rule.body_part, lambda: _any_search(rule.body_part, facts.body_part)),
        (rule.station_name, lambda: _any_search(rule.station_name, facts.station_name)),
        (rule.hours, lambda: _in_hours(rule.hours or "", facts.hour)),
    )
    return all(check() for given, check in checks if given)


def choose_lane(triage: TriageConfig, facts: SeriesFacts) -> tuple[str, int | None]:
    """The lane for a series and the index of the rule that chose it (None: the default)."""
    for index, rule in enumerate(triage.rules):
        if rule_matches(rule, facts):
            return rule.lane, index
    return triage.default_lane, None
