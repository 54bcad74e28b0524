"""Configuration through the CLI: bad files exit 2 naming the key and the fix; file precedence;
``--help`` for every command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node import cli
from dicom_node.config import ENV_VAR

DEST = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}


#: cli.main installs a handler on the test's captured stderr; conftest removes it afterwards.
pytestmark = pytest.mark.usefixtures("restore_root_logging")


def write(tmp_path: Path, data, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def under_a_file(tmp_path: Path) -> str:
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    # mkdir below a regular file fails for every user, root included (chmod does not stop root).
    return str(blocker / "data")


BAD = [
    # (id, config (mapping, YAML text or callable(tmp_path) -> mapping), substrings the message must hold)
    ("unknown key", {"node": {"portt": 11112}}, ["node.portt: unknown key; remove it or check its spelling"]),
    ("unknown section", {"nodes": {}}, ["nodes: unknown key"]),
    ("port too high", {"node": {"port": 70000}}, ["node.port:", "less than or equal to 65535", "70000"]),
    ("port not a number", {"node": {"port": "eleven"}}, ["node.port:", "valid integer", "eleven"]),
    ("http port zero", {"http": {"port": 0}}, ["http.port:", "greater than or equal to 1"]),
    ("data_dir under a file", lambda t: {"node": {"data_dir": under_a_file(t)}},
     ["node.data_dir: cannot create", "choose a writable folder"]),
    ("data_dir is a file", lambda t: {"node": {"data_dir": str(write(t, "x", "plain-file"))}},
     ["node.data_dir: cannot create"]),
    ("duplicate destination name", {"destinations": [DEST, {**DEST, "ae_title": "OTHER"}]},
     ["name 'pacs' is used twice", "give each destination its own name"]),
    ("duplicate destination AE", {"destinations": [DEST, {**DEST, "name": "pacs2"}]},
     ["AE title 'ORTHANC' is used twice", "each peer needs its own AE title"]),
    ("destination AE is our AE", {"node": {"ae_title": "ORTHANC"}, "destinations": [DEST]},
     ["'ORTHANC' is the node's own node.ae_title", "sent to ourselves"]),
    ("AE title too long", {"node": {"ae_title": "A" * 17}}, ["node.ae_title:", "1 to 16 characters"]),
    ("bad regex", {"series": {"exclude": {"series_description": ["(scout"]}}},
     ["series.exclude.series_description:", "must be a valid regular expression", "(scout"]),
    ("bad include regex", {"series": {"include": {"body_part_examined": ["[head"]}}},
     ["series.include.body_part_examined:", "valid regular expression"]),
    ("invalid YAML", "node: [port: 1\n", ["not valid YAML"]),
    ("not a mapping", "- node\n- series\n", ["must hold a mapping of sections"]),
    ("broker scheme", {"queue": {"broker_url": "amqp://localhost"}}, ["queue.broker_url:", "redis:// URL"]),
    ("time limits", {"queue": {"soft_time_limit_s": 900, "time_limit_s": 600}},
     ["queue.soft_time_limit_s must be below queue.time_limit_s"]),
    ("negative quiet time", {"series": {"quiet_seconds": -1}}, ["series.quiet_seconds:", "greater than 0"]),
    ("unknown object type", {"destinations": [{**DEST, "send": ["pdf"]}]}, ["destinations.0.send.0:", "pdf"]),
]


@pytest.mark.parametrize("data,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, data, expected):
    if callable(data):
        data = data(tmp_path)
    path = write(tmp_path, data)
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dicom-node: {path}"), err
    for text in expected:
        assert text in err, err


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.yaml"), "check-config"]) == 2
    assert "cannot read the configuration file (No such file or directory)" in capsys.readouterr().err


def test_bad_config_through_the_console_script(tmp_path):
    path = write(tmp_path, {"node": {"port": 0}})
    exe = Path(sys.executable).parent / "dicom-node"
    proc = subprocess.run([str(exe), "--config", str(path), "serve"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "node.port:" in proc.stderr and "Traceback" not in proc.stderr


def ae_of(capsys) -> str:
    return yaml.safe_load(capsys.readouterr().out)["node"]["ae_title"]


def test_precedence_flag_env_cwd_defaults(tmp_path, monkeypatch, capsys):
    flag = write(tmp_path, {"node": {"ae_title": "FROM_FLAG", "data_dir": "d1"}}, "flag.yaml")
    env = write(tmp_path, {"node": {"ae_title": "FROM_ENV", "data_dir": "d2"}}, "env.yaml")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    write(cwd, {"node": {"ae_title": "FROM_CWD", "data_dir": "d3"}})
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(ENV_VAR, str(env))
    assert cli.main(["--config", str(flag), "check-config"]) == 0 and ae_of(capsys) == "FROM_FLAG"
    assert cli.main(["check-config"]) == 0 and ae_of(capsys) == "FROM_ENV"
    monkeypatch.delenv(ENV_VAR)
    assert cli.main(["check-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["node"]["ae_title"] == "FROM_CWD"
    # Relative paths are taken from the file's folder, not from where the command runs.
    assert Path(out["node"]["data_dir"]) == cwd / "d3"
    (cwd / "config.yaml").unlink()
    assert cli.main(["check-config"]) == 0 and ae_of(capsys) == "DURAL_AI"  # embedded defaults


def test_shipped_config_is_valid(tmp_path, capsys):
    shipped = Path(cli.__file__).resolve().parents[1] / "config.yaml"
    data = yaml.safe_load(shipped.read_text())
    data["node"]["data_dir"] = str(tmp_path / "var")  # keep the test out of the checkout
    assert cli.main(["--config", str(write(tmp_path, data)), "check-config"]) == 0


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_exits_0(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dicom-node")
    if command is not None:
        assert cli.COMMANDS[command][1] in " ".join(out.split())


def test_console_script_help():
    exe = Path(sys.executable).parent / "dicom-node"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in cli.COMMANDS:
        assert command in proc.stdout
