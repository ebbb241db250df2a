"""DEQ-Flow (Bai, Geng, Savani & Kolter, "Deep Equilibrium Optical Flow Estimation", CVPR 2022).

RAFT's encoders, correlation pyramid and update block, but the recurrent refinement is replaced by
solving for the fixed point (h*, x*) = f(h*, x*) of one update step, with h the GRU state and x the
1/8-resolution target coordinates (:mod:`models.deq_solvers`). Upstream: github.com/locuslab/deq-flow,
whose ``code.v.1.0`` and ``code.v.2.0`` trees released checkpoints with two layouts:

* v1 (DEQ-Flow-B, the first DEQ-Flow-H runs): upsampling mask head inside the update block
  (``update_block.mask.*``), flow head of width 256, Anderson returns its mixed iterate;
* v2 (DEQ-Flow-H-1x/-3x, -T): mask head at the top level (``mask.*``), flow head twice the motion width,
  Anderson returns the image f(x) of its iterate.

Parameter names follow the official modules, so released checkpoints load through :func:`convert_official`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, strip_prefix
from .contract import PairwiseFlowModel, frames_used
from .deq_solvers import STOP_MODES, SolverResult, get_solver
from .raft import (
    DOWNSAMPLE,
    LARGE,
    MASK_SCALE,
    Encoder,
    FlowHead,
    MotionEncoder,
    SepConvGRU,
    UpdateBlock,
    coords_grid,
    upsample_convex,
)
from .raft_corr import CORRELATIONS, min_feature_size
from .registry import C_T, Checkpoint, ModelSpec, StateDict, train_scores

PAD_MODES = ("sintel", "kitti")
MASK_WIDTH = 256  # hidden width of the convex-upsampling mask head


@dataclass(frozen=True)
class DEQFlowDims:
    """Channel widths of one DEQ-Flow size (the official ``--tiny``/default/``--huge`` switches).

    The encoders are RAFT's large ones in every size. feature: fnet output; hidden: GRU state;
    context: cnet output; motion: (corr conv 1, corr conv 2, flow conv 1, flow conv 2, motion
    features incl. the 2 flow channels); flow_head: hidden width of the flow head.
    """

    feature: int
    hidden: int
    context: int
    motion: tuple[int, int, int, int, int]
    flow_head: int
    corr_levels: int = 4
    corr_radius: int = 4


def convex_mask_head(hidden_dim: int) -> nn.Sequential:
    """GRU state → logits of the 9 convex weights of each of the 8×8 sub-pixels (B×576×h×w)."""
    return nn.Sequential(
        nn.Conv2d(hidden_dim, MASK_WIDTH, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(MASK_WIDTH, DOWNSAMPLE * DOWNSAMPLE * 9, 1, padding=0),
    )


def update_block_for(dims: DEQFlowDims, *, with_mask: bool) -> UpdateBlock:
    """RAFT's update block at DEQ-Flow's widths; v1 checkpoints keep the mask head inside it.

    Its convolutions (not the mask head) were trained with weight normalisation, which
    :func:`convert_official` folds into plain weights (exact at inference).
    """
    c1, c2, f1, f2, motion_dim = dims.motion
    encoder = MotionEncoder(
        corr_channels=dims.corr_levels * (2 * dims.corr_radius + 1) ** 2,
        corr_widths=(c1, c2),
        flow_widths=(f1, f2),
        out_dim=motion_dim,
    )
    return UpdateBlock(
        encoder=encoder,
        gru=SepConvGRU(hidden_dim=dims.hidden, input_dim=dims.context + motion_dim),
        flow_head=FlowHead(in_dim=dims.hidden, hidden_dim=dims.flow_head),
        mask=convex_mask_head(dims.hidden) if with_mask else None,
    )


# --- the model -----------------------------------------------------------------------------------


class DEQFlow(PairwiseFlowModel):
    """DEQ-Flow at inference: the flow is the fixed point of one update step, found by a solver.

    ``release`` is the upstream code version the weights come from (1 or 2, see the module docstring).
    ``solver`` (naive, anderson, broyden) runs ``eval_f_thres`` steps at most, or int(f_thres × eval_factor)
    when that is None (the official ``--f_thres``/``--eval_factor``), stopping early when the
    ``stop_mode`` ("abs"/"rel") residual falls below ``eps``. Defaults are code.v.2.0's argparse
    defaults; the registry holds each checkpoint's evaluation settings. ``corr`` and the padding of
    inputs under 128 px are RAFT's (:class:`models.raft.RAFT`).
    """

    pad_multiple = DOWNSAMPLE

    def __init__(
        self,
        *,
        dims: DEQFlowDims,
        release: int,
        solver: str = "anderson",
        f_thres: int = 40,
        eval_factor: float = 1.5,
        eval_f_thres: int | None = None,
        stop_mode: str = "abs",
        eps: float = 1e-3,
        corr: str = "all_pairs",
        pad_mode: str = "sintel",
    ):
        super().__init__()
        if release not in (1, 2):
            raise ValueError(f"release: expected 1 or 2 (deq-flow code.v.1.0 / code.v.2.0), got {release!r}")
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode: expected one of {STOP_MODES}, got {stop_mode!r}")
        if corr not in CORRELATIONS:
            raise ValueError(f"corr: expected one of {sorted(CORRELATIONS)}, got {corr!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode: expected one of {PAD_MODES}, got {pad_mode!r}")
        self.solve = get_solver(solver)
        self.threshold = eval_f_thres if eval_f_thres else int(f_thres * eval_factor)
        if self.threshold < 1:
            raise ValueError(
                f"solver steps: expected at least 1, got {self.threshold} "
                f"(f_thres={f_thres}, eval_factor={eval_factor}, eval_f_thres={eval_f_thres})"
            )
        self.dims, self.release, self.solver, self.corr = dims, release, solver, corr
        self.stop_mode, self.eps, self.pad_mode = stop_mode, eps, pad_mode

        widths = LARGE.encoder_widths  # RAFT's large encoders, unchanged in every DEQ-Flow size
        self.fnet = Encoder(block="residual", widths=widths, out_dim=dims.feature, norm="instance")
        self.cnet = Encoder(block="residual", widths=widths, out_dim=dims.context, norm="batch")
        self.update_block = update_block_for(dims, with_mask=release == 1)
        if release == 2:
            self.mask = convex_mask_head(dims.hidden)
        self.min_size = DOWNSAMPLE * min_feature_size(dims.corr_levels)

    @property
    def mask_head(self) -> nn.Module:
        return self.update_block.mask if self.release == 1 else self.mask

    def _solver_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"threshold": self.threshold, "eps": self.eps, "stop_mode": self.stop_mode}
        if self.solver == "anderson":
            options["return_image"] = self.release == 2
        return options

    def _flows(self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """M×2×H×W flow from frames[first[i]] to frames[second[i]] (N×3×H×W, multiples of 8).

        Frames under 128 px a side are replicate-padded to 128 first, as RAFT does: the 4-level
        correlation pyramid needs 2 pixels per axis at 1/64 scale (the official code returns NaN below).
        """
        h, w = frames.shape[-2:]
        pad_h, pad_w = max(self.min_size - h, 0), max(self.min_size - w, 0)
        if not (pad_h or pad_w):
            return self.estimate_pairs(frames, first, second)[0]
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        flow, _ = self.estimate_pairs(F.pad(frames, pads, mode="replicate"), first, second)
        return flow[..., pads[2] : pads[2] + h, pads[0] : pads[0] + w]

    def estimate(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, SolverResult]:
        """B×3×H×W RGB in [0, 255], H and W multiples of 8 and ≥ 128 → (B×2×H×W flow in pixels, solver result).

        The solver result's ``z`` is the flat fixed point [GRU state, 1/8-resolution target coordinates].
        """
        index = torch.arange(image0.shape[0], device=image0.device)
        return self.estimate_pairs(torch.cat([image0, image1]), index, index + image0.shape[0])

    def _encode(
        self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of frames[first] and frames[second], context of frames[first]; each encoder
        sees each frame it needs once (the context encoder only frames that start a pair)."""
        frames, (first_f, second_f) = frames_used(frames, first, second)
        images = 2 * (frames / 255.0) - 1.0
        fmaps = self.fnet(images).float()
        images, (first_c,) = frames_used(images, first_f)
        return fmaps[first_f], fmaps[second_f], torch.relu(self.cnet(images))[first_c]

    @torch.no_grad()
    def estimate_pairs(
        self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, SolverResult]:
        """M pairs (frames[first[i]], frames[second[i]]) of N×3×H×W RGB in [0, 255], H and W multiples
        of 8 and ≥ 128 → (M×2×H×W flow in pixels, solver result of the M pairs)."""
        fmap0, fmap1, context = self._encode(frames, first, second)
        b, _, h, w = fmap0.shape
        coords0 = coords_grid(b, h, w, fmap0.device)
        n_hidden = self.dims.hidden * h * w

        def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return z[:, :n_hidden].view(b, -1, h, w), z[:, n_hidden:].view(b, 2, h, w)

        def step(z: torch.Tensor) -> torch.Tensor:
            net, coords1 = split(z)
            corr = lookup(coords1)
            with self._autocast(z):
                net, delta = self.update_block(net, context, corr, coords1 - coords0)
            return torch.cat([net.float().flatten(1), (coords1 + delta.float()).flatten(1)], dim=1)

        # Correlation and the solver's own arithmetic (norms, Anderson's small solve) stay float32
        # under mixed precision; only the update block runs in the autocast dtype.
        with torch.autocast(fmap0.device.type, enabled=False):
            dims = self.dims
            lookup = CORRELATIONS[self.corr](fmap0, fmap1, levels=dims.corr_levels, radius=dims.corr_radius)
            z0 = torch.cat([fmap0.new_zeros(b, n_hidden), coords0.flatten(1)], dim=1)
            result = self.solve(step, z0, **self._solver_options())
        net, coords1 = split(result.z)
        mask = MASK_SCALE * self.mask_head(net)
        with torch.autocast(fmap0.device.type, enabled=False):
            return upsample_convex(coords1 - coords0, mask.float()), result


