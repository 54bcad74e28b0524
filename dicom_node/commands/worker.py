"""``dicom-node worker``: run a Celery worker that segments queued series.

The worker connects to ``queue.broker_url`` and reads and writes the node's ``data_dir``: on
another host, mount the node's ``data_dir`` (NFS or similar) at the path this host's
``node.data_dir`` names. The model is loaded in each pool process after the fork (prefork) or
once before consuming (solo), never at import.
"""
from __future__ import annotations

import argparse
import socket
import sys

from dicom_node.config import Config
from dicom_node.contract import LANES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", default=",".join(LANES),
                        help="lanes to consume, most urgent first (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="jobs run at once; each loads its own model (default: %(default)s)")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork",
                        help="prefork survives a crashed job and enforces the hard time limit; solo runs "
                             "jobs in this process (default: %(default)s)")
    parser.add_argument("--name", default=f"dural@{socket.gethostname()}", help="worker node name")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if cfg.queue.broker_url == "embedded":
        print("dicom-node worker: queue.broker_url is 'embedded': jobs already run inside `dicom-node serve`. "
              "Set queue.broker_url to a redis:// URL (the same for the node and every worker) to use "
              "separate workers.", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in LANES]
    if not queues or unknown:
        print(f"dicom-node worker: --queues must list lanes from {', '.join(LANES)}; got {args.queues!r}",
              file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print(f"dicom-node worker: --concurrency must be >= 1; got {args.concurrency}", file=sys.stderr)
        return 2
    from celery.signals import worker_process_init

    from worker import model_cache
    from worker.celery_app import make_celery

    app = make_celery(cfg)
    if args.pool == "solo":
        model_cache.warm(cfg)
    else:
        worker_process_init.connect(lambda **_: model_cache.warm(cfg), weak=False)
    argv = ["worker", "--queues", ",".join(queues), "--concurrency", str(args.concurrency), "--pool", args.pool,
            "--hostname", args.name, "--loglevel", cfg.logging.level, "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0
