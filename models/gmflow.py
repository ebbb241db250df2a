"""GMFlow (Xu et al., "GMFlow: Learning Optical Flow via Global Matching", CVPR 2022).

Flow as global matching: CNN features of both frames are enhanced by a transformer, a
softmax over all-pairs feature correlations gives the matching distribution whose expected
position is the flow, and self-attention on frame-0 features propagates it into occluded
and untextured regions. ``gmflow_refine`` repeats the same steps once at 1/4 resolution,
with local (radius 4) matching of the residual flow. Official code: haofeixu/gmflow; module
and parameter names follow it, so the released checkpoints load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError
from .contract import FlowModel, PairFlows, frames_used
from .gmflow_backbone import CNNEncoder
from .gmflow_transformer import FeatureFlowAttention, FeatureTransformer, add_window_position, local_windows
from .registry import C_T, C_T_SKHT, C_T_SKHT_K, Checkpoint, ModelSpec, StateDict

# The official model normalizes 0–255 RGB with the ImageNet statistics (gmflow/utils.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Score for window positions outside the image in local matching: the official value.
OUTSIDE_SCORE = -1e9


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """B×3×H×W RGB in [0, 255] → ImageNet-normalized B×3×H×W."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image / 255.0 - mean) / std


def coords_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """2×H×W pixel coordinates, channel 0 = x, channel 1 = y."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack((x, y))


def global_matching(feature0: torch.Tensor, feature1: torch.Tensor) -> torch.Tensor:
    """Flow from softmax matching over all positions: B×C×H×W features → B×2×H×W flow in feature pixels.

    softmax(F0 F1ᵀ/√C) applied to the grid of frame-1 coordinates is an attention with the
    coordinates as values, so the H·W × H·W correlation need not be materialized.
    """
    b, _, h, w = feature0.shape
    grid = coords_grid(h, w, device=feature0.device, dtype=feature0.dtype).flatten(1).t()  # L×2
    query = feature0.flatten(2).transpose(1, 2)
    key = feature1.flatten(2).transpose(1, 2)
    match = F.scaled_dot_product_attention(query, key, grid.expand(b, -1, -1).contiguous())
    return (match - grid).transpose(1, 2).reshape(b, 2, h, w)


def local_matching(feature0: torch.Tensor, feature1: torch.Tensor, radius: int) -> torch.Tensor:
    """Flow from softmax matching in a (2r+1)² window: B×C×H×W features → B×2×H×W flow in feature pixels."""
    _, c, h, w = feature0.shape
    device = feature0.device
    scores = torch.stack([(feature0 * f).sum(1) for f in local_windows(feature1, radius)], dim=1) / c**0.5
    offsets = torch.arange(-radius, radius + 1, dtype=feature0.dtype, device=device)
    dy, dx = (t.reshape(-1, 1, 1) for t in torch.meshgrid(offsets, offsets, indexing="ij"))  # K×1×1
    ys = torch.arange(h, device=device).view(1, h, 1) + dy
    xs = torch.arange(w, device=device).view(1, 1, w) + dx
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # K×H×W
    prob = scores.masked_fill(~inside, OUTSIDE_SCORE).softmax(dim=1)  # B×K×H×W
    return torch.stack(((prob * dx).sum(1), (prob * dy).sum(1)), dim=1)


def warp(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample B×C×H×W ``feature`` at x + flow(x) (bilinear, zero outside) → B×C×H×W."""
    _, _, h, w = feature.shape
    coords = coords_grid(h, w, device=flow.device, dtype=flow.dtype) + flow  # B×2×H×W
    grid = torch.stack((2 * coords[:, 0] / (w - 1) - 1, 2 * coords[:, 1] / (h - 1) - 1), dim=-1)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """B×2×H×W flow, B×(9·f²)×H×W mask logits → B×2×(f·H)×(f·W) flow, each fine pixel a convex
    combination of its coarse 3×3 neighbourhood (RAFT, Teed & Deng 2020)."""
    b, _, h, w = flow.shape
    weights = mask.view(b, 1, 9, factor, factor, h, w).softmax(dim=2)
    neighbours = F.unfold(factor * flow, 3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (weights * neighbours).sum(2)  # B×2×f×f×H×W
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, factor * h, factor * w)


def _float32(x: torch.Tensor):
    # Flow, coordinates and matching probabilities need float32: bf16 keeps 8 mantissa bits,
    # i.e. ±0.5 px at 100 px. Only the CNN and the transformer run under autocast.
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (from autocast) → float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def both_directions(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) → ([a; b], [b; a]) along the batch: the forward pairs, then the swapped ones."""
    return torch.cat((a, b)), torch.cat((b, a))


def mask_head(in_channels: int, factor: int) -> nn.Sequential:
    """B×in_channels×H×W → B×(9·f²)×H×W logits of the convex-upsampling weights (:func:`convex_upsample`)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, factor**2 * 9, 1),
    )


