"""A worker's memory must not grow with the series' length beyond the label map.

The analysis keeps the HU volume in a scratch file, drops each slice's pixel data once decoded,
and runs the network and the clean-up a run of slices at a time (``segmenter.slab_volume``).
Measured with tracemalloc (numpy's buffers are traced; torch's are not, and the oracle's
per-run scores are small): the extra peak for three times the slices must stay near the size
of the one-byte label maps. Held whole, the series costs about 29 bytes a voxel here.
"""
from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from dicom_node.config import parse_config
from segmenter.dicom_io import simple_head_hu, write_ct_series
from worker.pipeline import analyse_series

SIDE = 256
#: Allowed extra peak per added voxel: the label map, the SEG's mask and a few boolean
#: temporaries of the same size; about 4.4 bytes measured.
MAX_BYTES_PER_VOXEL = 8.0


def _bleed_series(folder: Path, slices: int) -> list[Path]:
    hu = simple_head_hu(slices, SIDE, SIDE, seed=1)
    hu[slices // 2 - 3:slices // 2 + 3, 60:90, 100:160] = 80.0  # a bleed on six middle slices
    return write_ct_series(hu, (1.0, 0.9, 0.9), folder)


def _peak_bytes(paths: list[Path], out: Path, cfg, segmenter) -> tuple[int, dict]:
    gc.collect()
    tracemalloc.start()
    try:
        outcome = analyse_series(paths, out, cfg, segmenter, rel_to=out.parent, preview=True)
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def test_peak_grows_with_the_label_map_not_with_the_series(tmp_path: Path, oracle_segmenter) -> None:
    cfg = parse_config({"node": {"data_dir": str(tmp_path)}})
    short, long = _bleed_series(tmp_path / "short", 24), _bleed_series(tmp_path / "long", 72)
    analyse_series(short, tmp_path / "warm", cfg, oracle_segmenter, rel_to=tmp_path)  # first-use imports, caches
    short_peak, short_outcome = _peak_bytes(short, tmp_path / "a", cfg, oracle_segmenter)
    long_peak, long_outcome = _peak_bytes(long, tmp_path / "b", cfg, oracle_segmenter)
    for outcome in (short_outcome, long_outcome):
        assert outcome["state"] == "done" and outcome["findings"]["SDH"]["present"], outcome.get("reason")
    added_voxels = (72 - 24) * SIDE * SIDE
    per_voxel = (long_peak - short_peak) / added_voxels
    assert per_voxel < MAX_BYTES_PER_VOXEL, (
        f"peak grew by {per_voxel:.1f} bytes per added voxel ({short_peak / 2**20:.1f} -> "
        f"{long_peak / 2**20:.1f} MiB): the series is held whole somewhere")
    assert short_peak < 40 * 2**20


def test_scratch_volume_leaves_nothing_in_the_job_folder(tmp_path: Path, oracle_segmenter) -> None:
    cfg = parse_config({"node": {"data_dir": str(tmp_path)}})
    out = tmp_path / "job"
    analyse_series(_bleed_series(tmp_path / "in", 24), out, cfg, oracle_segmenter, rel_to=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["seg.dcm", "sr.dcm", "kos.dcm", "preview.png"] + [f"sc_{k:03d}.dcm" for k in range(1, 7)])
