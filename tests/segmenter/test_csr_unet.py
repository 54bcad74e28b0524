"""CSR-UNet: shapes, parameter counts by formula, attention in the graph, weight loading."""
from __future__ import annotations

import pytest
import torch

from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.weights import WeightsError, load_weights, sha256_file

from .test_blocks import csr_params, n_params


def unet_params(cin: int, nc: int, base: int, depth: int, r: int, k: int, bott: bool, skip: bool) -> int:
    w = [base * 2**i for i in range(depth + 1)]
    total = sum(csr_params(a, b, r) for a, b in zip([cin] + w[:depth - 1], w[:depth]))
    total += csr_params(w[depth - 1], w[depth], r)
    total += (2 * k * k) * (int(bott) + depth * int(skip))
    for i in range(depth):
        total += 4 * w[i + 1] * w[i] + w[i] + csr_params(2 * w[i], w[i], r)  # 2x2 transposed conv + block
    return total + base * nc + nc


CONFIGS = [
    dict(in_channels=1, num_classes=3, base_width=64, depth=4, se_ratio=16),
    dict(in_channels=2, num_classes=3, base_width=16, depth=4, se_ratio=16),
    dict(in_channels=9, num_classes=3, base_width=8, depth=3, se_ratio=4, skip_attention=True),
    dict(in_channels=1, num_classes=2, base_width=4, depth=2, se_ratio=2, bottleneck_attention=False),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_parameter_count_matches_formula(kw: dict) -> None:
    full = dict(attention_kernel=7, bottleneck_attention=True, skip_attention=False) | kw
    expected = unet_params(full["in_channels"], full["num_classes"], full["base_width"], full["depth"],
                           full["se_ratio"], full["attention_kernel"], full["bottleneck_attention"],
                           full["skip_attention"])
    assert n_params(CSRUNet(**kw)) == expected


def test_paper_default_size() -> None:
    # Widths 64-128-256-512, bottleneck 1024: about 33 M parameters with CSR blocks.
    assert 30e6 < n_params(CSRUNet()) < 36e6


@pytest.mark.parametrize("kw,hw", [(CONFIGS[2], (24, 40)), (CONFIGS[3], (12, 8))])
def test_output_shape(kw: dict, hw: tuple[int, int]) -> None:
    out = CSRUNet(**kw)(torch.randn(2, kw["in_channels"], *hw))
    assert out.shape == (2, kw["num_classes"], *hw)


def test_input_not_divisible_raises() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        CSRUNet(base_width=4)(torch.randn(1, 1, 24, 24))


def test_config_channels_and_round_trip() -> None:
    cfg = CSRUNetConfig(base_width=4, windows=("brain", "subdural", "bone"), context_slices=1)
    assert cfg.in_channels == 9
    assert CSRUNetConfig.from_dict(cfg.to_dict()) == cfg
    assert CSRUNet.from_config(cfg).encoders[0].conv1[0].in_channels == 9


def test_attention_modules_fire_and_matter() -> None:
    torch.manual_seed(0)
    m = CSRUNet(1, 3, base_width=4, depth=2, se_ratio=2, skip_attention=True).eval()
    x = torch.randn(1, 1, 16, 16)
    calls: list[str] = []
    m.bottleneck_attention.register_forward_hook(lambda *_: calls.append("bottleneck"))
    for att in m.skip_attention:
        att.register_forward_hook(lambda *_: calls.append("skip"))
    before = m(x)
    assert calls.count("bottleneck") == 1 and calls.count("skip") == 2
    with torch.no_grad():
        m.bottleneck_attention.conv.weight.zero_()
    assert not torch.allclose(before, m(x))


def test_zeroing_se_changes_output() -> None:
    torch.manual_seed(0)
    m = CSRUNet(1, 3, base_width=4, depth=2, se_ratio=2).eval()
    x = torch.randn(1, 1, 16, 16)
    before = m(x)
    with torch.no_grad():
        m.bottleneck.se.fc2.bias.fill_(-50.0)
    assert not torch.allclose(before, m(x))


def test_load_weights_checks_hash_first(tmp_path) -> None:
    m = CSRUNet(1, 3, base_width=4, depth=2)
    path = tmp_path / "w.pt"
    torch.save({"model": m.state_dict()}, path)
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(CSRUNet(1, 3, base_width=4, depth=2), path, "0" * 64)
    other = CSRUNet(1, 3, base_width=4, depth=2)
    load_weights(other, path, sha256_file(path))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))
    with pytest.raises(WeightsError, match="fit"):
        load_weights(CSRUNet(1, 3, base_width=8, depth=2), path, None)
