"""The clinical triage policy: how urgent a series is, from its SDH/EDH findings.

It lives in the node's library, apart from the report writers, so that whatever shows or sends
a result (the SR, a notification) applies one rule. It reads only three attributes of each
finding, so ``segmenter.findings.Finding`` fits without this module importing the segmenter.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["CATEGORIES", "EDH_CRITICAL_VOLUME_ML", "RESULT_CATEGORIES", "SDH_CRITICAL_THICKNESS_MM", "result_category",
           "severity", "triage_category"]

#: Brain Trauma Foundation surgical thresholds (Bullock et al., "Surgical management of acute
#: subdural hematomas" and "... epidural hematomas", Neurosurgery 2006;58(3 Suppl):S16-S24,
#: S7-S15): an acute SDH thicker than 10 mm, or an EDH larger than 30 cm3, should be evacuated
#: whatever the GCS.  The triage rule uses ">=" so that a borderline case errs towards critical.
SDH_CRITICAL_THICKNESS_MM = 10.0
EDH_CRITICAL_VOLUME_ML = 30.0
#: Categories of an analysed series, most urgent first.
CATEGORIES = ("critical", "positive", "negative")
#: Categories of any result: an analysed series, or one that was not analysed or failed.
RESULT_CATEGORIES = ("critical", "positive", "negative", "not_analysed", "failed")
#: How urgent a reader should treat each category; a correction never silently goes below what
#: was sent before. A series without a result may hide a bleed, so it ranks above a negative.
_SEVERITY = {"critical": 3, "positive": 2, "not_analysed": 1, "failed": 1, "negative": 0}


class TriageFinding(Protocol):
    """What the rule reads of one class's finding."""

    @property
    def present(self) -> bool: ...

    @property
    def volume_ml(self) -> float: ...

    @property
    def max_thickness_mm(self) -> float: ...


def triage_category(findings: Mapping[str, TriageFinding], *, sdh_thickness_mm: float = SDH_CRITICAL_THICKNESS_MM,
                    edh_volume_ml: float = EDH_CRITICAL_VOLUME_ML) -> str:
    """Series triage category from the findings, keyed by class name (``SDH``, ``EDH``).

    Returns
    -------
    str
        ``"critical"`` when an SDH is at least ``sdh_thickness_mm`` thick or an EDH is at
        least ``edh_volume_ml`` (defaults: :data:`SDH_CRITICAL_THICKNESS_MM`,
        :data:`EDH_CRITICAL_VOLUME_ML`; ``triage.critical`` in the config); otherwise ``"positive"`` when any
        class is present; otherwise ``"negative"``.
    """
    sdh, edh = findings.get("SDH"), findings.get("EDH")
    if (sdh is not None and sdh.present and sdh.max_thickness_mm >= sdh_thickness_mm) or (
        edh is not None and edh.present and edh.volume_ml >= edh_volume_ml
    ):
        return "critical"
    return "positive" if any(f.present for f in findings.values()) else "negative"


def result_category(state: str, findings: Mapping[str, TriageFinding], *,
                    sdh_thickness_mm: float = SDH_CRITICAL_THICKNESS_MM,
                    edh_volume_ml: float = EDH_CRITICAL_VOLUME_ML) -> str:
    """The category of a job's result: :func:`triage_category` for an analysed series
    (``state`` ``done``), else ``not_analysed`` or ``failed``.

    Raises
    ------
    ValueError
        When ``state`` is not ``done``, ``not_analysed`` or ``failed``.
    """
    if state in ("not_analysed", "failed"):
        return state
    if state != "done":
        raise ValueError(f"state must be done, not_analysed or failed; got {state!r}")
    return triage_category(findings, sdh_thickness_mm=sdh_thickness_mm, edh_volume_ml=edh_volume_ml)


def severity(category: str) -> int:
    """Rank of a category for "never lower what was sent": higher is more urgent."""
    if category not in _SEVERITY:
        raise ValueError(f"category must be one of {RESULT_CATEGORIES}; got {category!r}")
    return _SEVERITY[category]
