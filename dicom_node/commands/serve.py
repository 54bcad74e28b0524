"""``dicom-node serve``: the receiver, series assembly, job scheduler, outbox and status endpoint.

Runs until SIGTERM or SIGINT, then finishes the pass in progress and exits 0. Logs one INFO line
at start with the AE title, port, data folder and broker (password removed).
"""
from __future__ import annotations

import argparse

from dicom_node.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.node import Node

    return Node(cfg).serve_forever()
