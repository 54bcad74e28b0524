"""Load, small but real (``bench/load.py`` runs the full size): concurrent associations while a
worker analyses, twice, with the node's memory flat from one round to the next; then two long
thin-slice series, the analysis time growing in proportion to the slices and the worker's peak
memory bounded."""
from __future__ import annotations

import pytest

from tests.loadrun import LoadStack

pytestmark = [pytest.mark.network, pytest.mark.slow]

ASSOCIATIONS, SLICES, SIZE = 8, 20, 64
#: Growth of the node's RSS allowed from one round to the next (allocator noise, caches).
FLAT_KIB = 30 * 1024


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory):
    stack = LoadStack(tmp_path_factory.mktemp("load"))
    try:
        yield stack
    finally:
        stack.close()


def test_concurrent_associations_store_everything_and_node_memory_stays_flat(load_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rounds = [load_stack.concurrent_round(tmp_path / f"round{k}", ASSOCIATIONS, SLICES, SIZE, timeout=300)
              for k in range(2)]
    for r in rounds:
        assert r.failed_stores == 0, r
    first, second = rounds
    assert second.node_rss_after_kib - first.node_rss_after_kib < FLAT_KIB, rounds
    assert second.node_peak_kib - first.node_peak_kib < FLAT_KIB, rounds
    assert "Traceback" not in load_stack.log("node")


def test_long_series_time_linear_and_worker_memory_bounded(load_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    short, long = (load_stack.long_series(tmp_path / f"thin{n}", n, SIZE, 0.625, timeout=300) for n in (40, 120))
    per_slice = [r.analysis_s / r.slices for r in (short, long)]
    # Three times the slices: at most ~1.6 times the time per slice (nothing worse than linear).
    assert per_slice[1] < 1.6 * per_slice[0] + 0.02, (short, long)
    # Memory may grow with the volume, never by more than the slices' share.
    assert long.worker_peak_kib < 3 * short.worker_peak_kib, (short, long)
