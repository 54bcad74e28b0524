"""``dicom-node check-config``: validate the configuration and print the effective values."""
from __future__ import annotations

import argparse
import sys

import yaml

from dicom_node.config import Config
from dicom_node.worklist_config import missing_secrets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def run(args: argparse.Namespace, cfg: Config) -> int:
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    # The secrets live in the environment, not the file: checked here, where the operator looks.
    problems = missing_secrets(cfg.notify)
    for problem in problems:
        print(f"dicom-node check-config: {problem}", file=sys.stderr)
    return 1 if problems else 0
