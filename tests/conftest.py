"""Project-wide test fixtures: free ports and system tools (dcmtk, ...) that fail clearly.

Keep this small; stage-specific fixtures live in each test folder's conftest.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

#: Where the console scripts of this virtualenv live (dicom-node, dciodvfy, ...).
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_tool(name: str) -> str:
    for candidate in (VENV_BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed; install the system test tools (apt-get install dcmtk orthanc "
                f"redis-server) and the test extras (pip install -c constraints.txt -e .[test])")


@functools.lru_cache(maxsize=None)
def _find_dcmtk(name: str) -> str:
    # pynetdicom installs apps with dcmtk's names (storescu, echoscu, ...) into the virtualenv;
    # look outside it, and check that the binary really is dcmtk.
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != VENV_BIN.resolve()]
    for folder in dirs + ["/usr/bin", "/usr/local/bin"]:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30)
            if "dcmtk" in (version.stdout + version.stderr).lower():
                return str(candidate)
    pytest.fail(f"dcmtk's {name} is not installed; install the system test tools (apt-get install dcmtk)")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a TCP port free on 127.0.0.1 right now."""
    return _free_port


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool("storescu")`` returns the tool's path, or fails the test saying how to install it."""
    return _find_tool


@pytest.fixture(scope="session")
def dcmtk() -> Callable[[str], str]:
    """``dcmtk("storescu")``: dcmtk's binary, never pynetdicom's app of the same name."""
    return _find_dcmtk


@pytest.fixture
def redis_url(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[str]:
    """A redis-server of the test's own on a free port (nothing kept on disk), as a broker URL."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.time() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
