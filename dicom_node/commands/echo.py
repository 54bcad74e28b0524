"""``dicom-node echo DEST``: C-ECHO a configured destination (or ``AE@host:port``)."""
from __future__ import annotations

import argparse
import sys
import time

from dicom_node.config import Config, ConfigError
from dicom_node.scu import DeliveryError, echo, parse_destination


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination", metavar="DEST",
                        help="a name under destinations: in the configuration, or AE@host:port")
    parser.add_argument("--calling-ae", metavar="AE", help="our AE title (default: node.ae_title)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds to wait for the peer (default: the destination's timeout_s)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        dest = parse_destination(args.destination, cfg.destinations)
    except ConfigError as exc:
        print(f"dicom-node echo: {exc}", file=sys.stderr)
        return 2
    timeout = args.timeout or dest.timeout_s
    started = time.monotonic()
    try:
        status = echo(dest, args.calling_ae or cfg.node.ae_title, timeout)
    except DeliveryError as exc:
        print(f"C-ECHO {dest.name}: FAILED: {exc}", file=sys.stderr)
        return 1
    ms = (time.monotonic() - started) * 1000
    where = f"{dest.ae_title}@{dest.host}:{dest.port}" + (", TLS" if dest.tls is not None else "")
    if status != 0:
        print(f"C-ECHO {dest.name} ({where}): FAILED: status 0x{status:04X}", file=sys.stderr)
        return 1
    print(f"C-ECHO {dest.name} ({where}): success in {ms:.0f} ms")
    return 0
