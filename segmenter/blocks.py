"""Building blocks of the CSR-UNet (convolution, squeeze-and-excitation, residual).

Each block is a small ``nn.Module`` with explicit constructor arguments; the norm and the
activation are injected so that tests and variants can swap them (torchvision style).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

NormFactory = Callable[[int], nn.Module]
ActFactory = Callable[[], nn.Module]


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Sequential):
    """``k x k`` convolution (no bias, the norm has one), norm, optional activation.

    ::

        x ─▶ Conv k×k ─▶ Norm ─▶ [Act] ─▶ y
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory | None = _relu,
    ) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1; got in={in_channels}, out={out_channels}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            norm(out_channels),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class ChannelSE(nn.Module):
    """Squeeze-and-excitation channel recalibration (Hu et al. 2018).

    ::

        x ─┬─▶ GlobalAvgPool ─▶ FC(C→C/r) ─▶ ReLU ─▶ FC(C/r→C) ─▶ sigmoid ─┐
           └──────────────────────────────────────────────────────── × ◀──┘─▶ y

    The hidden width is ``max(1, channels // ratio)`` so that narrow CPU-sized models
    still have an excitation path.
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1; got r={ratio}, channels={channels}")
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), each channel scaled by a gate in (0, 1)."""
        w = x.mean(dim=(2, 3))
        w = self.gate(self.fc2(self.act(self.fc1(w))))
        return x * w[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention (Woo et al. 2018).

    ::

        x ─┬─▶ [mean_c(x), max_c(x)] ─▶ Conv k×k (2→1) ─▶ sigmoid ─┐
           └──────────────────────────────────────────────── × ◀──┘─▶ y
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), every pixel scaled by one gate shared by all channels."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class ResidualSEBlock(nn.Module):
    """The CSR block: convolutions, squeeze-and-excitation, residual shortcut.

    ::

        x ─┬─▶ Conv3×3-BN-ReLU ─▶ Conv3×3-BN ─▶ SE(r) ─▶ (+) ─▶ ReLU ─▶ y
           └─▶ shortcut (Identity, or Conv1×1-BN if C_in ≠ C_out) ──┘
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        se_ratio: int = 16,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = _relu,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, norm, act)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm, None)
        self.se = ChannelSE(out_channels, se_ratio)
        self.shortcut: nn.Module
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, norm, None)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W)."""
        return self.act(self.se(self.conv2(self.conv1(x))) + self.shortcut(x))
