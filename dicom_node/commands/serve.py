"""``dicom-node serve``: the receiver, series assembly, job scheduler, outbox and status endpoint.

Runs until SIGTERM or SIGINT, then finishes the pass in progress and exits 0. Logs one INFO line
at start with the AE title, port, data folder and broker (password removed).
"""
from __future__ import annotations

import argparse
import sys

from dicom_node.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.node import Node

    try:
        return Node(cfg).serve_forever()
    except OSError as exc:
        # Typically a port in use; exit 1 so that systemd retries (Restart=on-failure).
        print(f"dicom-node: cannot start: {exc.strerror or exc} (node.bind/node.port "
              f"{cfg.node.bind}:{cfg.node.port}, http.bind/http.port {cfg.http.bind}:{cfg.http.port})",
              file=sys.stderr)
        return 1
