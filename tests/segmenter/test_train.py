"""Training: a tiny run is deterministic, resumes exactly, and the CLI writes its outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.csr_unet import CSRUNetConfig
from segmenter.data import SamplerConfig, build_bank, patient_split, sample_batch
from segmenter.synthetic import PhantomRanges, make_phantom
from segmenter.train import TrainConfig, main, segmentation_loss, train


@pytest.fixture(scope="module")
def cases(small_ranges: PhantomRanges) -> list:
    return [make_phantom(i, k, small_ranges) for i, k in enumerate(["sdh", "edh", "negative", "iph", "both"])]


def tiny_config(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, iters_per_epoch=2, batch=2, val_cases=1, val_fraction=0.2, seed=3,
                       threads=1, device="cpu",
                       model=CSRUNetConfig(base_width=4, depth=2, input_size=64, windows=("brain", "subdural")),
                       sampler=SamplerConfig(crop=32))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_and_resume_is_exact(cases: list, tmp_path: Path) -> None:
    train(tiny_config(2), tmp_path / "a", cases=cases)
    train(tiny_config(2), tmp_path / "b", cases=cases)
    assert same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    train(tiny_config(2), tmp_path / "c", cases=cases, stop_after=1)  # interrupted after epoch 0
    assert not same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "c" / "last.pt"))
    result = train(tiny_config(2), tmp_path / "c", resume=True, cases=cases)
    assert same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "c" / "last.pt"))
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and "val_dice_sdh" in metrics["history"][0]
    assert (tmp_path / "c" / "best.pt").is_file()


def test_patient_split_never_splits_a_patient() -> None:
    class C:
        def __init__(self, pid: str) -> None:
            self.patient_id = pid

    cs = [C(p) for p in "aabbbccdde"]
    train_cases, val_cases = patient_split(cs, 0.3, seed=1)
    assert {c.patient_id for c in train_cases}.isdisjoint({c.patient_id for c in val_cases})
    assert len(train_cases) + len(val_cases) == len(cs) and val_cases


def test_sampler_oversamples_bleed_and_shapes(cases: list) -> None:
    bank = build_bank(cases, 64)
    x, y = sample_batch(bank, 16, np.random.default_rng(0), ("brain", "subdural"), 1, SamplerConfig(crop=32))
    assert x.shape == (16, 6, 32, 32) and y.shape == (16, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int((y.flatten(1).amax(1) > 0).sum()) >= 5  # 60 % positive by default


def test_loss_is_lower_for_the_right_answer() -> None:
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:5, 2:5] = 1
    good = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 10
    assert segmentation_loss(good, y) < segmentation_loss(-good, y)


def test_cli_writes_checkpoints_log_and_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["--count", "3", "--epochs", "1", "--iters", "1", "--batch", "2", "--base-width", "4",
               "--input-size", "64", "--crop", "32", "--val-cases", "1", "--threads", "1", "--out", str(out)])
    assert rc == 0
    for name in ("last.pt", "best.pt", "metrics.json", "train.log"):
        assert (out / name).is_file(), name
