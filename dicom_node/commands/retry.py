"""``dicom-node retry [JOB_ID]``: requeue dead-lettered deliveries (all, or one job's).

A running node's sender picks them up on its next pass; each gets its destination's full
``max_attempts`` again.
"""
from __future__ import annotations

import argparse

from dicom_node.config import Config
from dicom_node.ledger import DeliveryState, Ledger
from dicom_node.names import LEDGER_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", nargs="?", type=int, help="only this job's deliveries (default: all)")


def run(args: argparse.Namespace, cfg: Config) -> int:
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
