"""``dicom-node status``: series and jobs by state, reasons, dead letters and receiver state.

Reads the ledger and the node's state file directly, so it works while the node is down. Shows
UIDs, states, reasons and timestamps; never patient data. Exit code 0, or 1 when there is no
ledger yet (the node never ran with this data folder).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dicom_node.config import Config
from dicom_node.names import LEDGER_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help="show at most N jobs per list, newest first (default 20)")


def _jobs(title: str, jobs: list[dict[str, Any]], total: int) -> list[str]:
    if not total:
        return []
    lines = [f"{title} ({total}, newest first):"]
    for j in jobs:
        why = f" [{j['fail_stage']}]" if j.get("fail_stage") else ""
        reason = f": {j['reason']}" if j.get("reason") else ""
        lines.append(f"  job {j['job']} {j['state']}{why} series {j['series_uid']} updated {j['updated_at']}{reason}")
    return lines


def render(doc: dict[str, Any]) -> str:
    """The status document as plain text for a terminal."""
    node, rx, jobs = doc["node"], doc["receiver"], doc["jobs"]
    if node["running"]:
        state = f"running (pid {node['pid']}, since {node['started_at']}, last update {node['updated_at']})"
    elif node["updated_at"]:
        state = f"NOT RUNNING (last seen {node['updated_at']}{', stopped cleanly' if node['stopped_at'] else ''})"
    else:
        state = "NOT RUNNING (never started with this data folder)"
    lines = [f"dicom-node status at {doc['generated_at']}",
             f"node: {node['ae_title']} port {node['port']}: {state}"]
    if node.get("stages"):
        lines.append("stages: " + ", ".join(f"{k}={v}" for k, v in sorted(node["stages"].items())))
    lines += [f"PROBLEM: {problem}" for problem in node.get("problems", [])]
    refusal = "ACTIVE: refusing instances (0xA700)" if rx["low_disk_refusal"] else "off"
    lines += [f"receiver: {rx['instances']} instances, last at {rx['last_instance_at']}, "
              f"{rx['open_associations']} association(s) open",
              *([f"receive processes: {rx['receive_processes']} running (helpers' open connections: "
                 f"{rx.get('receive_process_connections')}; restarted {rx.get('receive_process_restarts') or 0} time(s))"]
                if rx.get("receive_processes") and node["running"] else []),
              f"disk: {rx['disk_free_gb']} GB free (min {rx['min_free_disk_gb']} GB); low-disk refusal {refusal}",
              *([f"receive journal: {rx.get('journal_unmoved') or 0} instance(s) not yet in spool/"
                 + (f"; PROBLEM copying them: {rx['journal_error']}" if rx.get("journal_error") else "")]
                if rx.get("journal_unmoved") or rx.get("journal_error") else []),
              f"series: {doc['series']}",
              "jobs: " + ", ".join(f"{k}={v}" for k, v in jobs.items() if v) if any(jobs.values()) else "jobs: none",
              f"deliveries: {doc['deliveries']['pending']} pending, {doc['deliveries']['dead']} dead-lettered"]
    lines += _jobs("open jobs", doc["open"], sum(jobs[s] for s in ("received", "complete", "queued", "running")))
    lines += _jobs("failed", doc["failed"], jobs["failed"])
    lines += _jobs("not analysed", doc["not_analysed"], jobs["not_analysed"])
    if doc["dead_letters"]:
        lines.append("dead letters (`dicom-node retry` requeues them):")
        for d in doc["dead_letters"]:
            lines.append(f"  delivery {d['delivery']} job {d['job']} -> {d['destination']} after {d['attempts']} "
                         f"attempt(s), {d['updated_at']}: {d['last_error']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.httpstatus import status_snapshot
    from dicom_node.ledger import Ledger

    path = cfg.data_dir / LEDGER_FILE
    if not path.exists():
        print(f"dicom-node: no ledger at {path}; the node has not run with node.data_dir {cfg.data_dir}")
        return 1
    doc = status_snapshot(Ledger(path), cfg, time.time(), limit=max(1, args.limit))
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else render(doc))
    return 0