# --- checkpoints ---------------------------------------------------------------------------------


WEIGHT_NORM_SUFFIXES = ("_g", "_v")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Weight-normalised conv weight w = v · g / ‖v‖, the norm per output channel (dim 0).

    Written as the official weight_norm computes it, so the folded weights are bitwise the ones it uses.
    """
    norm = v.contiguous().view(v.shape[0], -1).norm(dim=1).view(v.shape[0], *([1] * (v.dim() - 1)))
    return v * (g / norm)


def convert_official(state: StateDict) -> StateDict:
    """Official deq-flow state_dict (v1 or v2) → this module's keys.

    Drops DataParallel's ``module.`` prefix and folds every weight-normalised pair
    ``<name>.weight_g`` / ``<name>.weight_v`` into ``<name>.weight``. Every key is consumed; a half
    pair raises :class:`CheckpointError`, and :func:`models.checkpoint.load_strict` then rejects
    any missing or unexpected key.
    """
    state = strip_prefix(state, "module.")
    converted: StateDict = {}
    for key, value in state.items():
        base, suffix = key[:-2], key[-2:]
        if not (suffix in WEIGHT_NORM_SUFFIXES and base.endswith(".weight")):
            converted[key] = value
            continue
        g_key, v_key = base + "_g", base + "_v"
        missing = [k for k in (g_key, v_key) if k not in state]
        if missing:
            raise CheckpointError(f"weight-normalised {base}: expected both {g_key} and {v_key}, missing {missing}")
        if base in state:
            raise CheckpointError(f"{base}: expected either a plain weight or a weight_g/weight_v pair, got both")
        if suffix == "_g":
            converted[base] = fold_weight_norm(state[g_key], state[v_key])
    return converted


# --- sizes, builders and registry ----------------------------------------------------------------

DIMS_B = DEQFlowDims(feature=256, hidden=128, context=128, motion=(256, 192, 128, 64, 128), flow_head=256)
DIMS_H_V1 = DEQFlowDims(feature=256, hidden=256, context=256, motion=(512, 384, 256, 128, 256), flow_head=256)
DIMS_H = DEQFlowDims(feature=256, hidden=256, context=256, motion=(512, 384, 256, 128, 256), flow_head=512)
DIMS_T = DEQFlowDims(feature=64, hidden=32, context=32, motion=(64, 48, 32, 16, 32), flow_head=64)


def deqflow_b(**config: Any) -> DEQFlow:
    """DEQ-Flow-B (code.v.1.0 default size, 5.2 M parameters)."""
    return DEQFlow(dims=DIMS_B, release=1, **config)


def deqflow_h_v1(**config: Any) -> DEQFlow:
    """DEQ-Flow-H as released with code.v.1.0 (``--huge``, 12.8 M parameters)."""
    return DEQFlow(dims=DIMS_H_V1, release=1, **config)


def deqflow_h(**config: Any) -> DEQFlow:
    """DEQ-Flow-H as released with code.v.2.0 (``--huge``, wider flow head, 13.4 M parameters)."""
    return DEQFlow(dims=DIMS_H, release=2, **config)


def deqflow_t(**config: Any) -> DEQFlow:
    """DEQ-Flow-T (code.v.2.0 ``--tiny``)."""
    return DEQFlow(dims=DIMS_T, release=2, **config)


V1_DRIVE = "https://drive.google.com/drive/folders/1PeyOr4kmSuMWrh4iwYKbVLqDU6WPX-HM"  # README of code.v.1.0
V2_DRIVE = "https://drive.google.com/drive/folders/1a_eX_wYN1qTw2Rj1naEXhcsG4D3KKxFw"  # README, "Version 2.0"
# evaluate.py pads Sintel centred and KITTI at the bottom (InputPadder mode 'kitti').
BENCHMARKS = {"sintel": {"pad_mode": "sintel"}, "kitti": {"pad_mode": "kitti"}}

# Evaluation settings of the official scripts: code.v.1.0/val.sh and viz.sh, code.v.2.0/val.sh
# (stop mode "abs", eps 1e-3 and eval_factor 1.5 are the argparse defaults of both versions).
B_EVAL = {"solver": "anderson", "f_thres": 40, "eval_factor": 1.5, "stop_mode": "abs", "eps": 1e-3}
H_V1_EVAL = {"solver": "broyden", "f_thres": 36, "eval_factor": 1.5, "stop_mode": "abs", "eps": 1e-3}
H_EVAL = {"solver": "naive", "f_thres": 40, "eval_factor": 1.5, "stop_mode": "abs", "eps": 1e-3}
INPUT_DEFAULTS = {"corr": "all_pairs", "pad_mode": "sintel"}


def _h_v1_things(run: int, scores: dict[str, float]) -> Checkpoint:
    return Checkpoint(
        name=f"deq-flow-H-things-test-{run}",
        filename=f"deq-flow-H-things-test-{run}.pth",
        url=V1_DRIVE,
        trained_on=C_T,
        eval_config=H_V1_EVAL,
        benchmark_config=BENCHMARKS,
        published=scores,
        source=f"README (code.v.1.0 table, run {run} of 3; log code.v.1.0/ref/val.txt); Sintel/KITTI-2015 train",
    )


SPECS = (
    ModelSpec(
        name="deqflow_b",
        builder=deqflow_b,
        description="DEQ-Flow-B (Bai et al., CVPR 2022), code.v.1.0 layout; Anderson solver",
        default_config={**B_EVAL, **INPUT_DEFAULTS},
        checkpoints=(
            Checkpoint(
                name="deq-flow-B-things-test",
                filename="deq-flow-B-things-test.pth",
                url=V1_DRIVE,
                trained_on=C_T,
                eval_config=B_EVAL,
                benchmark_config=BENCHMARKS,
                published=train_scores(1.43, 2.79, 5.43, 16.67),
                source="README (code.v.1.0 table; log code.v.1.0/ref/val.txt); Sintel/KITTI-2015 train",
            ),
        ),
        convert=convert_official,
    ),
    ModelSpec(
        name="deqflow_h",
        builder=deqflow_h,
        description="DEQ-Flow-H (Bai et al., CVPR 2022), code.v.2.0 layout; naive fixed-point iteration",
        default_config={**H_EVAL, **INPUT_DEFAULTS},
        checkpoints=(
            Checkpoint(
                name="deq-flow-H-things-test-1x",
                filename="deq-flow-H-things-test-1x.pth",
                url=V2_DRIVE,
                trained_on=C_T + ", 120k Things steps",
                eval_config=H_EVAL,
                benchmark_config=BENCHMARKS,
                published=train_scores(1.27, 2.58, 3.76, 12.95),
                source="README (Version 2.0 table; log code.v.2.0/log/val.txt); Sintel/KITTI-2015 train",
            ),
            Checkpoint(
                name="deq-flow-H-things-test-3x",
                filename="deq-flow-H-things-test-3x.pth",
                url=V2_DRIVE,
                trained_on=C_T + ", 360k Things steps",
                # The README row comes from val.sh's third run, eval_factor 3.0 (120 steps); with 1.5
                # the log reports Sintel 1.270 / 2.500, KITTI 3.863 / 13.52.
                eval_config={**H_EVAL, "eval_factor": 3.0},
                benchmark_config=BENCHMARKS,
                published=train_scores(1.27, 2.48, 3.77, 13.41),
                source="README (Version 2.0 table; log code.v.2.0/log/val.txt, eval_factor 3.0); Sintel/KITTI-2015 train",
            ),
        ),
        convert=convert_official,
    ),
    ModelSpec(
        name="deqflow_h_v1",
        builder=deqflow_h_v1,
        description="DEQ-Flow-H (Bai et al., CVPR 2022), code.v.1.0 layout; Broyden solver",
        default_config={**H_V1_EVAL, **INPUT_DEFAULTS},
        checkpoints=(
            _h_v1_things(1, train_scores(1.45, 2.58, 3.97, 13.41)),
            _h_v1_things(2, train_scores(1.37, 2.62, 3.97, 13.62)),
            _h_v1_things(3, train_scores(1.36, 2.62, 4.02, 13.92)),
            Checkpoint(
                name="deq-flow-H-sintel",
                filename="deq-flow-H-sintel.pth",
                url=V1_DRIVE,
                trained_on=C_T + " → Sintel+Things+KITTI+HD1K (code.v.1.0/train_H_full.sh)",
                eval_config=H_V1_EVAL,  # no official eval script; its training solver with the default eval_factor
                benchmark_config=BENCHMARKS,
                source="file list: github.com/locuslab/deq-flow/issues/7",
            ),
            Checkpoint(
                name="deq-flow-H-kitti",
                filename="deq-flow-H-kitti.pth",
                url=V1_DRIVE,
                trained_on=C_T + " → S+T+K+H → KITTI-2015 (code.v.1.0/train_H_full.sh)",
                eval_config=H_V1_EVAL,  # code.v.1.0/viz.sh
                benchmark_config=BENCHMARKS,
                source="code.v.1.0/viz.sh; file list: github.com/locuslab/deq-flow/issues/7",
            ),
        ),
        convert=convert_official,
    ),
    ModelSpec(
        name="deqflow_t",
        builder=deqflow_t,
        description="DEQ-Flow-T (Bai et al., CVPR 2022), code.v.2.0 --tiny; naive fixed-point iteration",
        default_config={**H_EVAL, "eval_f_thres": 36, **INPUT_DEFAULTS},
        checkpoints=(
            Checkpoint(
                name="deq-flow-T-things-test",
                filename="deq-flow-T-things-test.pth",
                url="https://drive.google.com/file/d/1_XV_x4wY7f6wq4bzHUPcxNje8t1GHXEg",
                trained_on=C_T,
                eval_config={**H_EVAL, "eval_f_thres": 36},
                benchmark_config=BENCHMARKS,
                published=train_scores(1.768, 3.147, 7.60, 23.74),
                source="maintainer's comment, github.com/locuslab/deq-flow/issues/6 (val.sh with --tiny --eval_f_thres 36)",
            ),
        ),
        convert=convert_official,
    ),
)
