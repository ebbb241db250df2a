"""Occlusion and confidence from forward-backward consistency (UnFlow, Meister et al., AAAI 2018).

With forward flow F, backward flow B and B̃ = B sampled bilinearly at x + F(x):
  ρ(x) = |F + B̃|² / (α (|F|² + |B̃|²) + β),    α = 0.01, β = 0.5
  occlusion = ρ > 1, or x + F(x) outside the frame;   confidence = exp(−ρ) ∈ (0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ConsistencyParams:
    alpha: float = 0.01
    beta: float = 0.5


def warp(field: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``field`` (B×C×H×W) at x + flow(x) (B×2×H×W, pixels), bilinear, border-clamped.

    Returns (warped B×C×H×W, inside B×H×W bool: the target lies within the frame, i.e.
    0 ≤ x + u ≤ W − 1 and 0 ≤ y + v ≤ H − 1).
    """
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    # align_corners=True maps -1 and +1 to the centres of the first and last pixels.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def consistency(forward: torch.Tensor, backward: torch.Tensor,
                params: ConsistencyParams = ConsistencyParams()) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward flow (B×2×H×W float, pixels) → (occlusion B×H×W bool, confidence B×H×W float).

    Computed in float32 whatever the input dtype.
    """
    if forward.shape != backward.shape or forward.ndim != 4 or forward.shape[1] != 2:
        raise ValueError(f"expected forward and backward flow of one shape B×2×H×W, got "
                         f"{tuple(forward.shape)} and {tuple(backward.shape)}")
    fwd, bwd = forward.float(), backward.float()
    bwd_warped, inside = warp(bwd, fwd)
    sq_diff = (fwd + bwd_warped).square().sum(1)
    sq_norms = fwd.square().sum(1) + bwd_warped.square().sum(1)
    rho = sq_diff / (params.alpha * sq_norms + params.beta)
    occlusion = (rho > 1) | ~inside
    return occlusion, torch.exp(-rho)
