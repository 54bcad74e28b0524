"""``dicom-node process PATH... --output DIR``: the worker's pipeline on local files, no network.

Files and folders (searched recursively) are grouped into series by Series Instance UID; each
series is analysed exactly as a queued job would be, and its SEG/SR/SC/KOS files, outcome and
PNG preview go to ``DIR/<nn>_<series hash>/``. ``DIR/findings.json`` lists every series with
its state, reason and findings, and a table is printed. Exit status 1 when a series failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dicom_node.config import Config
from dicom_node.logs import short_uid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument("--weights", help="model weights (default: model.weights of the config)")
    parser.add_argument("--no-preview", action="store_true", help="do not write PNG previews")


def group_series(paths: list[str]) -> tuple[dict[str, list[Path]], int]:
    """Series Instance UID -> files, and how many files were not DICOM (skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"PATH must be an existing file or folder; got {raw}")
    series: dict[str, list[Path]] = {}
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            uid = str(ds.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError):
            skipped += 1
            continue
        series.setdefault(uid, []).append(path)
    return series, skipped


def _cell(finding: dict[str, Any] | None) -> str:
    if not finding:
        return "-"
    if not finding.get("present"):
        return "absent"
    side = f" {finding['laterality']}" if finding.get("laterality") else ""
    return f"{finding['volume_ml']:.1f} mL{side}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per series."""
    header = ("series", "files", "state", "SDH", "EDH", "objects / reason")
    lines = [header]
    for row in rows:
        findings = row.get("findings") or {}
        objects = ", ".join(sorted({f["type"] for f in row.get("files", [])})) or "-"
        detail = objects if row["state"] == "done" else f"{objects}; {row.get('reason') or ''}"
        lines.append((row["folder"], str(row["instances"]), row["state"], _cell(findings.get("SDH")),
                      _cell(findings.get("EDH")), detail))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from worker import model_cache
    from worker.pipeline import analyse_series

    if args.weights:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": Path(args.weights)})})
    try:
        series, skipped = group_series(args.paths)
    except FileNotFoundError as exc:
        print(f"dicom-node process: {exc}", file=sys.stderr)
        return 2
    if not series:
        print(f"dicom-node process: no DICOM files found ({skipped} other files skipped)", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (uid, files) in enumerate(sorted(series.items()), start=1):
        folder = out / f"{number:02d}_{short_uid(uid)}"
        outcome = analyse_series(files, folder, cfg, lambda: model_cache.get_segmenter(cfg), rel_to=out,
                                 preview=not args.no_preview)
        (folder / "outcome.json").write_text(json.dumps(outcome, indent=1, sort_keys=True), encoding="utf-8")
        rows.append({"folder": folder.name, "series_uid": uid, "instances": len(files), **outcome})
    (out / "findings.json").write_text(json.dumps(rows, indent=1, sort_keys=True), encoding="utf-8")
    print(format_table(rows))
    print(f"\nresults in {out.resolve()} (findings.json, one folder per series)"
          + (f"; {skipped} non-DICOM file(s) skipped" if skipped else ""))
    return 1 if any(r["state"] == "failed" for r in rows) else 0
