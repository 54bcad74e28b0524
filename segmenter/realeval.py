"""Evaluation on real head CT: boxed slices, bleed-free slices and a real tilted series.

Three figures, each through the same ``Segmenter.predict`` and post-processing as the node:

* ``ich-boxes/test``, per slice and class: a slice with an EDH (SDH) box is *found* when the
  slice calls EDH (SDH) and a predicted pixel of that class lies in one of its boxes of that
  class; a slice with no EDH/SDH box is a *false call* when it calls either.
* ``sich-negatives``: the share of slices (spontaneous intraparenchymal bleeds, no dural
  bleed) that call SDH or EDH.
* ``ge-head-tilt``: the whole series as the node reads it (gantry tilt and two slice
  spacings); SDH and EDH volumes after post-processing, which is the false-positive volume
  since the series holds no haematoma.

A 2-D slice has no volume, so a slice *calls* a class when the post-processed label map holds
at least ``SLICE_CALL_MM2`` of it (``SLICE_THICKNESS_MM`` is the assumed slab, which only
scales the volume rules of post-processing).  The 8-bit slices carry no pixel spacing: it is
estimated by taking the head's width to be ``HEAD_WIDTH_MM``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .findings import EDH, SDH
from .pseudomask import BOX_MARGIN_PX
from .realslices import RealSlice, load_ich_boxes, load_unlabelled

logger = logging.getLogger(__name__)

#: Smallest area of a class on a slice that counts as calling it (mm^2).
SLICE_CALL_MM2 = 25.0
#: Slab assumed for a lone 8-bit slice, and the head width that sets its pixel spacing.
SLICE_THICKNESS_MM = 5.0
HEAD_WIDTH_MM = 150.0
_NAMES = {SDH: "SDH", EDH: "EDH"}


def estimated_spacing_mm(hu: np.ndarray) -> float:
    """In-plane pixel size of a slice whose head is ``HEAD_WIDTH_MM`` wide (left to right)."""
    cols = np.flatnonzero((hu > -300).any(axis=0))
    width = cols[-1] - cols[0] + 1 if len(cols) else hu.shape[1]
    return HEAD_WIDTH_MM / max(width, 1)


def slice_calls(segmenter: Any, item: RealSlice, min_mm2: float = SLICE_CALL_MM2) -> dict[str, Any]:
    """Predict one real slice; per class whether it is called and whether it hits its boxes."""
    hu = item.hu()
    px = estimated_spacing_mm(hu)
    pred = segmenter.predict(hu[None], (SLICE_THICKNESS_MM, px, px))
    labels = pred.labels[0]
    out: dict[str, Any] = {"slice": item.slice_id, "kinds": sorted(item.kinds)}
    for c, name in _NAMES.items():
        area = float((labels == c).sum()) * px * px
        hit = False
        for box in item.boxes:
            if box.kind == name:
                y0, x0 = max(0, box.y0 - BOX_MARGIN_PX), max(0, box.x0 - BOX_MARGIN_PX)
                hit |= bool((labels[y0:box.y1 + BOX_MARGIN_PX, x0:box.x1 + BOX_MARGIN_PX] == c).any())
        out[name] = {"area_mm2": round(area, 1), "called": area >= min_mm2, "in_box": hit}
    out["excluded"] = len(pred.excluded)
    return out


def summarize_boxes(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Detection per class and false calls on slices without dural boxes."""
    summary: dict[str, Any] = {"slices": len(records)}
    for name, other in (("EDH", "SDH"), ("SDH", "EDH")):
        rows = [r for r in records if name in r["kinds"]]
        found = [r[name]["called"] and r[name]["in_box"] for r in rows]
        summary[name] = {"slices": len(rows), "found": int(np.sum(found)),
                         "found_rate": float(np.mean(found)) if rows else float("nan"),
                         f"called_{other}": int(sum(r[other]["called"] for r in rows))}
    neg = [r for r in records if not {"SDH", "EDH"} & set(r["kinds"])]
    calls = [r["SDH"]["called"] or r["EDH"]["called"] for r in neg]
    summary["no_dural_box"] = {"slices": len(neg), "called": int(np.sum(calls)),
                               "false_call_rate": float(np.mean(calls)) if neg else float("nan")}
    return summary


