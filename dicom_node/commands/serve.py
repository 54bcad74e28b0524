"""``dicom-node serve``: the receiver, series assembly, job scheduler, outbox and status endpoint.

Runs until SIGTERM or SIGINT, then finishes the pass in progress and exits 0. Logs one INFO line
at start with the AE title, port, data folder and broker (password removed).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dicom_node.config import Config

if TYPE_CHECKING:
    from dicom_node.submit import JobRunner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def embedded_runner(cfg: Config) -> JobRunner | None:
    """The in-process job runner for ``queue.broker_url: embedded``; None with a real broker,
    whose workers run the jobs (the node process then never loads the model code)."""
    if cfg.queue.broker_url != "embedded":
        return None
    from worker.embedded import make_runner

    return make_runner(cfg)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.node import Node

    try:
        return Node(cfg, runner=embedded_runner(cfg)).serve_forever()
    except OSError as exc:
        # Typically a port in use; exit 1 so that systemd retries (Restart=on-failure).
        print(f"dicom-node: cannot start: {exc.strerror or exc} (node.bind/node.port "
              f"{cfg.node.bind}:{cfg.node.port}, http.bind/http.port {cfg.http.bind}:{cfg.http.port})",
              file=sys.stderr)
        return 1
