"""SEA-RAFT's building blocks (Wang, Lipson & Deng, ECCV 2024, arXiv:2405.14793), with the
official parameter names so that the released checkpoints load as they are.

* :class:`ResNetEncoder`: a ResNet-18/34 trunk at 1/8 resolution plus a 1×1 projection; the
  feature encoder (``fnet``) reads one frame, the context encoder (``cnet``) both frames stacked
  along channels. Its keys follow torchvision's ResNet (``conv1``, ``bn1``, ``layerN.i.conv1``,
  ``downsample.0/1``) because the official code initializes it from torchvision's ImageNet weights.
* :class:`UpdateBlock`: RAFT's motion encoder followed by ConvNeXt blocks instead of a GRU.
* :func:`convex_upsample`: RAFT's learned 3×3 convex upsampling, here of flow and uncertainty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLE = 8  # the encoders' stride: flow is estimated on the 1/8 grid


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN-ReLU layers with a (projected) skip connection: torchvision's ResNet block,
    with biases on the convolutions as in the official code."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            # The official block registers this norm twice (as bn3 and inside downsample), so its
            # .pth files carry both keys; the alias lets them load strictly.
            self.bn3 = nn.BatchNorm2d(planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class ResNetEncoder(nn.Module):
    """B×``in_dim``×H×W → B×``out_dim``×H/8×W/8 (the official ``ResNetFPN``).

    ``blocks``: blocks per stage, (2, 2, 2) for ResNet-18, (3, 4, 6) for ResNet-34; ``widths``: the
    three stages' channels; the stem (``initial_dim`` channels) and stages 2 and 3 halve the size.
    """

    def __init__(
        self, *, in_dim: int, out_dim: int, initial_dim: int, widths: tuple[int, int, int], blocks: tuple[int, int, int]
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, initial_dim, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(initial_dim)
        self.relu = nn.ReLU(inplace=True)
        in_planes = initial_dim
        for i, (planes, count, stride) in enumerate(zip(widths, blocks, (1, 2, 2)), start=1):
            layer = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(count - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layer))
            in_planes = planes
        # PyTorch's default initialization: the official code overwrites its own (kaiming, fan_out) with
        # torchvision's ImageNet weights before training, and the kaiming one, kept through 16–34 layers
        # with eval-mode BatchNorm, makes random-init networks (tests, speed runs) blow up to flows of
        # hundreds of pixels on a 64-pixel frame.
        self.final_conv = nn.Conv2d(in_planes, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.device.type == "cpu" and x.shape[0] > 1:
            # One image at a time on CPU: oneDNN's convolutions over a batch of full frames ran 15–40 %
            # slower there (ResNet-18, 432×1024, batch 2 and 4, one or two threads); a GPU keeps the batch.
            # Eval-mode BatchNorm does not mix images (training mode does: kept batched), so only float
            # rounding can differ.
            return torch.cat([self._trunk(image[None]) for image in x])
        return self._trunk(x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.final_conv(self.layer3(self.layer2(self.layer1(x))))


class ConvNextBlock(nn.Module):
    """ConvNeXt block (7×7 depthwise conv, LayerNorm, 4× MLP, layer scale ``gamma``) on a residual,
    then a 1×1 conv from ``dim`` to ``out_dim`` channels: SEA-RAFT's replacement for RAFT's GRU."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * out_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * out_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.final = nn.Conv2d(dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for LayerNorm and the MLP
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return self.final(x + y.permute(0, 3, 1, 2))


class MotionEncoder(nn.Module):
    """Correlation features and current flow → ``dim`` motion channels, the last two being the flow."""

    def __init__(self, *, corr_channels: int, dim: int):
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 2 * dim, kernel_size=1)
        self.convc2 = nn.Conv2d(2 * dim, dim + dim // 2, kernel_size=3, padding=1)
        self.convf1 = nn.Conv2d(2, dim, kernel_size=7, padding=3)
        self.convf2 = nn.Conv2d(dim, dim // 2, kernel_size=3, padding=1)
        self.conv = nn.Conv2d(2 * dim, dim - 2, kernel_size=3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


class UpdateBlock(nn.Module):
    """One refinement step: (hidden ``net``, context, correlation, flow) → new hidden state."""

    def __init__(self, *, corr_channels: int, dim: int, num_blocks: int):
        super().__init__()
        self.encoder = MotionEncoder(corr_channels=corr_channels, dim=dim)
        self.refine = nn.ModuleList(ConvNextBlock(3 * dim, dim) for _ in range(num_blocks))

    def forward(self, net: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([context, self.encoder(flow, corr)], dim=1)
        for block in self.refine:
            net = block(torch.cat([net, inp], dim=1))
        return net


def convex_upsample(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B×C×h×w on the 1/8 grid, B×(9·8·8)×h×w logits → B×C×8h×8w: each full-resolution value is a
    convex combination of its 3×3 coarse neighbours (zero outside the map, as the official unfold)."""
    b, c, h, w = x.shape
    k = DOWNSAMPLE
    weights = torch.softmax(mask.view(b, 1, 9, k, k, h, w), dim=2)
    neighbours = F.unfold(x, kernel_size=3, padding=1).view(b, c, 9, 1, 1, h, w)
    up = torch.sum(weights * neighbours, dim=2)  # B×C×k×k×h×w
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, c, k * h, k * w)
