"""The dispatcher: ``--config`` and ``--debug`` work before or after the command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node import cli

#: cli.main installs a handler on the test's captured stderr; conftest removes it afterwards.
pytestmark = pytest.mark.usefixtures("restore_root_logging")

#: The arguments each command needs besides the common options; every command is listed.
REQUIRED = {
    "serve": [], "worker": [], "status": [], "echo": ["pacs"], "send": ["x.dcm", "--to", "pacs"], "retry": [],
    "process": ["x.dcm", "--output", "out"], "demo": [], "check-config": [],
    "reprocess": ["--source", "pacs", "--since", "2026-01-01"], "token": ["create", "alice"],
}


def test_every_command_is_in_the_table():
    assert set(REQUIRED) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(REQUIRED))
@pytest.mark.parametrize("where", ["before", "after"])
def test_config_and_debug_before_or_after_the_command(command, where):
    common = ["--config", "x.yaml", "--debug"]
    argv = common + [command, *REQUIRED[command]] if where == "before" else [command, *REQUIRED[command], *common]
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.config, args.debug) == (command, "x.yaml", True)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_without_common_options_defaults_hold(command):
    args = cli.build_parser().parse_args([command, *REQUIRED[command]])
    assert (args.config, args.debug) == (None, False)


def test_before_is_kept_when_only_debug_comes_after():
    args = cli.build_parser().parse_args(["--config", "x.yaml", "status", "--debug"])
    assert (args.config, args.debug) == ("x.yaml", True)


def test_config_after_the_command_is_loaded(tmp_path, capsys):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"node": {"ae_title": "AFTER_CMD", "data_dir": "var"}}))
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["node"]["ae_title"] == "AFTER_CMD"


def test_serve_reads_config_given_after_the_command(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"node": {"port": 0}}))
    exe = Path(sys.executable).parent / "dicom-node"
    proc = subprocess.run([str(exe), "serve", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "node.port:" in proc.stderr and str(path) in proc.stderr
