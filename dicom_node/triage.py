"""The clinical triage policy: how urgent a series is, from its SDH/EDH findings.

It lives in the node's library, apart from the report writers, so that whatever shows or sends
a result (the SR, a notification) applies one rule. It reads only three attributes of each
finding, so ``segmenter.findings.Finding`` fits without this module importing the segmenter.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["CATEGORIES", "EDH_CRITICAL_VOLUME_ML", "SDH_CRITICAL_THICKNESS_MM", "triage_category"]

#: Brain Trauma Foundation surgical thresholds (Bullock et al., "Surgical management of acute
#: subdural hematomas" and "... epidural hematomas", Neurosurgery 2006;58(3 Suppl):S16-S24,
#: S7-S15): an acute SDH thicker than 10 mm, or an EDH larger than 30 cm3, should be evacuated
#: whatever the GCS.  The triage rule uses ">=" so that a borderline case errs towards critical.
SDH_CRITICAL_THICKNESS_MM = 10.0
EDH_CRITICAL_VOLUME_ML = 30.0
#: Most urgent first.
CATEGORIES = ("critical", "positive", "negative")


class TriageFinding(Protocol):
    """What the rule reads of one class's finding."""

    @property
    def present(self) -> bool: ...

    @property
    def volume_ml(self) -> float: ...

    @property
    def max_thickness_mm(self) -> float: ...


def triage_category(findings: Mapping[str, TriageFinding]) -> str:
    """Series triage category from the findings, keyed by class name (``SDH``, ``EDH``).

    Returns
    -------
    str
        ``"critical"`` when an SDH is at least :data:`SDH_CRITICAL_THICKNESS_MM` thick or an
        EDH is at least :data:`EDH_CRITICAL_VOLUME_ML`; otherwise ``"positive"`` when any
        class is present; otherwise ``"negative"``.
    """
    sdh, edh = findings.get("SDH"), findings.get("EDH")
    if (sdh is not None and sdh.present and sdh.max_thickness_mm >= SDH_CRITICAL_THICKNESS_MM) or (
        edh is not None and edh.present and edh.volume_ml >= EDH_CRITICAL_VOLUME_ML
    ):
        return "critical"
    return "positive" if any(f.present for f in findings.values()) else "negative"
