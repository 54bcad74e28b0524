"""``dicom-node reprocess --source NAME --since DATE [--until DATE] [--accessions FILE]
[--dry-run] [--force] [--limit N]``: analyse head CTs already in the PACS, in the batch lane.

The running node (``dicom-node serve``) receives, analyses and delivers the series; this command
finds them (C-FIND), has them retrieved (C-MOVE to ``node.ae_title``, or C-GET), follows their
jobs and prints a summary. Without ``--since`` and ``--accessions`` it is a scheduled run
(the systemd timer): the source is ``reprocess.source``, the window the last
``reprocess.lookback_days`` days, and retrievals start only within ``reprocess.hours``.
Exit status: 0, or 1 when a series failed, 2 for bad arguments or an unreachable source.
"""
from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_node.config import Config, ConfigError
from dicom_node.ledger import Ledger
from dicom_node.logs import short_uid
from dicom_node.names import LEDGER_FILE

CATEGORIES = (("found", "found"), ("ineligible", "not eligible (query)"), ("already_done", "already done"),
              ("retrieved", "retrieved"), ("reopened", "analysed again from the node's copy"),
              ("analysed", "analysed"), ("not_analysed", "not analysed"), ("failed", "failed"),
              ("pending", "pending"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="NAME", help="destination that serves query/retrieve "
                        "(default: reprocess.source)")
    parser.add_argument("--since", metavar="DATE", type=dt.date.fromisoformat,
                        help="first study date, YYYY-MM-DD (default: reprocess.lookback_days back; a scheduled run)")
    parser.add_argument("--until", metavar="DATE", type=dt.date.fromisoformat, help="last study date, YYYY-MM-DD")
    parser.add_argument("--accessions", metavar="FILE", help="accession numbers, one per line, instead of a window")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.add_argument("--force", action="store_true", help="analyse again series this model already analysed")
    parser.add_argument("--limit", metavar="N", type=int, help="at most N studies (oldest first)")


def _accessions(path: str) -> tuple[str, ...]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return tuple(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.startswith("#")))


def format_summary(summary: object) -> str:
    counts, reasons = summary.counts, summary.reasons  # type: ignore[attr-defined]
    lines = []
    for key, label in CATEGORIES:
        lines.append(f"  {label:<38}{counts.get(key, 0):>6}")
        for reason, n in sorted(reasons.get(key, {}).items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"      {n:>4} x {reason}")
    return "\n".join(lines)


def format_plan(rows: Sequence[dict]) -> str:
    lines = [f"{'study':<12}{'series':<12}{'files':>6}  {'would':<10}reason"]
    for r in rows:
        what = r["action"] if r["state"] == "found" else r["state"]
        lines.append(f"{short_uid(r['study_uid']):<12}{short_uid(r['series_uid']):<12}"
                     f"{r.get('instances') or '-':>6}  {what:<10}{r.get('reason') or ''}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from tqdm import tqdm

    from dicom_node.reprocess import ModelIdentity, Params, Reprocessor
    from worker.model_cache import fallback_model_info

    name = args.source or cfg.reprocess.source
    if name is None:
        print("dicom-node reprocess: --source must name a destination (or set reprocess.source)", file=sys.stderr)
        return 2
    scheduled = args.since is None and args.accessions is None
    try:
        source = cfg.destination(name)
        accessions = _accessions(args.accessions) if args.accessions else ()
        since = args.since or (None if accessions else dt.date.today() - dt.timedelta(days=cfg.reprocess.lookback_days))
        params = Params(source=name, since=since, until=args.until, accessions=accessions, force=args.force,
                        limit=args.limit)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"dicom-node reprocess: {exc}", file=sys.stderr)
        return 2
    info = fallback_model_info(cfg)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    bar = tqdm(total=0, unit="series", desc="reprocess", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    worker = Reprocessor(cfg, ledger, source, params, ModelIdentity(info.version, info.weights_sha256),
                         scheduled=scheduled, on_progress=progress,
                         on_notice=lambda text: print(f"dicom-node reprocess: {text}", file=sys.stderr))
    previous = {sig: signal.signal(sig, lambda _s, _f: worker.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = worker.dry_run() if args.dry_run else worker.run()
    except Exception as exc:  # noqa: BLE001 - the source's failure, said in one line
        from dicom_node.qr import QueryError
        from dicom_node.scu import DeliveryError

        if not isinstance(exc, (QueryError, DeliveryError)):
            raise
        print(f"dicom-node reprocess: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
        ledger.close()
    if summary.dry_run is not None:
        print(format_plan(summary.dry_run))
        print(f"dry run: {summary.counts.get('found', 0)} series found; nothing was retrieved or recorded")
        return 0
    state = "finished" if summary.finished else f"not finished ({summary.stopped}); run it again to go on"
    print(f"reprocess run {summary.run_id}{' (resumed)' if summary.resumed else ''}: {state}")
    print(format_summary(summary))
    return 1 if summary.counts.get("failed") else 0
