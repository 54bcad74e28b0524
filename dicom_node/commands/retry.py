"""``dicom-node retry [JOB_ID]``: requeue dead-lettered deliveries (all, or one job's).
``dicom-node retry --reanalyse JOB_ID``: run a failed job's analysis again.

A running node's sender picks the deliveries up on its next pass; each gets its destination's
full ``max_attempts`` again. A re-analysed job is submitted by the node's scheduler on its next
pass, and its result is delivered like a first one.
"""
from __future__ import annotations

import argparse
import getpass

from dicom_node.config import Config
from dicom_node.ledger import DeliveryState, Ledger, ReanalysisRefused
from dicom_node.names import LEDGER_FILE
from dicom_node.reanalysis import reanalyse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", nargs="?", type=int, help="only this job's deliveries (default: all)")
    parser.add_argument("--reanalyse", type=int, metavar="JOB_ID",
                        help="run this failed job's analysis again instead (its result is then delivered)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.reanalyse is not None:
        return run_reanalyse(args.reanalyse, cfg)
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    try:
        if args.job_id is not None:
            try:
                ledger.job(args.job_id)
            except KeyError:
                print(f"dicom-node retry: job {args.job_id} is not in the ledger at {cfg.data_dir}")
                return 1
        dead = ledger.deliveries(args.job_id, [DeliveryState.DEAD])
        count = ledger.retry_dead(args.job_id)
    finally:
        ledger.close()
    for delivery in dead:
        print(f"requeued: job {delivery.job_id} -> {delivery.destination} (was: {delivery.last_error})")
    print(f"{count} dead deliver{'y' if count == 1 else 'ies'} requeued")
    return 0


def run_reanalyse(job_id: int, cfg: Config) -> int:
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    try:
        reanalyse(ledger, cfg.data_dir, job_id, _operator())
    except KeyError:
        print(f"dicom-node retry: job {job_id} is not in the ledger at {cfg.data_dir}")
        return 1
    except ReanalysisRefused as exc:
        print(f"dicom-node retry: {exc}")
        return 1
    finally:
        ledger.close()
    print(f"job {job_id} queued for re-analysis; the node submits it on its next pass")
    return 0


def _operator() -> str:
    """Who asked, for the job's timeline: the login name, marked as the command line."""
    try:
        return f"{getpass.getuser()} (command line)"
    except (OSError, KeyError):  # no login name in this environment
        return "the command line"
