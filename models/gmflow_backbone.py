"""GMFlow's CNN feature encoder: a residual CNN at 1/8 (or 1/4 + coarser) resolution.

Xu et al., "GMFlow: Learning Optical Flow via Global Matching", CVPR 2022, Sec. 3.2.
Module and parameter names follow haofeixu/gmflow (``gmflow/backbone.py``) so that
official state_dicts load unchanged; instance norms carry no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Widths of the three residual stages; fixed in the official model (only the output width varies).
STAGE_CHANNELS = (64, 96, 128)


class ResidualBlock(nn.Module):
    """Two 3×3 convs with instance norm; a strided 1×1 conv on the shortcut when the shape changes."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.InstanceNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class MultiStrideConv(nn.Module):
    """One 3×3 conv weight applied at several strides: the features of each coarser matching scale.

    The official model borrows this from TridentNet (``trident_conv``); sharing the weight
    keeps the scales' features in one embedding space.
    """

    def __init__(self, *, channels: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = strides
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.conv2d(x, self.weight, stride=s, padding=1) for s in self.strides]


class CNNEncoder(nn.Module):
    """B×3×H×W normalized image → list of B×C×h×w features, coarse to fine.

    One scale: a single 1/8-resolution map. ``num_scales`` > 1: the last stage keeps 1/4
    resolution and :class:`MultiStrideConv` derives 1/4, 1/8, … maps from it.
    """

    def __init__(self, *, output_dim: int, num_scales: int):
        super().__init__()
        c1, c2, c3 = STAGE_CHANNELS
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(c1)
        self.layer1 = self._stage(c1, c1, stride=1)  # 1/2
        self.layer2 = self._stage(c1, c2, stride=2)  # 1/4
        self.layer3 = self._stage(c2, c3, stride=2 if num_scales == 1 else 1)  # 1/8 or 1/4
        self.conv2 = nn.Conv2d(c3, output_dim, 1)
        self.trident_conv = None
        if num_scales > 1:
            strides = tuple(2**i for i in range(num_scales))
            self.trident_conv = MultiStrideConv(channels=output_dim, strides=strides)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, *, stride: int) -> nn.Sequential:
        return nn.Sequential(
            ResidualBlock(in_channels=in_channels, out_channels=out_channels, stride=stride),
            ResidualBlock(in_channels=out_channels, out_channels=out_channels),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        if self.trident_conv is None:
            return [x]
        return self.trident_conv(x)[::-1]