@dataclass(frozen=True)
class MatchingScale:
    """Settings of one coarse-to-fine scale: window splits of the transformer attention,
    matching radius (-1 = global) and propagation radius (-1 = global)."""

    attn_splits: int
    corr_radius: int
    prop_radius: int


class FinestScale(NamedTuple):
    """What the coarse-to-fine matching leaves at the finest scale, per pair (and direction):
    the flow B×2×h×w in that scale's pixels, frame 0's transformer features B×C×h×w, and both
    frames' CNN features B×C×h×w as the backbone gave them (frame 1's not warped)."""

    flow: torch.Tensor
    feature0: torch.Tensor
    cnn0: torch.Tensor
    cnn1: torch.Tensor


class GMFlow(FlowModel):
    """GMFlow; ``num_scales=1`` is the base model (1/8 resolution), 2 adds the 1/4 refinement.

    Hyperparameters keep the official command-line names. ``padding_factor`` is the multiple
    the input is padded to (``pad_multiple``); ``pad_mode`` "kitti" pads the height at the bottom.
    """

    native_bidirectional = True

    def __init__(
        self,
        *,
        num_scales: int = 1,
        upsample_factor: int = 8,
        feature_channels: int = 128,
        num_transformer_layers: int = 6,
        ffn_dim_expansion: int = 4,
        attn_splits_list: Sequence[int] = (2,),
        corr_radius_list: Sequence[int] = (-1,),
        prop_radius_list: Sequence[int] = (-1,),
        padding_factor: int = 16,
        pad_mode: str = "sintel",
    ):
        super().__init__()
        self.scales = _check_config(
            num_scales=num_scales,
            upsample_factor=upsample_factor,
            feature_channels=feature_channels,
            per_scale={
                "attn_splits_list": attn_splits_list,
                "corr_radius_list": corr_radius_list,
                "prop_radius_list": prop_radius_list,
            },
            padding_factor=padding_factor,
            pad_mode=pad_mode,
        )
        self.upsample_factor = upsample_factor
        self.pad_multiple = padding_factor
        self.pad_mode = pad_mode

        self.backbone = CNNEncoder(output_dim=feature_channels, num_scales=num_scales)
        self.transformer = FeatureTransformer(
            num_layers=num_transformer_layers, d_model=feature_channels, ffn_dim_expansion=ffn_dim_expansion
        )
        self.feature_flow_attn = FeatureFlowAttention(in_channels=feature_channels)
        self.upsampler = mask_head(2 + feature_channels, upsample_factor)

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """Padded B×3×H×W float RGB in [0, 255] → B×2×H×W float32 flow in pixels."""
        b = image0.shape[0]
        features = self.backbone(normalize_image(torch.cat((image0, image1))))  # coarse to fine
        return self._match([f[:b] for f in features], [f[b:] for f in features], bidirectional=False)

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward B×2×H×W flow; features are extracted (and, at the first scale,
        transformed) once for both directions, as the official ``pred_bidir_flow``."""
        index = torch.arange(image0.shape[0], device=image0.device)
        flows = self.predict_pairs(torch.cat((image0, image1)), index, index + image0.shape[0])
        return flows.forward, flows.backward

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        """Both flows of P pairs of padded N×3×H×W frames: the CNN backbone sees each frame once (instance
        norm is per image, so a frame's features do not depend on its batch); the transformer and the
        matching run per pair, both directions at once."""
        frames, (index0, index1) = frames_used(frames, index0, index1)
        features = self.backbone(normalize_image(frames))  # coarse to fine
        flow = self._match([f[index0] for f in features], [f[index1] for f in features], bidirectional=True)
        return PairFlows(flow[: index0.numel()], flow[index0.numel() :])

    def _match(
        self, features0: list[torch.Tensor], features1: list[torch.Tensor], *, bidirectional: bool
    ) -> torch.Tensor:
        """Backbone features of P pairs (per scale, coarse to fine) → P×2×H×W flow, or 2P×2×H×W
        (forward pairs, then backward) when ``bidirectional``."""
        return self._upsample(self._match_scales(features0, features1, bidirectional=bidirectional))

    def _match_scales(
        self, features0: list[torch.Tensor], features1: list[torch.Tensor], *, bidirectional: bool
    ) -> FinestScale:
        """Backbone features of P pairs (per scale, coarse to fine) → the finest scale's flow and
        features, of the P pairs, or of 2P (forward pairs, then backward) when ``bidirectional``."""
        flow = None
        for scale, cnn0, cnn1 in zip(self.scales, features0, features1):
            if bidirectional and flow is not None:  # flow already holds both directions
                cnn0, cnn1 = both_directions(cnn0, cnn1)
            feature0, feature1 = cnn0, cnn1
            if flow is not None:
                with _float32(flow):
                    flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2
                    feature1 = warp(_upcast(feature1), flow)
            feature0, feature1 = add_window_position(feature0, feature1, scale.attn_splits)
            feature0, feature1 = self.transformer(feature0, feature1, num_splits=scale.attn_splits)
            if bidirectional and flow is None:
                # The transformer is symmetric, so the swapped pair's features are its outputs swapped.
                feature0, feature1 = both_directions(feature0, feature1)
                cnn0, cnn1 = both_directions(cnn0, cnn1)
            with _float32(feature0):
                feature0, feature1 = _upcast(feature0), _upcast(feature1)
                if scale.corr_radius < 0:
                    delta = global_matching(feature0, feature1)
                else:
                    delta = local_matching(feature0, feature1, scale.corr_radius)
                flow = delta if flow is None else flow + delta
                flow = self.feature_flow_attn(feature0, flow, radius=scale.prop_radius)
        return FinestScale(flow, feature0, cnn0, cnn1)

    def _upsample(self, finest: FinestScale) -> torch.Tensor:
        """The finest scale's B×2×h×w flow → B×2×H×W, learned convex upsampling. The hook where
        :class:`models.unimatch.UniMatch` puts its regression refinement."""
        with _float32(finest.flow):
            mask = self.upsampler(torch.cat((finest.flow, finest.feature0), dim=1))
            return convex_upsample(finest.flow, mask, self.upsample_factor)


def _check_config(
    *,
    num_scales: int,
    upsample_factor: int,
    feature_channels: int,
    per_scale: Mapping[str, Sequence[int]],
    padding_factor: int,
    pad_mode: str,
) -> tuple[MatchingScale, ...]:
    """Validate the hyperparameters → the per-scale settings, coarse to fine."""
    if num_scales not in (1, 2, 3, 4):
        raise ValueError(f"num_scales: expected 1 to 4, got {num_scales!r}")
    # The finest features are at 1/8 with one scale, 1/4 with more (the backbone's last stage).
    stride = 8 if num_scales == 1 else 4
    if upsample_factor != stride:
        raise ValueError(f"upsample_factor: expected {stride} for num_scales={num_scales}, got {upsample_factor!r}")
    if feature_channels <= 0 or feature_channels % 2:
        raise ValueError(f"feature_channels: expected a positive even number, got {feature_channels!r}")
    if pad_mode not in ("sintel", "kitti"):
        raise ValueError(f"pad_mode: expected 'sintel' or 'kitti', got {pad_mode!r}")
    for name, values in per_scale.items():
        if len(values) != num_scales:
            raise ValueError(f"{name}: expected {num_scales} values (one per scale), got {list(values)!r}")
    for name in ("corr_radius_list", "prop_radius_list"):
        if any(r == 0 or r < -1 for r in per_scale[name]):
            raise ValueError(f"{name}: expected -1 (global) or positive radii, got {list(per_scale[name])!r}")
    splits = per_scale["attn_splits_list"]
    if any(k < 1 for k in splits):
        raise ValueError(f"attn_splits_list: expected splits >= 1, got {list(splits)!r}")
    for i, k in enumerate(splits):
        # The attention windows must tile each scale's feature map exactly.
        needed = stride * 2 ** (num_scales - 1 - i) * k
        if padding_factor % needed:
            raise ValueError(
                f"padding_factor {padding_factor!r}: expected a multiple of {needed} "
                f"(feature stride × attn_splits {k} at scale {i})"
            )
    lists = (per_scale["attn_splits_list"], per_scale["corr_radius_list"], per_scale["prop_radius_list"])
    return tuple(MatchingScale(int(k), int(c), int(p)) for k, c, p in zip(*lists))


def convert_official(checkpoint: StateDict) -> StateDict:
    """Official checkpoint → state_dict. haofeixu/gmflow saves ``{'model': state_dict}`` (training
    snapshots add 'optimizer', 'step', 'epoch', which inference ignores)."""
    state = checkpoint.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            "expected an official GMFlow checkpoint, a dict with a 'model' state_dict, "
            f"got top-level keys {sorted(checkpoint)[:8]}"
        )
    return dict(state)


GMFLOW_CONFIG = {
    "num_scales": 1,
    "upsample_factor": 8,
    "padding_factor": 16,
    "attn_splits_list": (2,),
    "corr_radius_list": (-1,),
    "prop_radius_list": (-1,),
}
GMFLOW_REFINE_CONFIG = {
    "num_scales": 2,
    "upsample_factor": 4,
    "padding_factor": 32,
    "attn_splits_list": (2, 8),
    "corr_radius_list": (-1, 4),
    "prop_radius_list": (-1, 1),
}

# All released files are in one zip (pretrained/<filename>) behind this link in the official README.
DRIVE_URL = "https://drive.google.com/file/d/1d5C5cgHIxWGsFR1vYs5XrQbbUiZl9TX2/view?usp=sharing"
# The official evaluate.py pads with InputPadder in 'sintel' mode everywhere except validate_kitti
# ('kitti' mode); FlyingChairs (384×512) needs no padding.
SINTEL_PADDING = {"pad_mode": "sintel"}
BENCHMARKS = {
    "sintel": SINTEL_PADDING,
    "things": SINTEL_PADDING,
    "chairs": SINTEL_PADDING,
    "kitti": {"pad_mode": "kitti"},
}
EVALUATE_SH = "haofeixu/gmflow scripts/evaluate.sh expected output (GMFlow paper Table 3)"
PAPER_TABLE4 = "GMFlow paper (Xu et al., CVPR 2022, arXiv:2111.13680) Table 4"
NO_SCORE = "no published score for this checkpoint"


def official_checkpoint(
    filename: str, trained_on: str, eval_config: Mapping, published: Mapping, source: str, *, url: str = DRIVE_URL
) -> Checkpoint:
    """Record of one released file (GMFlow's, or UniMatch's re-release of the same architectures)."""
    return Checkpoint(
        name=filename.removesuffix(".pth"),
        filename=filename,
        url=url,
        sha256=None,  # not published; the 8 hex digits in the file name are the authors' short hash
        trained_on=trained_on,
        eval_config=eval_config,
        benchmark_config=BENCHMARKS,
        published=published,
        source=source,
    )


SPECS = (
    ModelSpec(
        name="gmflow",
        builder=GMFlow,
        description="GMFlow (Xu et al., CVPR 2022): global matching at 1/8 resolution, no refinement",
        default_config=GMFLOW_CONFIG,
        convert=convert_official,
        checkpoints=(
            official_checkpoint("gmflow_chairs-1d776046.pth", "FlyingChairs (C)", GMFLOW_CONFIG, {}, NO_SCORE),
            official_checkpoint(
                "gmflow_things-e9887eda.pth",
                C_T,
                GMFLOW_CONFIG,
                {"things_test_clean_epe": 3.475, "sintel_train_clean_epe": 1.495, "sintel_train_final_epe": 2.955},
                EVALUATE_SH,
            ),
            official_checkpoint(
                "gmflow_sintel-0c07dcb3.pth",
                C_T_SKHT,
                GMFLOW_CONFIG,
                {},
                NO_SCORE + " (the paper's Sintel test scores are gmflow_refine's)",
            ),
            official_checkpoint(
                "gmflow_kitti-285701a8.pth",
                C_T_SKHT_K,
                GMFLOW_CONFIG,
                {},
                NO_SCORE + " (the paper's KITTI test score is gmflow_refine's)",
            ),
        ),
    ),
    ModelSpec(
        name="gmflow_refine",
        builder=GMFlow,
        description="GMFlow with one refinement (Xu et al., CVPR 2022): global matching at 1/8, local at 1/4",
        default_config=GMFLOW_REFINE_CONFIG,
        convert=convert_official,
        checkpoints=(
            official_checkpoint(
                "gmflow_with_refine_things-36579974.pth",
                C_T,
                GMFLOW_REFINE_CONFIG,
                {
                    "things_test_clean_epe": 2.804,
                    "sintel_train_clean_epe": 1.084,
                    "sintel_train_final_epe": 2.475,
                    "kitti_train_epe": 7.77,
                },
                EVALUATE_SH + "; KITTI: " + PAPER_TABLE4 + " (haofeixu/gmflow issue #24 names this checkpoint)",
            ),
            official_checkpoint(
                "gmflow_with_refine_sintel-3ed1cf48.pth",
                C_T_SKHT,
                GMFLOW_REFINE_CONFIG,
                {"sintel_test_clean_epe": 1.74, "sintel_test_final_epe": 2.90},
                PAPER_TABLE4,
            ),
            official_checkpoint(
                "gmflow_with_refine_kitti-8d3b9786.pth",
                C_T_SKHT_K,
                GMFLOW_REFINE_CONFIG,
                {"kitti_test_fl_all": 9.32},
                PAPER_TABLE4,
            ),
        ),
    ),
)
