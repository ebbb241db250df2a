"""UniMatch's flow models (Xu et al., "Unifying Flow, Stereo and Depth Estimation", TPAMI 2023).

The flow model of autonomousvision/unimatch is GMFlow (:mod:`models.gmflow`) with one addition:
``reg_refine`` replaces the learned convex upsampler by a few steps of local regression
refinement, RAFT's update block (:class:`models.raft.UpdateBlock`) fed with a 9×9 correlation
of the CNN features around the current flow. ``unimatch_scale1`` and ``unimatch_scale2`` are
the GMFlow architectures (their ``things`` files and scale2's ``sintel`` file are GMFlow's, re-released);
``unimatch_scale2_regrefine6`` is the paper's GMFlow+ (six refinement steps). :class:`UniMatch`
subclasses :class:`models.gmflow.GMFlow`: the backbone, the transformer, the coarse-to-fine matching
and the flow propagation are GMFlow's; the refinement takes the place of its upsampling.
Module and parameter names follow the official ``unimatch/unimatch.py``, so the released
``{'model': state_dict}`` checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gmflow import (
    EVALUATE_SH,
    GMFLOW_CONFIG,
    GMFLOW_REFINE_CONFIG,
    NO_SCORE,
    PAPER_TABLE4,
    FinestScale,
    GMFlow,
    _float32,
    _upcast,
    convert_official,
    convex_upsample,
    coords_grid,
    mask_head,
    official_checkpoint,
)
from .raft import FlowHead, MotionEncoder, SepConvGRU, UpdateBlock
from .registry import C_T, C_T_SKHT, Checkpoint, ModelSpec

# The refinement's correlation window radius and state widths: constants of the official model.
REFINE_RADIUS = 4
REFINE_HIDDEN = 128
REFINE_CONTEXT = 128
ATTN_TYPES = ("swin",)  # the flow models use Swin-style 2-D windows; the 1-D variants are for stereo


def local_correlation_with_flow(
    feature0: torch.Tensor, feature1: torch.Tensor, flow: torch.Tensor, radius: int
) -> torch.Tensor:
    """Correlation of B×C×H×W ``feature0`` with ``feature1`` sampled (bilinear, zero outside) in the
    (2r+1)² window around x + flow(x) → B×(2r+1)²×H×W, offsets row-major (dy outer, dx inner), / √C.

    The window offsets are whole pixels, so all samples of a pixel share the bilinear weights of
    x + flow(x), and a dot product is linear in the sampled vector: the correlation is the bilinear
    interpolation of the dot products with the (2r+2)² whole-pixel neighbours. Each neighbour row of
    the window is one contiguous run of frame-1 feature vectors (zero-padded outside), read once;
    the official code samples every offset bilinearly, four reads each, all (2r+1)² maps at once.
    """
    b, c, h, w = feature0.shape
    size, pad = 2 * radius + 2, 2 * radius + 2
    coords = coords_grid(h, w, device=flow.device, dtype=flow.dtype) + flow  # B×2×H×W
    corner = coords.floor()
    frac = (coords - corner).flatten(2).transpose(1, 2).reshape(b * h * w, 2, 1, 1)
    # Corners this far out have the whole window in the zero padding; clamping keeps them there
    # (a NaN flow gives a NaN correlation through ``frac``, and any in-range index).
    corner = corner.nan_to_num(0.0)
    x0 = corner[:, 0].clamp(-radius - 2, w + radius).long() + pad - radius  # window start, padded grid
    y0 = corner[:, 1].clamp(-radius - 2, h + radius).long() + pad - radius
    hp, wp = h + 2 * pad, w + 2 * pad
    keys = F.pad(feature1, (pad, pad, pad, pad)).permute(0, 2, 3, 1).contiguous().view(b * hp * wp, c)
    runs = keys.as_strided((keys.shape[0] - size + 1, size, c), (c, c, 1))  # row i: vectors i … i+size-1
    first = (torch.arange(b, device=flow.device) * (hp * wp)).view(b, 1, 1) + y0 * wp + x0  # B×H×W
    query = feature0.permute(0, 2, 3, 1).reshape(b * h * w, c, 1)
    dots = torch.stack(
        [torch.bmm(runs[(first + dy * wp).flatten()], query)[..., 0] for dy in range(size)], dim=1
    )  # (B·H·W)×size×size, whole-pixel neighbours (dy, dx)
    fx, fy = frac[:, 0], frac[:, 1]
    top = dots[:, :-1, :-1] * (1 - fx) + dots[:, :-1, 1:] * fx
    bottom = dots[:, 1:, :-1] * (1 - fx) + dots[:, 1:, 1:] * fx
    corr = (top * (1 - fy) + bottom * fy).view(b, h * w, (size - 1) ** 2)
    return corr.transpose(1, 2).reshape(b, (size - 1) ** 2, h, w) / c**0.5


def _refinement_block(upsample_factor: int) -> UpdateBlock:
    """RAFT's large update block on a (2·4+1)² correlation, with a convex-upsampling mask head."""
    encoder = MotionEncoder(
        corr_channels=(2 * REFINE_RADIUS + 1) ** 2, corr_widths=(256, 192), flow_widths=(128, 64), out_dim=128
    )
    return UpdateBlock(
        encoder=encoder,
        gru=SepConvGRU(hidden_dim=REFINE_HIDDEN, input_dim=REFINE_CONTEXT + 128),
        flow_head=FlowHead(in_dim=REFINE_HIDDEN, hidden_dim=256),
        mask=mask_head(REFINE_HIDDEN, upsample_factor),
    )