def evaluate_negatives(segmenter: Any, slices: Sequence[RealSlice]) -> dict[str, Any]:
    """Share of bleed-free (no SDH/EDH) slices that call SDH or EDH, overall and per patient."""
    records = [slice_calls(segmenter, s) for s in slices]
    calls = np.array([r["SDH"]["called"] or r["EDH"]["called"] for r in records])
    patients = sorted({s.patient_id for s in slices})
    per_patient = {p: int(sum(c for c, s in zip(calls, slices) if s.patient_id == p)) for p in patients}
    return {"slices": len(records), "patients": len(patients), "called": int(calls.sum()),
            "call_rate": float(calls.mean()) if len(calls) else float("nan"),
            "called_sdh": int(sum(r["SDH"]["called"] for r in records)),
            "called_edh": int(sum(r["EDH"]["called"] for r in records)),
            "patients_with_a_call": int(sum(v > 0 for v in per_patient.values()))}


def evaluate_series(segmenter: Any, folder: str | Path) -> dict[str, Any]:
    """A bleed-free real DICOM series read and analysed as the node does."""
    from .dicom_io import read_series

    from .voxels import mask_ml, voxel_ml

    series = read_series(folder)
    pred = segmenter.predict_series(series)
    return {"slices": int(series.volume_hu.shape[0]),
            **{f"{n}_present": bool(pred.findings[n].present) for n in ("SDH", "EDH")},
            **{f"{n}_ml": round(float(pred.findings[n].volume_ml), 2) for n in ("SDH", "EDH")},
            "false_positive_ml": round(sum(float(pred.findings[n].volume_ml) for n in ("SDH", "EDH")), 2),
            "tilt_deg": round(float(getattr(series, "tilt_deg", 0.0) or 0.0), 2),
            "labelled_ml": round(mask_ml(pred.labels > 0, voxel_ml(series.spacing_mm, series.slab_mm)), 2),
            "excluded": pred.excluded}


def evaluate_real(segmenter: Any, root: str | Path, split: str = "test") -> dict[str, Any]:
    """Every real figure for the folder layout of ``shared/realdata`` (missing parts skipped)."""
    root = Path(root)
    report: dict[str, Any] = {"slice_call_mm2": SLICE_CALL_MM2}
    if (root / "ich-boxes" / split).is_dir():
        records = [slice_calls(segmenter, s) for s in load_ich_boxes(root / "ich-boxes", split)]
        report[f"ich_boxes_{split}"] = {"summary": summarize_boxes(records), "records": records}
    if (root / "sich-negatives" / "images").is_dir():
        report["sich_negatives"] = evaluate_negatives(segmenter, load_unlabelled(root / "sich-negatives" / "images"))
    if (root / "ge-head-tilt" / "dicom").is_dir():
        try:
            report["ge_head_tilt"] = evaluate_series(segmenter, root / "ge-head-tilt" / "dicom")
        except Exception as exc:  # noqa: BLE001 - a refusal is itself the result to report
            report["ge_head_tilt"] = {"analysed": False, "reason": str(exc)}
    return report


def format_real_table(report: dict[str, Any]) -> str:
    """The real-data figures as a Markdown table."""
    rows = ["| real set | measure | result |", "|---|---|---|"]
    for key in [k for k in report if k.startswith("ich_boxes_")]:
        s = report[key]["summary"]
        split = key.removeprefix("ich_boxes_")
        for name in ("EDH", "SDH"):
            rows.append(f"| ich-boxes/{split} | {name} slices found ({name} called, in its box) | "
                        f"{s[name]['found']}/{s[name]['slices']} ({s[name]['found_rate']:.1%}) |")
        n = s["no_dural_box"]
        rows.append(f"| ich-boxes/{split} | slices without SDH/EDH box called SDH or EDH | "
                    f"{n['called']}/{n['slices']} ({n['false_call_rate']:.1%}) |")
    if "sich_negatives" in report:
        n = report["sich_negatives"]
        rows.append(f"| sich-negatives | slices called SDH or EDH | {n['called']}/{n['slices']} "
                    f"({n['call_rate']:.1%}; {n['patients_with_a_call']}/{n['patients']} patients) |")
    if "ge_head_tilt" in report:
        g = report["ge_head_tilt"]
        if g.get("analysed", True):
            rows.append(f"| ge-head-tilt | SDH / EDH present; false-positive volume | "
                        f"{g['SDH_present']} / {g['EDH_present']}; {g['false_positive_ml']:.2f} mL |")
        else:
            rows.append(f"| ge-head-tilt | analysed | no: {g['reason']} |")
    return "\n".join(rows)
