"""CSR-UNet: a U-Net of CSR blocks with spatial attention (BMC Med Imaging 2024;24:285).

The paper does not publish depth, widths or where the attention sits; the defaults here are
a common reading of the paper (base width 64, SE ratio 16, four encoder
levels, spatial attention at the bottleneck). Every choice is a constructor argument.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .blocks import ResidualSEBlock, SpatialAttention

logger = logging.getLogger(__name__)

#: Window presets (level, width) in HU used as input channels; see ``preprocess.window``.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}


@dataclass(frozen=True)
class CSRUNetConfig:
    """Architecture and input description; saved with every checkpoint.

    ``in_channels`` of the network is ``len(windows) * (2 * context_slices + 1)``: every
    window of the centre slice and of ``context_slices`` neighbours on each side (2.5D).
    """

    base_width: int = 64
    depth: int = 4
    se_ratio: int = 16
    num_classes: int = 3
    attention_kernel: int = 7
    bottleneck_attention: bool = True
    skip_attention: bool = False
    windows: tuple[str, ...] = ("brain",)
    context_slices: int = 0
    input_size: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.windows) * (2 * self.context_slices + 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["windows"] = list(self.windows)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CSRUNetConfig":
        d = dict(d)
        d["windows"] = tuple(d.get("windows", ("brain",)))
        return cls(**d)


class CSRUNet(nn.Module):
    """U-Net whose every stage is a CSR block, with CBAM spatial attention.

    ::

        x ─▶ CSR(w) ──────────────────────────────[SA]──────────────────▶ cat ─▶ CSR(w) ─▶ 1×1 ─▶ logits
              └─pool─▶ CSR(2w) ─────────────[SA]──────────▶ cat ─▶ CSR(2w) ─up┘
                        └─pool─▶ ...  ─▶ CSR(2^depth w) ─▶ SA ─up┘  (bottleneck)

    Parameters
    ----------
    in_channels:
        Input channels (windows x slices).
    num_classes:
        Output classes (background, SDH, EDH).
    base_width:
        Width of the first level; level ``i`` has ``base_width * 2**i`` channels and the
        bottleneck ``base_width * 2**depth``.
    depth:
        Number of encoder levels (each followed by a 2x2 max-pool).
    se_ratio:
        Squeeze-and-excitation reduction ratio ``r``.
    attention_kernel:
        Kernel size of the spatial attention convolution.
    bottleneck_attention, skip_attention:
        Where spatial attention is applied.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        base_width: int = 64,
        depth: int = 4,
        se_ratio: int = 16,
        attention_kernel: int = 7,
        bottleneck_attention: bool = True,
        skip_attention: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("base_width", base_width), ("depth", depth)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        prev = in_channels
        for w in widths[:-1]:
            self.encoders.append(ResidualSEBlock(prev, w, se_ratio))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ResidualSEBlock(widths[-2], widths[-1], se_ratio)
        self.bottleneck_attention: nn.Module = (
            SpatialAttention(attention_kernel) if bottleneck_attention else nn.Identity()
        )
        self.skip_attention = nn.ModuleList(
            SpatialAttention(attention_kernel) if skip_attention else nn.Identity()
            for _ in widths[:-1]
        )
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upsamples.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(ResidualSEBlock(2 * widths[i], widths[i], se_ratio))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @classmethod
    def from_config(cls, cfg: CSRUNetConfig) -> "CSRUNet":
        """Build the network described by ``cfg``."""
        return cls(cfg.in_channels, cfg.num_classes, cfg.base_width, cfg.depth, cfg.se_ratio,
                   cfg.attention_kernel, cfg.bottleneck_attention, cfg.skip_attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> logits (N, num_classes, H, W); H and W divisible by 2**depth."""
        h, w = x.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"input H and W must be divisible by {2**self.depth}; got {h}x{w}")
        skips = []
        for enc, att in zip(self.encoders, self.skip_attention):
            x = enc(x)
            skips.append(att(x))
            x = self.pool(x)
        x = self.bottleneck_attention(self.bottleneck(x))
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
