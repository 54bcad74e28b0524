"""Blocks: shapes, parameter counts from formulas, and that SE/attention act on the output."""
from __future__ import annotations

import pytest
import torch

from segmenter.blocks import ChannelSE, ConvNormAct, ResidualSEBlock, SpatialAttention


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def se_params(c: int, r: int) -> int:
    h = max(1, c // r)
    return c * h + h + h * c + c  # two Linear layers with bias


def csr_params(cin: int, cout: int, r: int) -> int:
    convs = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout  # convs without bias, BN affine
    shortcut = 0 if cin == cout else cin * cout + 2 * cout
    return convs + se_params(cout, r) + shortcut


@pytest.mark.parametrize("cin,cout,k", [(1, 8, 3), (8, 8, 1), (3, 5, 5)])
def test_conv_norm_act_shape_and_params(cin: int, cout: int, k: int) -> None:
    m = ConvNormAct(cin, cout, k)
    assert m(torch.randn(2, cin, 9, 11)).shape == (2, cout, 9, 11)
    assert n_params(m) == k * k * cin * cout + 2 * cout


@pytest.mark.parametrize("c,r", [(64, 16), (16, 16), (8, 16), (32, 4)])
def test_se_params(c: int, r: int) -> None:
    assert n_params(ChannelSE(c, r)) == se_params(c, r)


def test_se_scales_channels_by_gate() -> None:
    se = ChannelSE(4, 2)
    torch.nn.init.zeros_(se.fc2.weight)
    torch.nn.init.zeros_(se.fc2.bias)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(se(x), 0.5 * x)  # sigmoid(0) = 0.5


def test_spatial_attention_params_and_gate() -> None:
    sa = SpatialAttention(7)
    assert n_params(sa) == 2 * 7 * 7
    torch.nn.init.zeros_(sa.conv.weight)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(sa(x), 0.5 * x)


@pytest.mark.parametrize("cin,cout,r", [(1, 16, 16), (16, 16, 16), (16, 32, 16), (64, 128, 16), (8, 8, 2)])
def test_csr_block_params_and_shortcut(cin: int, cout: int, r: int) -> None:
    b = ResidualSEBlock(cin, cout, r)
    assert n_params(b) == csr_params(cin, cout, r)
    assert isinstance(b.shortcut, torch.nn.Identity) == (cin == cout)
    assert b(torch.randn(2, cin, 6, 6)).shape == (2, cout, 6, 6)


def test_csr_block_uses_se() -> None:
    torch.manual_seed(0)
    b = ResidualSEBlock(4, 4, 2).eval()
    x = torch.randn(1, 4, 8, 8)
    fired = []
    b.se.register_forward_hook(lambda *_: fired.append(True))
    before = b(x)
    assert fired
    with torch.no_grad():
        b.se.fc2.bias.fill_(-50.0)  # gate ~0: the residual branch vanishes
    after = b(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, torch.relu(b.shortcut(x)), atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: ConvNormAct(0, 4), lambda: ConvNormAct(4, 4, 2), lambda: ChannelSE(8, 0),
    lambda: SpatialAttention(4),
])
def test_bad_arguments_raise(make) -> None:
    with pytest.raises(ValueError):
        make()
