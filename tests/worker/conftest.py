"""Fixtures for the result-object tests: a small CT series, a hand-made label volume, validators.

The series is 12 slices of 64x64 written by ``segmenter.dicom_io.make_test_series`` and read
back with ``read_series``, so the datasets are sorted exactly as the worker sorts them.
"""
from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from segmenter.dicom_io import CTSeries, make_test_series, read_series
from segmenter.findings import EDH, SDH, Finding, ModelInfo, Prediction

N_SLICES, ROWS, COLS = 12, 64, 64


@pytest.fixture(scope="session")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    make_test_series(out, n_slices=N_SLICES, rows=ROWS, cols=COLS, seed=3)
    return out


@pytest.fixture(scope="session")
def ct(ct_dir: Path) -> CTSeries:
    return read_series(ct_dir)


@pytest.fixture(scope="session")
def labels() -> np.ndarray:
    """SDH: a thin crescent-like slab on the patient's right (image left), slices 3-7;
    EDH: a lens on the patient's left (image right), slices 5-8."""
    volume = np.zeros((N_SLICES, ROWS, COLS), dtype=np.uint8)
    volume[3:8, 20:44, 8:12] = SDH
    volume[5:9, 26:38, 52:57] = EDH
    return volume


@pytest.fixture(scope="session")
def model() -> ModelInfo:
    return ModelInfo(name="csr-unet-test", version="0.1.0-test", weights_sha256=hashlib.sha256(b"test").hexdigest())


@pytest.fixture(scope="session")
def make_prediction(ct: CTSeries, labels: np.ndarray, model: ModelInfo) -> Callable[..., Prediction]:
    """``make_prediction(sdh=True, edh=True, **finding_overrides)``.

    Absent classes are removed from the label volume, as post-processing does; volumes and
    voxel counts are computed from the labels and the series spacing.
    """
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0

    def factory(sdh: bool = True, edh: bool = True, **overrides: dict) -> Prediction:
        volume = labels.copy()
        findings = {}
        for name, label, present, side, thickness in (("SDH", SDH, sdh, "right", 8.0), ("EDH", EDH, edh, "left", 17.5)):
            if not present:
                volume[volume == label] = 0
            count = int(np.sum(volume == label))
            values = dict(
                name=name, label=label, present=present, volume_ml=count * voxel_ml if present else 0.0,
                max_thickness_mm=thickness if present else 0.0, laterality=side if present else None,
                confidence=0.9 if present else 0.0, voxel_count=count,
            )  # fmt: skip
            values.update(overrides.get(name, {}))
            findings[name] = Finding(**values)
        return Prediction(labels=volume, findings=findings, model=model)

    return factory


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def dciodvfy(tool: Callable[[str], str]) -> Callable[[Path], list[str]]:
    """Run dciodvfy on one file; fail on any line with "Error", return (and print) the warnings."""
    exe = tool("dciodvfy")

    def check(path: Path) -> list[str]:
        result = _run([exe, str(path)])
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if "Error" in line]
        warnings = [line for line in lines if "Warning" in line]
        print(f"dciodvfy {path.name}: {len(warnings)} warning(s)", *sorted(set(warnings)), sep="\n  ")
        assert not errors, f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
        return warnings

    return check


@pytest.fixture(scope="session")
def dcentvfy(tool: Callable[[str], str]) -> Callable[[list[Path]], None]:
    """Run dcentvfy across files (patient/study/series consistency); fail on any error."""
    exe = tool("dcentvfy")

    def check(paths: list[Path]) -> None:
        result = _run([exe, *map(str, paths)])
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if "Error" in line]
        print(f"dcentvfy over {len(paths)} files:", *lines, sep="\n  ")
        assert not errors, "dcentvfy errors:\n" + "\n".join(errors)

    return check


@pytest.fixture(scope="session")
def dsrdump(tool: Callable[[str], str]) -> Callable[[Path], str]:
    """dcmtk dsrdump with all codes and long values; asserts exit status 0, returns stdout."""
    exe = tool("dsrdump")

    def dump(path: Path) -> str:
        result = _run([exe, "+Pc", "+Pl", str(path)])
        assert result.returncode == 0, result.stderr
        return result.stdout

    return dump
