"""The ``dicom-node`` console script: a thin dispatcher over ``dicom_node.commands``.

Each subcommand lives in its own module under ``dicom_node/commands/`` with two functions:
``add_arguments(parser)`` and ``run(args, cfg) -> int``. This module parses, loads the one
typed config, sets up logging and calls ``run``. No logic lives here.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from dicom_node import __version__
from dicom_node.config import ConfigError, load_config
from dicom_node.logs import setup_logging

#: name -> (module under dicom_node.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the node: DICOM receiver, series assembly, job scheduler, outbox"),
    "worker": ("worker", "run a Celery worker that segments queued series"),
    "status": ("status", "show series and jobs by state, with reasons for failures"),
    "echo": ("echo", "C-ECHO a configured destination"),
    "send": ("send", "C-STORE DICOM files to a configured destination"),
    "retry": ("retry", "requeue dead-lettered deliveries"),
    "process": ("process", "run the pipeline offline on DICOM files: results to a folder"),
    "reprocess": ("reprocess", "find head CTs in the PACS, retrieve and analyse them in the batch lane"),
    "demo": ("demo", "send a synthetic head CT with a bleed through a running node and show the result"),
    "token": ("token", "create, list or revoke API tokens of the operator console"),
    "check-config": ("check_config", "validate the configuration and print it"),
}


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="configuration file (default: $DICOM_NODE_CONFIG, else ./config.yaml, "
                             "else embedded defaults)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="log at DEBUG, including pynetdicom (may show PHI)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="PACS-connected DICOM node that segments subdural and epidural hematomas on head CT "
                    "and sends DICOM SEG + TID 1500 SR results back to the PACS. Research use only.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser, None)
    parser.set_defaults(debug=False)
    # The same options after the command (`dicom-node serve --config x.yaml`). SUPPRESS leaves
    # the attribute unset when they are not repeated there, so a value given before the command
    # is not overwritten by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"dicom_node.commands.{module_name}")
        cmd = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, args.debug)
    return int(args._module.run(args, cfg) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
