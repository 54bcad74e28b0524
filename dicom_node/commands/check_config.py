"""``dicom-node check-config``: validate the configuration and print the effective values."""
from __future__ import annotations

import argparse

import yaml

from dicom_node.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults()


def run(args: argparse.Namespace, cfg: Config) -> int:
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0
