"""Project-wide test fixtures: free ports and system tools (dcmtk, ...) that fail clearly.

Keep this small; stage-specific fixtures live in each test folder's conftest.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests import helpers

#: Where the console scripts of this virtualenv live (dicom-node, dciodvfy, ...).
VENV_BIN = Path(sys.executable).parent


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
    return helpers.free_port


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


# -- a gantry-tilted series with two slice spacings, shared by the segmenter and worker tests ------
#: A GE head protocol in miniature: the image plane tilted 18.5 degrees about the patient's
#: left-right axis and the slices stacked along the table (patient z), so each slice is shifted
#: within its plane against the last; 4 mm through the posterior fossa, then 7 mm, the two runs
#: overlapping where they meet (as in the real series this imitates).
TILT_DEG = 18.5
TILTED_PLANE = (1.0, 0.0, 0.0, 0.0, math.cos(math.radians(TILT_DEG)), -math.sin(math.radians(TILT_DEG)))
TWO_RUNS_MM = [4.0 * k for k in range(8)] + [29.1 + 7.0 * k for k in range(8)]
TWO_RUNS_THICKNESS_MM = [4.0] * 8 + [7.0] * 8
#: The planted lesion: an ellipsoid of 70-HU blood with axes along patient x, y and z (LPS mm),
#: centred 20 mm to the patient's left (+x) of the first slice's centre and 30 mm up along the
#: slice normal, so that it spans the 4 mm and the 7 mm run.
LESION_LEFT_MM, LESION_UP_MM = 20.0, 30.0
LESION_SEMI_AXES_MM = (9.0, 24.0, 27.0)
LESION_HU = 70.0


@dataclass(frozen=True)
class TiltedSeries:
    """Files of the tilted series (volume order), the lesion mask as acquired, and its true volume."""

    paths: list[Path]
    lesion: Any  # numpy bool (z, y, x): voxels whose centre lies inside the ellipsoid
    truth_ml: float  # the ellipsoid's volume, 4/3 pi a b c


@pytest.fixture(scope="session")
def tilted_series(tmp_path_factory: pytest.TempPathFactory) -> TiltedSeries:
    """16 slices of 128 x 128 at 1 mm, tilted 18.5 degrees, 4 mm then 7 mm, with an ellipsoid lesion."""
    import numpy as np

    from segmenter.dicom_writer import simple_head_hu, write_ct_series

    n, size, pixel = len(TWO_RUNS_MM), 128, 1.0
    iop = np.asarray(TILTED_PLANE)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    origin = -(size - 1) / 2 * pixel * (row + col)
    # What the writer does with gantry_tilt_deg=-TILT_DEG: offsets along the normal, shifted
    # along the column direction so that the stack runs along the patient z axis.
    offsets = np.asarray(TWO_RUNS_MM)
    positions = origin + offsets[:, None] * normal - np.tan(np.radians(TILT_DEG)) * offsets[:, None] * col
    grid = np.arange(size) * pixel
    points = (positions[:, None, None, :] + grid[None, :, None, None] * col + grid[None, None, :, None] * row)
    centre = positions[0] + (size - 1) / 2 * pixel * (row + col) + LESION_LEFT_MM * row + LESION_UP_MM * normal
    lesion = (((points - centre) / np.asarray(LESION_SEMI_AXES_MM)) ** 2).sum(-1) <= 1.0
    hu = simple_head_hu(n, size, size, seed=4)
    hu[lesion] = LESION_HU
    out = tmp_path_factory.mktemp("tilted")
    paths = write_ct_series(hu, (4.0, pixel, pixel), out, orientation=TILTED_PLANE, gantry_tilt_deg=-TILT_DEG,
                            slice_offsets_mm=TWO_RUNS_MM, slice_thickness_mm=TWO_RUNS_THICKNESS_MM,
                            series_description="HEAD TILTED 4/7mm", seed=4)
    truth = 4.0 / 3.0 * math.pi * math.prod(LESION_SEMI_AXES_MM) / 1000.0
    return TiltedSeries(paths, lesion, truth)


@pytest.fixture(scope="session")
def oracle_segmenter() -> Any:
    """The real ``Segmenter`` (pre- and post-processing, geometry) with the network replaced by a
    threshold: 60-100 HU is SDH (brain noise stays below). Its findings are what the true
    geometry makes of a known mask."""
    import numpy as np
    import torch

    from segmenter.findings import ModelInfo
    from segmenter.inference import Segmenter
    from segmenter.preprocess import Crop

    class Oracle(Segmenter):
        def crop(self, volume_hu):  # type: ignore[override]
            _, rows, cols = volume_hu.shape
            return Crop(0, 0, rows, rows, cols)

        def score_chunks(self, volume_hu, crop, clock=None):  # type: ignore[override]
            for z0 in range(0, volume_hu.shape[0], 8):
                hu = np.asarray(volume_hu[z0:z0 + 8])
                blood = torch.from_numpy((hu >= 60) & (hu <= 100))
                logits = torch.zeros(hu.shape[0], 3, *hu.shape[1:])
                logits[:, 0], logits[:, 1] = (~blood) * 20.0, blood * 20.0
                yield logits

    return Oracle(None, None, ModelInfo("oracle", "0-test", "cd" * 32), torch.device("cpu"))  # type: ignore[arg-type]
