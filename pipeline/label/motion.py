"""Motion summaries: a few numbers per frame pair (computed on the model's device) and per clip (on the host).

Per pair, :func:`pair_motion` reduces the dense labels (forward flow P×2×H×W in pixels, occlusion P×H×W,
confidence P×H×W) to the P-length float32 columns of :data:`SUMMARY_COLUMNS`, in pure torch (CPU, CUDA or
the meta device; batched over pairs, no host synchronisation). Per clip, :func:`aggregate` reduces those
columns over the pairs of one clip to the row of :data:`CLIP_SUMMARY_COLUMNS` (numpy).

Definitions of every column: README, "Motion summaries"; in full (the fit's weights, ridge, sample grid and
quantile rule): docs/output.md, "Motion summaries". The per-clip :func:`aggregate` and
:data:`CLIP_SUMMARY_COLUMNS` live in :mod:`pipeline.write.clip_summary` (the writer builds the clip table
without torch) and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pipeline.schema import MOTION_COLUMNS
from pipeline.write.clip_summary import CLIP_SUMMARY_COLUMNS, aggregate  # noqa: F401  (re-exported)

# The per-pair columns are part of the output contract (pipeline.schema); the per-clip aggregation is the
# writer's (pipeline.write.clip_summary), re-exported here beside the per-pair statistics it reduces.
SUMMARY_COLUMNS = MOTION_COLUMNS

# The consistency factor of the median absolute deviation for Gaussian noise.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class MotionParams:
    """min_confidence: lowest confidence of a valid pixel; max_samples: size bound of the sample grid;
    iterations: IRLS steps after the median start; tukey_c: Tukey constant in units of σ (4.685: 95 %
    efficiency on Gaussian noise); min_sigma_px: floor of σ, so an exact fit still keeps nearby pixels;
    ridge: relative ridge on the linear terms of the normal equations."""

    min_confidence: float = 0.5
    max_samples: int = 8192
    iterations: int = 5
    tukey_c: float = 4.685
    min_sigma_px: float = 0.1
    ridge: float = 1e-6

    def __post_init__(self) -> None:
        for name, ok, expected in (
            ("min_confidence", 0 <= self.min_confidence <= 1, "within [0, 1]"),
            ("max_samples", self.max_samples >= 1, "≥ 1"),
            ("iterations", self.iterations >= 0, "≥ 0"),
            ("tukey_c", self.tukey_c > 0, "> 0"),
            ("min_sigma_px", self.min_sigma_px > 0, "> 0"),
            ("ridge", self.ridge >= 0, "≥ 0"),
        ):
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)}")


def sample_stride(height: int, width: int, max_samples: int) -> int:
    """The smallest s ≥ 1 for which the sample grid (rows and columns s // 2, s // 2 + s, …) has at most
    ``max_samples`` pixels."""
    if max_samples < 1 or height < 1 or width < 1:
        raise ValueError(f"expected max_samples, height and width ≥ 1, got {max_samples}, {height}, {width}")
    stride = max(1, math.isqrt(height * width // max_samples))  # a lower bound: start there, not at 1
    while len(range(stride // 2, height, stride)) * len(range(stride // 2, width, stride)) > max_samples:
        stride += 1
    return stride


def pair_motion(
    flow: torch.Tensor, occlusion: torch.Tensor, confidence: torch.Tensor, params: MotionParams = MotionParams()
) -> dict[str, torch.Tensor]:
    """Per-pair motion summaries (see the module docstring for every definition).

    flow: P×2×H×W forward flow (pixels, u right, v down; any float dtype, computed in float32);
    occlusion: P×H×W bool (or integer, nonzero = occluded); confidence: P×H×W in (0, 1].
    Returns {name: P float32 tensor on flow's device} in :data:`SUMMARY_COLUMNS` order. Pure tensor code:
    no host synchronisation, so it queues on a CUDA stream beside the model, and runs on the meta device.
    """
    _check_inputs(flow, occlusion, confidence)
    h, w = flow.shape[2:]
    flow, confidence = flow.float(), confidence.float()
    occluded = occlusion if occlusion.dtype == torch.bool else occlusion != 0
    # Bytes summed as int32: half the time of a bool sum, which widens every element to int64.
    occluded_count = occluded.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
    stride = sample_stride(h, w, params.max_samples)
    on_grid = slice(stride // 2, None, stride)
    grid_flow = flow[:, :, on_grid, on_grid].flatten(2)
    valid = ~occluded[:, on_grid, on_grid] & (confidence[:, on_grid, on_grid] >= params.min_confidence)
    valid = valid.flatten(1) & torch.isfinite(grid_flow).all(1)
    design = _design(h, w, stride, flow.device)
    stats = {
        "flow_mean": _length(flow).mean((1, 2)),
        **_rank_quantiles(_length(grid_flow), {"flow_median": 0.5, "flow_p95": 0.95}),
        "occluded_fraction": occluded_count / (h * w),
        "confidence_mean": confidence.mean((1, 2)),
        **_camera_stats(grid_flow, valid, design, params),
    }
    return {name: stats[name].float() for name in SUMMARY_COLUMNS}


def _check_inputs(flow: torch.Tensor, occlusion: torch.Tensor, confidence: torch.Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2 or not flow.is_floating_point() or min(flow.shape[2:]) < 1:
        raise ValueError(f"flow: expected a float tensor P×2×H×W with H, W ≥ 1, got {flow.dtype} {tuple(flow.shape)}")
    expected = (flow.shape[0], *flow.shape[2:])
    for name, value in (("occlusion", occlusion), ("confidence", confidence)):
        if tuple(value.shape) != expected:
            raise ValueError(f"{name}: expected shape P×H×W = {expected} like flow, got {tuple(value.shape)}")
        if value.device != flow.device:
            raise ValueError(f"{name}: expected it on flow's device {flow.device}, got {value.device}")


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """|·| over dim 1 (of size 2) of P×2×…: hypot of the two planes, some 50× faster on CPU than
    linalg.vector_norm(dim=1), whose reduction strides across the planes."""
    return torch.hypot(vectors[:, 0], vectors[:, 1])


def _rank_quantiles(values: torch.Tensor, qs: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """{name: P} nearest-rank quantiles of the rows of ``values`` (P×n): the ⌈q·n⌉-th smallest value.
    kthvalue is a selection, several times cheaper than the sort behind torch.quantile."""
    n = values.shape[1]
    return {name: values.kthvalue(max(1, math.ceil(q * n)), dim=1).values for name, q in qs.items()}


def _masked_rank_quantile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """P nearest-rank q-quantiles of the valid entries of each row of ``values`` (P×n; −inf where a row has
    none). The rows have different counts, so no single kthvalue: the top n − ⌈q·n⌉ + 2 values of each row
    (a partial sort, cheaper than a full one for q near 1) hold every row's answer, picked by its own rank."""
    n = values.shape[1]
    top = min(n, n - math.ceil(q * n) + 2)  # c − ⌈q·c⌉ grows with the count c ≤ n; +1 for rounding
    largest = torch.where(valid, values, -math.inf).topk(top, dim=1).values  # descending
    count = valid.sum(1, keepdim=True)
    rank = (count.double() * q).ceil_().long().clamp_(min=1)  # 1-based, ascending, among the valid
    return largest.gather(1, (count - rank).clamp_(0, top - 1)).squeeze(1)


class _Design(NamedTuple):
    """The sample grid's coordinates relative to the image centre, divided by half the longer side (so
    within [−1, 1], for well-conditioned normal equations): x, y (n each); basis: n×6 columns
    [1, x, y, x², xy, y²], whose weighted sums are the normal equations; half_side in pixels."""

    x: torch.Tensor
    y: torch.Tensor
    basis: torch.Tensor
    half_side: float


def _design(height: int, width: int, stride: int, device: torch.device) -> _Design:
    half_side = max(height, width) / 2
    ys = torch.arange(stride // 2, height, stride, device=device, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(stride // 2, width, stride, device=device, dtype=torch.float32) - (width - 1) / 2
    gy, gx = torch.meshgrid(ys / half_side, xs / half_side, indexing="ij")
    x, y = gx.reshape(-1), gy.reshape(-1)
    return _Design(x, y, torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], 1), half_side)


def _camera_stats(
    grid_flow: torch.Tensor, valid: torch.Tensor, design: _Design, params: MotionParams
) -> dict[str, torch.Tensor]:
    """The camera_* and residual_* columns from the grid flow (P×2×n) and its valid pixels (P×n)."""
    flow = torch.where(valid[:, None], grid_flow, 0)  # finite everywhere: masked products stay finite
    coeffs, squared = _fit_camera(flow, valid, design, params)
    residual = squared.sqrt()
    cutoff = params.tukey_c * _robust_sigma(squared, valid, params.min_sigma_px)
    count = valid.sum(1)
    linear = coeffs[..., 1:] / design.half_side  # A − I
    a11, a12, a21, a22 = 1 + linear[:, 0, 0], linear[:, 0, 1], linear[:, 1, 0], 1 + linear[:, 1, 1]
    # The closest similarity [[a, −b], [b, a]]. Its hypot and atan2 run in float64: CPU kernels take a
    # vector path for most elements and a scalar one for the rest, which can differ in the last float32 bit.
    a, b = ((a11 + a22) / 2).double(), ((a21 - a12) / 2).double()
    columns = {
        "camera_tx": coeffs[:, 0, 0],
        "camera_ty": coeffs[:, 1, 0],
        "camera_a11": a11,
        "camera_a12": a12,
        "camera_a21": a21,
        "camera_a22": a22,
        "camera_scale": torch.hypot(a, b),
        "camera_rotation": torch.atan2(b, a),
        "camera_flow_mean": _length(_camera_flow(coeffs, design)).mean(1),
        "camera_inlier_fraction": (valid & (residual < cutoff[:, None])).sum(1) / count,
        "residual_mean": (residual * valid).sum(1) / count,
        "residual_p95": _masked_rank_quantile(residual, valid, 0.95),
    }
    return {name: torch.where(count > 0, value, math.nan) for name, value in columns.items()}


def _fit_camera(
    flow: torch.Tensor, valid: torch.Tensor, design: _Design, params: MotionParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust affine fit of the grid flow (P×2×n, finite) over its valid pixels (P×n bool).

    Returns (coefficients P×2×3: rows u and v over [1, x, y]; squared residuals |flow − camera flow|², P×n).
    The median start makes the first weights robust already, so a least-squares start cannot drag the
    fit towards a moving object. Squared residuals throughout: the Tukey weights need no square root.
    """
    start = torch.nanmedian(torch.where(valid[:, None], flow, math.nan), dim=2).values.nan_to_num_(0.0)
    coeffs = torch.cat([start[..., None], flow.new_zeros(flow.shape[0], 2, 2)], dim=2)
    for _ in range(params.iterations):  # a fixed count: stopping on convergence would need a host sync
        squared = _squared_residual(flow, coeffs, design)
        cutoff = params.tukey_c * _robust_sigma(squared, valid, params.min_sigma_px)
        weights = (1 - squared / cutoff.square()[:, None]).clamp_min_(0).square_().mul_(valid)
        coeffs = _weighted_solve(flow, weights, design, params.ridge)
    return coeffs, _squared_residual(flow, coeffs, design)


def _camera_flow(coeffs: torch.Tensor, design: _Design) -> torch.Tensor:
    """P×2×n camera flow of coefficients P×2×3 on the grid (elementwise: cheaper than a matmul of depth 3)."""
    return torch.addcmul(torch.addcmul(coeffs[..., :1], coeffs[..., 1:2], design.x), coeffs[..., 2:], design.y)


def _squared_residual(flow: torch.Tensor, coeffs: torch.Tensor, design: _Design) -> torch.Tensor:
    difference = flow - _camera_flow(coeffs, design)
    return difference[:, 0].square().add_(difference[:, 1].square())


def _robust_sigma(squared: torch.Tensor, valid: torch.Tensor, floor: float) -> torch.Tensor:
    """P scale estimates from squared residuals: 1.4826 × median residual over the valid pixels, ≥ ``floor`` px."""
    median = torch.nanmedian(torch.where(valid, squared, math.nan), dim=1).values
    return (median.sqrt() * _MAD_TO_SIGMA).nan_to_num_(floor).clamp_min_(floor)


def _weighted_solve(flow: torch.Tensor, weights: torch.Tensor, design: _Design, ridge: float) -> torch.Tensor:
    """Weighted least squares of flow (P×2×n) on [1, x, y], weights P×n → coefficients P×2×3.

    Both flow components share the weights, so the 6×6 normal equations of the affine model are two 3×3
    systems with one symmetric matrix M, built from six weighted moments and solved in float64 by its
    adjugate (closed form: linalg.solve's LU reads a scalar back, a host sync on a GPU). The ridge (relative
    to the weight sum, on x and y only) keeps a degenerate layout, e.g. all valid pixels on one row, solvable
    and pulls its undetermined deformation to zero rather than the translation; the 1e-12 keeps an all-zero
    system (no valid pixel) solvable too.
    """
    p = flow.shape[0]
    # The sums are taken in float64: BLAS picks its float32 kernel by the batch's shape, so float32 moments
    # (and every label fitted from them) would change in the 7th digit with how the pairs were batched.
    basis = design.basis.double()
    m0, m1, m2, m3, m4, m5 = (weights.double() @ basis).unbind(1)  # Σw·[1, x, y, x², xy, y²]
    lam = ridge * m0 + 1e-12
    # Stacked, not indexed by a constant tensor: building one on a GPU would be a host-to-device copy.
    normal = torch.stack([m0 + 1e-12, m1, m2, m1, m3 + lam, m4, m2, m4, m5 + lam], 1).view(p, 3, 3)
    rows = normal.unbind(1)
    # M is symmetric: its adjugate's rows are cross products of its rows, its determinant a triple product.
    adjugate = torch.stack(
        [
            torch.linalg.cross(rows[1], rows[2]),
            torch.linalg.cross(rows[2], rows[0]),
            torch.linalg.cross(rows[0], rows[1]),
        ],
        1,
    )
    determinant = (rows[0] * adjugate[:, 0]).sum(1)
    rhs = ((flow * weights[:, None]).flatten(0, 1).double() @ basis[:, :3]).view(p, 2, 3)
    # M⁻¹ is symmetric too, so each row of rhs times it gives that component's coefficients.
    return (rhs @ adjugate / determinant[:, None, None]).float()


def summary_arrays(stats: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The output of :func:`pair_motion` as numpy float32 arrays, moved to the host in one transfer."""
    stacked = torch.stack([stats[name] for name in SUMMARY_COLUMNS]).cpu().numpy()
    return {name: stacked[i] for i, name in enumerate(SUMMARY_COLUMNS)}