class UniMatch(GMFlow):
    """UniMatch flow model: GMFlow, optionally with ``reg_refine``.

    Hyperparameters keep the official command-line names; all but ``attn_type``, ``reg_refine`` and
    ``num_reg_refine`` are :class:`models.gmflow.GMFlow`'s. ``attn_type`` must be "swin" for flow. With
    ``reg_refine``, ``num_reg_refine`` steps of regression refinement (the official evaluation uses 6)
    replace the convex upsampler at the finest scale.
    """

    def __init__(
        self,
        *,
        feature_channels: int = 128,
        attn_type: str = "swin",
        reg_refine: bool = False,
        num_reg_refine: int = 1,
        **gmflow: Any,
    ):
        super().__init__(feature_channels=feature_channels, **gmflow)
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type: expected one of {ATTN_TYPES} for flow, got {attn_type!r}")
        if not isinstance(num_reg_refine, int) or isinstance(num_reg_refine, bool) or num_reg_refine < 1:
            raise ValueError(f"num_reg_refine: expected an integer >= 1, got {num_reg_refine!r}")
        self.num_reg_refine = num_reg_refine
        self.refine_proj = self.refine = None
        if reg_refine:
            # The official refinement model has no ``upsampler``: its mask comes from the GRU state.
            self.upsampler = None
            # The transformer's frame-0 features → the GRU's initial state and its context input.
            self.refine_proj = nn.Conv2d(feature_channels, REFINE_HIDDEN + REFINE_CONTEXT, 1)
            self.refine = _refinement_block(self.upsample_factor)

    def _upsample(self, finest: FinestScale) -> torch.Tensor:
        """GMFlow's convex upsampling, or with ``reg_refine`` the refinement (which upsamples itself)."""
        if self.refine is None:
            return super()._upsample(finest)
        return self._refine(finest.flow, finest.feature0, finest.cnn0, finest.cnn1)

    def _refine(
        self, flow: torch.Tensor, feature0: torch.Tensor, cnn0: torch.Tensor, cnn1: torch.Tensor
    ) -> torch.Tensor:
        """Regression refinement at the finest scale: flow B×2×h×w, transformer features ``feature0``
        and the unwarped CNN features ``cnn0``, ``cnn1`` (B×C×h×w) → upsampled B×2×H×W flow."""
        state, context = self.refine_proj(feature0).chunk(2, dim=1)
        state, context = torch.tanh(state), torch.relu(context)
        net = state
        for _ in range(self.num_reg_refine):
            with _float32(flow):
                corr = local_correlation_with_flow(_upcast(cnn0), _upcast(cnn1), flow, REFINE_RADIUS)
            # The official loop restarts the GRU from the projected features at every step (the
            # hidden state is not carried over); kept, since the released weights were trained so.
            net, delta = self.refine(state, context, corr, flow)
            flow = flow + delta.float()
        mask = self.refine.mask(net)  # from the last step only: the official code discards the others
        with _float32(flow):
            return convex_upsample(flow, mask.float(), self.upsample_factor)


# The GMFlow architectures and evaluation settings, in the official UniMatch's command-line terms.
SCALE1_CONFIG = {**GMFLOW_CONFIG, "attn_type": "swin", "reg_refine": False, "num_reg_refine": 1}
SCALE2_CONFIG = {**GMFLOW_REFINE_CONFIG, "attn_type": "swin", "reg_refine": False, "num_reg_refine": 1}
SCALE2_REFINE6_CONFIG = {**SCALE2_CONFIG, "reg_refine": True, "num_reg_refine": 6}

