"""The systemd units: required keys, and ``systemd-analyze verify`` where systemd is installed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
INSTALLED_VENV = "/opt/dicom-node/.venv"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) pairs; systemd allows repeated keys, which configparser does not."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: not 'Key=value': {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


COMMON = {
    "User": "dicom-node",
    "Restart": "on-failure",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "NoNewPrivileges": "true",
    "ReadWritePaths": "/var/lib/dicom-node",
}


@pytest.mark.parametrize("name,exec_start", [
    ("dicom-node.service", f"{INSTALLED_VENV}/bin/dicom-node serve"),
    ("dicom-node-worker@.service", f"{INSTALLED_VENV}/bin/dicom-node worker --queues %I"),
])
def test_unit_keys(name, exec_start):
    unit = parse_unit(UNITS / name)
    assert set(unit) == {"Unit", "Service", "Install"}
    for key, value in COMMON.items():
        assert values(unit, "Service", key) == [value], key
    assert values(unit, "Service", "Type")[0] in ("simple", "notify")
    assert values(unit, "Service", "ExecStart") == [exec_start]
    assert "DICOM_NODE_CONFIG=/etc/dicom-node/config.yaml" in values(unit, "Service", "Environment")
    assert float(values(unit, "Service", "RestartSec")[0]) > 0
    assert int(values(unit, "Service", "LimitNOFILE")[0]) >= 4096
    # A config error (exit 2) is not retried in a loop.
    assert values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_worker_stop_lets_the_running_task_finish():
    # Only the Celery main process gets SIGTERM (warm shutdown); the pool process running the task
    # is left to finish it (tests/worker/test_worker_shutdown.py), SIGKILLed only at the timeout.
    unit = parse_unit(UNITS / "dicom-node-worker@.service")
    assert values(unit, "Service", "KillMode") == ["mixed"]
    assert values(unit, "Service", "KillSignal") == ["SIGTERM"]
    assert int(values(unit, "Service", "TimeoutStopSec")[0]) >= 600  # a long series may take minutes


def test_worker_command_accepts_the_unit_arguments():
    from dicom_node.cli import build_parser

    args = build_parser().parse_args(["worker", "--queues", "stat,routine"])
    assert args.command == "worker"


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # Not skipped silently: only acceptable where systemd really is not installed; the key
        # checks above still ran.
        assert not any(Path(p).exists() for p in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze",
                                                   "/lib/systemd/systemd", "/usr/lib/systemd/systemd"))
        return
    # verify checks that ExecStart exists: point it at this checkout's virtualenv.
    venv = Path(sys.executable).parent.parent
    assert (venv / "bin" / "dicom-node").exists(), "the dicom-node console script must be installed"
    checked = []
    for name, as_name in (("dicom-node.service", "dicom-node.service"),
                          ("dicom-node-worker@.service", "dicom-node-worker@stat\\x2croutine.service"),
                          ("dicom-node-worker@.service", "dicom-node-worker@batch.service")):
        text = (UNITS / name).read_text().replace(INSTALLED_VENV, str(venv))
        (tmp_path / as_name).write_text(text)
        checked.append(str(tmp_path / as_name))
    proc = subprocess.run([tool, "verify", *checked], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown keys and bad values are only warnings ("..., ignoring"): treat them as failures.
    assert "ignoring" not in output and "Unknown" not in output and "Invalid" not in output, output


def test_reprocess_service_and_timer(tmp_path):
    service = parse_unit(UNITS / "dicom-node-reprocess.service")
    timer = parse_unit(UNITS / "dicom-node-reprocess.timer")
    assert values(service, "Service", "Type") == ["oneshot"]
    assert values(service, "Service", "ExecStart") == [f"{INSTALLED_VENV}/bin/dicom-node reprocess"]
    assert "DICOM_NODE_CONFIG=/etc/dicom-node/config.yaml" in values(service, "Service", "Environment")
    for key in ("User", "ProtectSystem", "ReadWritePaths", "NoNewPrivileges"):
        assert values(service, "Service", key) == [COMMON[key]], key
    assert values(timer, "Timer", "OnCalendar") and values(timer, "Timer", "Persistent") == ["true"]
    assert values(timer, "Install", "WantedBy") == ["timers.target"]
    from dicom_node.cli import build_parser

    args = build_parser().parse_args(["reprocess"])  # the unit's command line: all from config.yaml
    assert (args.source, args.since) == (None, None)
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return  # test_systemd_analyze_verify already insists it is absent
    venv = Path(sys.executable).parent.parent
    for name in ("dicom-node.service", "dicom-node-reprocess.service", "dicom-node-reprocess.timer"):
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED_VENV, str(venv)))
    proc = subprocess.run([tool, "verify", str(tmp_path / "dicom-node-reprocess.service"),
                           str(tmp_path / "dicom-node-reprocess.timer")], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ignoring" not in output and "Unknown" not in output and "Invalid" not in output, output