URL = "https://s3.eu-central-1.amazonaws.com/avg-projects/unimatch/pretrained/"
# scripts/gmflow_evaluate.sh runs every benchmark with the model's own settings; evaluate_flow.py pads
# as GMFlow's evaluate.py ('sintel' mode except validate_kitti's 'kitti'), so the records take GMFlow's
# benchmark settings. The test-set submissions (scripts/gmflow_submission.sh) also resize the input to
# 416×1024 (Sintel) and 352×1216 (KITTI).
SAME_FILE = "the same weights as haofeixu/gmflow's {} (same short hash in the file name); "
UNIMATCH_KITTI = (
    "UniMatch paper (Xu et al., TPAMI 2023, arXiv:2211.05783), KITTI-2015 test Fl-all of GMFlow+ "
    "(as listed for the paper on wizwand.com; input resized to 352×1216 by gmflow_submission.sh)"
)
C_T_SKHT_FT = C_T_SKHT + " → Sintel fine-tune mix (stage sintel_ft)"
C_T_VK_K = C_T + " → Virtual KITTI 2 → KITTI mix (stage kitti_mix)"
MIXDATA = "several mixed public datasets, 320×576 crops (MODEL_ZOO.md: recommended for in-the-wild use)"


def _official(filename: str, trained_on: str, config: Mapping, published: Mapping, source: str) -> Checkpoint:
    return official_checkpoint(filename, trained_on, config, published, source, url=URL + filename)


def _spec(name: str, description: str, config: Mapping, checkpoints: tuple[Checkpoint, ...]) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=UniMatch,
        description=description,
        default_config=config,
        convert=convert_official,
        checkpoints=checkpoints,
    )


SPECS = (
    _spec(
        "unimatch_scale1",
        "UniMatch GMFlow-scale1 (Xu et al., TPAMI 2023): global matching at 1/8",
        SCALE1_CONFIG,
        (
            _official(
                "gmflow-scale1-things-e9887eda.pth",
                C_T,
                SCALE1_CONFIG,
                {"things_test_clean_epe": 3.475, "sintel_train_clean_epe": 1.495, "sintel_train_final_epe": 2.955},
                SAME_FILE.format("gmflow_things-e9887eda.pth") + EVALUATE_SH,
            ),
            _official("gmflow-scale1-mixdata-train320x576-4c3a6e9a.pth", MIXDATA, SCALE1_CONFIG, {}, NO_SCORE),
        ),
    ),
    _spec(
        "unimatch_scale2",
        "UniMatch GMFlow-scale2 (Xu et al., TPAMI 2023): global at 1/8, local at 1/4",
        SCALE2_CONFIG,
        (
            _official(
                "gmflow-scale2-things-36579974.pth",
                C_T,
                SCALE2_CONFIG,
                {
                    "things_test_clean_epe": 2.804,
                    "sintel_train_clean_epe": 1.084,
                    "sintel_train_final_epe": 2.475,
                    "kitti_train_epe": 7.77,
                },
                SAME_FILE.format("gmflow_with_refine_things-36579974.pth") + EVALUATE_SH + "; KITTI: " + PAPER_TABLE4,
            ),
            _official(
                "gmflow-scale2-sintel-3ed1cf48.pth",
                C_T_SKHT,
                SCALE2_CONFIG,
                {"sintel_test_clean_epe": 1.74, "sintel_test_final_epe": 2.90},
                SAME_FILE.format("gmflow_with_refine_sintel-3ed1cf48.pth") + PAPER_TABLE4,
            ),
            _official("gmflow-scale2-mixdata-train320x576-9ff1c094.pth", MIXDATA, SCALE2_CONFIG, {}, NO_SCORE),
        ),
    ),
    _spec(
        "unimatch_scale2_regrefine6",
        "UniMatch GMFlow+ (Xu et al., TPAMI 2023): GMFlow-scale2 and 6 local regression refinements",
        SCALE2_REFINE6_CONFIG,
        (
            _official("gmflow-scale2-regrefine6-things-776ed612.pth", C_T, SCALE2_REFINE6_CONFIG, {}, NO_SCORE),
            _official(
                "gmflow-scale2-regrefine6-sintelft-6e39e2b9.pth",
                C_T_SKHT_FT,
                SCALE2_REFINE6_CONFIG,
                {},
                NO_SCORE + " verified here (the paper's Sintel test numbers could not be read from a stored copy)",
            ),
            _official(
                "gmflow-scale2-regrefine6-kitti15-25b554d7.pth",
                C_T_VK_K,
                SCALE2_REFINE6_CONFIG,
                {"kitti_test_fl_all": 4.49},
                UNIMATCH_KITTI,
            ),
            _official(
                "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth",
                MIXDATA,
                SCALE2_REFINE6_CONFIG,
                {},
                NO_SCORE,
            ),
        ),
    ),
)
