"""SEA-RAFT: Simple, Efficient, Accurate RAFT (Wang, Lipson & Deng, ECCV 2024, arXiv:2405.14793).

A re-implementation of princeton-vl/SEA-RAFT's inference path (``RAFT.forward(test_mode=True)``
inside the official ``calc_flow``) with the official parameter names: its ``.pth`` files and its
HuggingFace model directories load strictly after :func:`convert_searaft_state`. Flow and
uncertainty on CPU float32 equal the official code's to float rounding.

What differs from RAFT: ResNet encoders, the context encoder reads both frames and also regresses
an initial flow, ConvNeXt blocks replace the GRU, and every prediction comes with a per-pixel
mixture-of-Laplace uncertainty (``info``: two mixture weight logits, two log-scales) that
:func:`mixture_confidence` turns into the contract's confidence.

Resolution (the official ``scale``): the network runs on the frames resized by 2**scale
(bilinear), and the flow is resized back and multiplied by 2**-scale, the uncertainty resized by
area, exactly as ``calc_flow`` does; the Spring checkpoints are evaluated at ``scale=-1``. The
contract pads the frames so that this resize is exact (``pad_multiple = 2**-scale``); the model
then pads the working-resolution input to a multiple of 8 with centred replicate padding, as the
official forward's own ``InputPadder`` does (and, below the official minimum of 128 px, to 128, a
size where the official code fails: its pyramid needs ≥ 16 cells per side on the 1/8 grid).

Differences from the official forward, none of which changes its output:
  * the upsampling runs once after the last iteration instead of after every one;
  * the correlation pyramid pools the correlation volume (``models.raft_corr``) instead of
    correlating with bilinearly halved features: both average the same 2×2 cells;
  * ``predict_pairs`` encodes each frame once with ``fnet`` across pairs and both directions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_strict, parse_state_dict, strip_prefix
from .contract import FlowModel, PairFlows, frames_used
from .hf_directory import CONFIG_FILE, file_sha256, local_directory, weights_file
from .raft import coords_grid
from .raft_corr import CORRELATIONS, min_feature_size
from .registry import Checkpoint, ModelSpec, StateDict
from .searaft_blocks import DOWNSAMPLE, ResNetEncoder, UpdateBlock, convex_upsample

# The convex-upsampling logits are scaled by 0.25 in the official code (inherited from RAFT); at
# inference it sets the softmax temperature, so it must stay.
MASK_SCALE = 0.25
CORR_LEVELS = 4
RESNET_BLOCKS = {"resnet18": (2, 2, 2), "resnet34": (3, 4, 6)}
SCALES = (-3, -2, -1, 0)


@dataclass(frozen=True)
class SEARAFTArch:
    """Architecture hyperparameters, the official config/eval/*.json names in brackets."""

    backbone: str = "resnet34"  # [pretrain] "resnet18" (S) or "resnet34" (M, L)
    initial_dim: int = 64  # [initial_dim] stem width
    block_dims: tuple[int, int, int] = (64, 128, 256)  # [block_dims] stage widths
    dim: int = 128  # [dim] hidden state and context channels
    radius: int = 4  # [radius] correlation lookup radius
    num_blocks: int = 2  # [num_blocks] ConvNeXt blocks per update

    @property
    def corr_channels(self) -> int:
        return CORR_LEVELS * (2 * self.radius + 1) ** 2


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] → [-1, 1], as the official forward."""
    return 2 * (images / 255.0) - 1.0


def working_pads(height: int, width: int, min_size: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding of a working-resolution input: to a multiple of
    8 and at least ``min_size``, split as the official InputPadder's "sintel" mode (extra at the end)."""
    th = max(-(-height // DOWNSAMPLE) * DOWNSAMPLE, min_size)
    tw = max(-(-width // DOWNSAMPLE) * DOWNSAMPLE, min_size)
    ph, pw = th - height, tw - width
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def log_scales(info: torch.Tensor, var_min: float, var_max: float) -> torch.Tensor:
    """The official clamps of the raw log-scales (channels 2, 3 of ``info``): the first component
    ("ambiguous") has log b in [0, var_max], the second ("ordinary") in [var_min, 0]."""
    raw = info[:, 2:]
    return torch.stack([raw[:, 0].clamp(0, var_max), raw[:, 1].clamp(var_min, 0)], dim=1)


def mixture_confidence(info: torch.Tensor, var_min: float = 0.0, var_max: float = 10.0) -> torch.Tensor:
    """B×4×H×W mixture-of-Laplace ``info`` → B×H×W confidence in (0, 1].

    SEA-RAFT is trained to give each axis of the flow error e the density
    Σ_k π_k · exp(−|e| / b_k) / (2 b_k), with π = softmax(info[:, :2]) and log b from
    :func:`log_scales`. The confidence is the probability that |e| ≤ 1 px under that mixture,
    Σ_k π_k (1 − exp(−1 / b_k)), divided by the same probability for the most certain prediction
    the head can make (all weight on the smallest scale b = exp(var_min)):

    * it is a probability ratio, so it reads the same for every pixel and frame: 1 where the model
      predicts its ordinary 1-px error (b = 1 for the released configs, var_min = 0), about π of
      the ordinary component where the other one is very wide, → 0 where all weight is on a wide one;
    * it strictly decreases as any predicted scale b_k grows (for π_k > 0), and never reaches 0
      (b ≤ exp(var_max)), so it stays in (0, 1];
    * the official ``get_heatmap`` visualises Σ π_k log b_k, which ranks pixels similarly; a
      probability is used instead because it is bounded and has units (1 px).

    The pixel is one of the resolution the network ran at (half the output's for ``scale=-1``),
    the unit the uncertainty was trained in.
    """
    weights = torch.softmax(info[:, :2].float(), dim=1)
    scales = log_scales(info.float(), var_min, var_max).exp()
    within = -torch.expm1(-1.0 / scales)  # P(|e| ≤ 1 px) per component, accurate for large b
    best = -math.expm1(-math.exp(-var_min))  # the smallest scale is b = exp(var_min)
    return ((weights * within).sum(dim=1) / best).clamp(max=1.0)


class SEARAFT(FlowModel):
    """SEA-RAFT flow model with per-pixel confidence; build it with :func:`searaft_s`, :func:`searaft_m`
    or :func:`searaft_l`.

    ``iters``: refinement iterations after the regressed initial flow (official: 4 for S and M, 12 for L).
    ``scale``: the network runs at 2**scale of the frame size (official: 0, and -1 on Spring).
    ``corr``: "all_pairs" (official) or "on_demand" (same output, memory linear in the image area).
    ``var_min``, ``var_max``: the clamps of the predicted log-scales (official 0 and 10), used by the confidence.
    """

    predicts_confidence = True

    def __init__(
        self,
        *,
        arch: SEARAFTArch,
        iters: int,
        scale: int = 0,
        corr: str = "all_pairs",
        var_min: float = 0.0,
        var_max: float = 10.0,
    ):
        super().__init__()
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
            raise ValueError(f"iters: expected an integer ≥ 1, got {iters!r}")
        if scale not in SCALES or isinstance(scale, bool):
            raise ValueError(
                f"scale: expected one of {SCALES} (the network runs at 2**scale of the size), got {scale!r}"
            )
        if corr not in CORRELATIONS:
            raise ValueError(f"corr: expected one of {sorted(CORRELATIONS)}, got {corr!r}")
        if not var_min <= 0 <= var_max:
            raise ValueError(f"expected var_min ≤ 0 ≤ var_max, got var_min={var_min!r}, var_max={var_max!r}")
        if arch.backbone not in RESNET_BLOCKS:
            raise ValueError(f"backbone: expected one of {sorted(RESNET_BLOCKS)}, got {arch.backbone!r}")
        self.arch, self.iters, self.scale, self.corr = arch, iters, scale, corr
        self.var_min, self.var_max = var_min, var_max
        self.pad_multiple = 2**-scale  # the contract pads so that the resize by 2**scale is exact
        blocks = RESNET_BLOCKS[arch.backbone]
        resnet = {"initial_dim": arch.initial_dim, "widths": arch.block_dims, "blocks": blocks}
        self.cnet = ResNetEncoder(in_dim=6, out_dim=2 * arch.dim, **resnet)
        self.init_conv = nn.Conv2d(2 * arch.dim, 2 * arch.dim, kernel_size=3, padding=1)
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(arch.dim, 2 * arch.dim, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * arch.dim, 9 * DOWNSAMPLE**2, kernel_size=1),
        )
        # flow (2) + mixture weight logits (2) + raw log-scales (2)
        self.flow_head = nn.Sequential(
            nn.Conv2d(arch.dim, 2 * arch.dim, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * arch.dim, 6, kernel_size=3, padding=1),
        )
        self.fnet = ResNetEncoder(in_dim=3, out_dim=2 * arch.dim, **resnet)
        self.update_block = UpdateBlock(corr_channels=arch.corr_channels, dim=arch.dim, num_blocks=arch.num_blocks)
        self.min_size = DOWNSAMPLE * min_feature_size(CORR_LEVELS)

    # --- contract hooks -------------------------------------------------------------------

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float RGB in [0, 255] (H, W multiples of ``pad_multiple``) → B×2×H×W flow in pixels."""
        b = image0.shape[0]
        index = torch.arange(b, device=image0.device)
        return self.estimate(torch.cat([image0, image1]), index, index + b)[0]

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both directions, each frame through ``fnet`` once."""
        out = self.predict_pairs(torch.cat([image0, image1]), *self._halves(image0.shape[0], image0.device))
        return out.forward, out.backward

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        """Forward and backward flow of each pair and the forward flow's confidence (P×H×W, see
        :func:`mixture_confidence`); ``fnet`` runs once per frame, the context encoder (which reads
        both frames) and the refinement once per pair and direction."""
        p = index0.shape[0]
        frames, (index0, index1) = frames_used(frames, index0, index1)
        flow, info = self.estimate(frames, torch.cat([index0, index1]), torch.cat([index1, index0]))
        return PairFlows(flow[:p], flow[p:], mixture_confidence(info[:p], self.var_min, self.var_max))

    @staticmethod
    def _halves(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(b, device=device)
        return index, index + b

    # --- network ----------------------------------------------------------------------------

    def estimate(
        self, frames: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow and uncertainty from frames[sources[i]] to frames[targets[i]], as the official ``calc_flow``.

        ``frames``: N×3×H×W float RGB in [0, 255], H and W multiples of ``pad_multiple``. Returns the
        K×2×H×W flow in pixels and the K×4×H×W ``info`` (mixture weight logits, raw log-scales).
        """
        work = frames
        if self.scale:
            work = F.interpolate(frames, scale_factor=2.0**self.scale, mode="bilinear", align_corners=False)
        wh, ww = work.shape[-2:]
        left, right, top, bottom = pads = working_pads(wh, ww, self.min_size)
        if any(pads):
            work = F.pad(work, pads, mode="replicate")
        work = normalize(work)
        fmaps = self.fnet(work)  # once per frame
        flow, info = self._refine(work[sources], work[targets], fmaps[sources], fmaps[targets])
        flow, info = flow[..., top : top + wh, left : left + ww], info[..., top : top + wh, left : left + ww]
        if self.scale:
            factor = 2.0**-self.scale
            flow = F.interpolate(flow, scale_factor=factor, mode="bilinear", align_corners=False) * factor
            info = F.interpolate(info, scale_factor=factor, mode="area")
        return flow, info

    def _refine(
        self, image0: torch.Tensor, image1: torch.Tensor, fmap0: torch.Tensor, fmap1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized K×3×H×W pairs and their features → K×2×H×W flow, K×4×H×W info (H, W multiples of 8)."""
        dim = self.arch.dim
        net, context = torch.split(self.init_conv(self.cnet(torch.cat([image0, image1], dim=1))), [dim, dim], dim=1)
        head = self.flow_head(net)
        flow = head[:, :2].float()  # the directly regressed initial flow (iteration 0)
        with _no_autocast(fmap0):
            lookup = CORRELATIONS[self.corr](fmap0.float(), fmap1.float(), levels=CORR_LEVELS, radius=self.arch.radius)
        b, _, h, w = flow.shape
        coords0 = coords_grid(b, h, w, flow.device)
        for _ in range(self.iters):
            with _no_autocast(flow):
                corr = lookup(coords0 + flow)
            net = self.update_block(net, context, corr, flow)
            head = self.flow_head(net)
            flow = flow + head[:, :2].float()
        mask = MASK_SCALE * self.upsample_weight(net)
        with _no_autocast(flow):
            up = convex_upsample(torch.cat([DOWNSAMPLE * flow, head[:, 2:].float()], dim=1), mask.float())
        return up[:, :2], up[:, 2:]


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


# --- builders -------------------------------------------------------------------------------


def _build(
    backbone: str,
    *,
    iters: int,
    scale: int,
    corr: str,
    var_min: float,
    var_max: float,
    dim: int,
    initial_dim: int,
    block_dims: tuple[int, int, int],
) -> SEARAFT:
    arch = SEARAFTArch(backbone=backbone, initial_dim=initial_dim, block_dims=tuple(block_dims), dim=dim)
    return SEARAFT(arch=arch, iters=iters, scale=scale, corr=corr, var_min=var_min, var_max=var_max)


def searaft_s(
    *,
    iters: int = 4,
    scale: int = 0,
    corr: str = "all_pairs",
    var_min: float = 0.0,
    var_max: float = 10.0,
    dim: int = 128,
    initial_dim: int = 64,
    block_dims: tuple[int, int, int] = (64, 128, 256),
) -> SEARAFT:
    """SEA-RAFT (S): ResNet-18 encoders, 4 iterations (config/eval/*-S.json). ``dim``, ``initial_dim``,
    ``block_dims`` change the widths (tests only: the released weights use the defaults)."""
    return _build(
        "resnet18",
        iters=iters,
        scale=scale,
        corr=corr,
        var_min=var_min,
        var_max=var_max,
        dim=dim,
        initial_dim=initial_dim,
        block_dims=block_dims,
    )


def searaft_m(
    *,
    iters: int = 4,
    scale: int = 0,
    corr: str = "all_pairs",
    var_min: float = 0.0,
    var_max: float = 10.0,
    dim: int = 128,
    initial_dim: int = 64,
    block_dims: tuple[int, int, int] = (64, 128, 256),
) -> SEARAFT:
    """SEA-RAFT (M): ResNet-34 encoders, 4 iterations (config/eval/*-M.json)."""
    return _build(
        "resnet34",
        iters=iters,
        scale=scale,
        corr=corr,
        var_min=var_min,
        var_max=var_max,
        dim=dim,
        initial_dim=initial_dim,
        block_dims=block_dims,
    )


def searaft_l(
    *,
    iters: int = 12,
    scale: int = 0,
    corr: str = "all_pairs",
    var_min: float = 0.0,
    var_max: float = 10.0,
    dim: int = 128,
    initial_dim: int = 64,
    block_dims: tuple[int, int, int] = (64, 128, 256),
) -> SEARAFT:
    """SEA-RAFT (L): the M network and weights with 12 iterations (config/eval/*-L.json)."""
    return _build(
        "resnet34",
        iters=iters,
        scale=scale,
        corr=corr,
        var_min=var_min,
        var_max=var_max,
        dim=dim,
        initial_dim=initial_dim,
        block_dims=block_dims,
    )


# --- checkpoints ----------------------------------------------------------------------------


def convert_searaft_state(state: StateDict) -> StateDict:
    """An official state_dict (a ``.pth`` file, or a HuggingFace ``model.safetensors``) → this model's keys.

    The keys are the official ones. Two differences are undone: a ``module.`` prefix (DataParallel)
    is stripped, and the ``downsample.1.*`` entries that alias ``bn3.*`` (one BatchNorm registered
    twice) are restored where missing: ``PyTorchModelHubMixin`` saves through safetensors, which
    keeps one name per shared tensor (the alphabetically first, ``bn3``).
    """
    state = strip_prefix(state, "module.")
    aliases = {}
    for key, value in state.items():
        prefix, sep, leaf = key.partition(".bn3.")
        if sep and f"{prefix}.downsample.1.{leaf}" not in state:
            aliases[f"{prefix}.downsample.1.{leaf}"] = value
    return {**state, **aliases}


ARCH_KEYS = {
    "pretrain": "backbone",
    "initial_dim": "initial_dim",
    "block_dims": "block_dims",
    "dim": "dim",
    "radius": "radius",
    "num_blocks": "num_blocks",
}


def check_hub_config(hub_config: Mapping[str, Any], arch: SEARAFTArch, uri: str) -> None:
    """Raise CheckpointError when a model directory's config.json names another architecture.

    The official model class takes one ``args`` namespace, which ``PyTorchModelHubMixin`` cannot
    serialize, so config.json may hold the settings flat, under ``args``, or not at all; only the
    architecture fields found are compared (eval settings such as ``iters`` come from the registry).
    """
    settings = hub_config.get("args") if isinstance(hub_config.get("args"), Mapping) else hub_config
    ours = {
        "backbone": arch.backbone,
        "initial_dim": arch.initial_dim,
        "block_dims": list(arch.block_dims),
        "dim": arch.dim,
        "radius": arch.radius,
        "num_blocks": arch.num_blocks,
    }
    wrong = {
        k: (settings[k], ours[field])
        for k, field in ARCH_KEYS.items()
        if k in settings and (list(settings[k]) if k == "block_dims" else settings[k]) != ours[field]
    }
    if wrong:
        details = ", ".join(f"{k}={theirs!r} (expected {mine!r})" for k, (theirs, mine) in wrong.items())
        raise CheckpointError(f"{uri}/{CONFIG_FILE} describes another SEA-RAFT: {details}")


def load_searaft_directory(
    builder: Callable[..., SEARAFT],
    uri: str,
    config: Mapping[str, Any],
    expected_sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[SEARAFT, str]:
    """A HuggingFace model directory as ``PyTorchModelHubMixin.save_pretrained`` writes it
    (model.safetensors, optional config.json; local path or fsspec URI, read offline) →
    (``builder(**config)`` with its weights loaded strictly, sha256 of the weights file)."""
    model = builder(**config)
    with local_directory(uri, storage_options) as folder:
        weights = weights_file(folder, uri)
        digest = file_sha256(weights)
        if expected_sha256 and digest != expected_sha256.lower():
            raise CheckpointError(f"{uri}/{weights.name}: expected sha256 {expected_sha256}, got {digest}")
        if (folder / CONFIG_FILE).is_file():
            check_hub_config(json.loads((folder / CONFIG_FILE).read_text()), model.arch, uri)
        state = parse_state_dict(weights.read_bytes(), weights.name)
    load_strict(model, convert_searaft_state(state), name=uri)
    return model, digest


# --- registry records ---------------------------------------------------------------------

# README "Model Zoo": one Google Drive folder holds every .pth; the HuggingFace repositories hold the
# same weights as PyTorchModelHubMixin directories (model.safetensors), one repository per checkpoint.
DRIVE_URL = "https://drive.google.com/drive/folders/1YLovlvUW94vciWvTyLf-p3uWscbOQRWW"
HUB_URL = "https://huggingface.co/MemorySlices/"
# Only these repositories are named by the official code or by users of it (custom.py --url examples);
# the folder `huggingface-cli download --local-dir NAME` makes is the checkpoint's file name.
HUB_REPOS = ("Tartan-C-T-TSKH-spring540x960-S", "Tartan-C-T-TSKH-spring540x960-M", "Tartan-C-T-TSKH-kitti432x960-M")
PAPER = "SEA-RAFT paper (Wang, Lipson & Deng, ECCV 2024, arXiv:2405.14793)"
TABLE1 = PAPER + " Table 1"
TABLE3 = PAPER + " Table 3"

T_C_T = "TartanAir → FlyingChairs → FlyingThings3D"
TSKH = T_C_T + " → Sintel+Things+KITTI+HD1K mix (Tartan-C-T-TSKH, 432×960)"
TSKH_KITTI = TSKH + " → KITTI-2015 train (432×960)"
TSKH_SPRING = TSKH + " → Spring train (540×960)"

# config/eval/{sintel,kitti,spring}-{S,M,L}.json: iters 4 (S, M) or 12 (L); scale 0, Spring -1.
ITERS = {"s": 4, "m": 4, "l": 12}


def _checkpoints(size: str, published: Mapping[str, Mapping[str, float]]) -> tuple[Checkpoint, ...]:
    """The three released fine-tunings of one network size (S or M weights; L reuses M's) as .pth
    files, plus the HuggingFace directories that exist for them (same weights: their scores are
    listed once, under the .pth record)."""
    weights = "S" if size == "s" else "M"
    iters = ITERS[size]
    releases = (  # (stem, trained on, eval settings)
        (f"Tartan-C-T-TSKH432x960-{weights}", TSKH, {"iters": iters, "scale": 0}),
        (f"Tartan-C-T-TSKH-kitti432x960-{weights}", TSKH_KITTI, {"iters": iters, "scale": 0}),
        (f"Tartan-C-T-TSKH-spring540x960-{weights}", TSKH_SPRING, {"iters": iters, "scale": -1}),
    )
    out = []
    for stem, trained_on, eval_config in releases:
        scores = dict(published.get(stem, {}))
        source = TABLE3 if scores else "no Sintel or KITTI score published for this size (Spring: SPRING_PUBLISHED)"
        out.append(
            Checkpoint(
                name=stem,
                filename=stem + ".pth",
                url=DRIVE_URL,
                trained_on=trained_on,
                eval_config=eval_config,
                published=scores,
                source=source,
            )
        )
        if stem in HUB_REPOS:
            out.append(
                Checkpoint(
                    name=stem + " (HuggingFace)",
                    filename=stem,
                    url=HUB_URL + stem,
                    trained_on=trained_on,
                    eval_config=eval_config,
                    source=f"the weights of {stem}.pth, whose record lists their scores",
                )
            )
    return tuple(out)


# Paper Table 3 (test servers): Sintel from the Tartan-C-T-TSKH submission, KITTI-2015 from its KITTI
# fine-tuning; S was not submitted. iters 4 (M) / 12 (L), scale 0.
PUBLISHED = {
    "s": {},
    "m": {
        "Tartan-C-T-TSKH432x960-M": {"sintel_test_clean_epe": 1.44, "sintel_test_final_epe": 2.86},
        "Tartan-C-T-TSKH-kitti432x960-M": {"kitti_test_fl_all": 4.64},
    },
    "l": {
        "Tartan-C-T-TSKH432x960-M": {"sintel_test_clean_epe": 1.31, "sintel_test_final_epe": 2.60},
        "Tartan-C-T-TSKH-kitti432x960-M": {"kitti_test_fl_all": 4.30},
    },
}

# Paper Table 1, Spring (1080p frames run at scale -1, flow upsampled back). Kept apart from the
# Checkpoint records until flowlabel scores Spring: jobs/scores.yaml must list every `published`
# number, and its benchmarks come from pipeline.evaluate.scoring, which has no Spring reader yet.
# (model, checkpoint file) → {metric: value}; 1px, Fl and WAUC in %, EPE in pixels.
SPRING_SOURCE = TABLE1 + "; train = zero-shot on the Spring train split, test = the Spring benchmark server"
SPRING_PUBLISHED = {
    ("searaft_s", "Tartan-C-T-TSKH432x960-S.pth"): {"spring_train_1px": 4.161, "spring_train_epe": 0.410},
    ("searaft_m", "Tartan-C-T-TSKH432x960-M.pth"): {"spring_train_1px": 3.888, "spring_train_epe": 0.406},
    ("searaft_s", "Tartan-C-T-TSKH-spring540x960-S.pth"): {
        "spring_test_1px": 3.904,
        "spring_test_epe": 0.377,
        "spring_test_fl": 1.389,
        "spring_test_wauc": 94.182,
    },
    ("searaft_m", "Tartan-C-T-TSKH-spring540x960-M.pth"): {
        "spring_test_1px": 3.686,
        "spring_test_epe": 0.363,
        "spring_test_fl": 1.347,
        "spring_test_wauc": 94.534,
    },
}

DEFAULT_CONFIG = {
    "scale": 0,
    "corr": "all_pairs",
    "var_min": 0.0,
    "var_max": 10.0,
    "dim": 128,
    "initial_dim": 64,
    "block_dims": (64, 128, 256),
}
BUILDERS = {"s": searaft_s, "m": searaft_m, "l": searaft_l}
DESCRIPTIONS = {
    "s": "SEA-RAFT (S) (Wang et al., ECCV 2024), ResNet-18 encoders, 4 iterations, learned per-pixel confidence",
    "m": "SEA-RAFT (M) (Wang et al., ECCV 2024), ResNet-34 encoders, 4 iterations, learned per-pixel confidence",
    "l": "SEA-RAFT (L) (Wang et al., ECCV 2024), the M weights with 12 iterations, learned per-pixel confidence",
}


def _spec(size: str) -> ModelSpec:
    builder = BUILDERS[size]

    def load_directory(
        uri: str,
        config: Mapping[str, Any],
        expected_sha256: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> tuple[SEARAFT, str]:
        return load_searaft_directory(builder, uri, config, expected_sha256, storage_options)

    return ModelSpec(
        name=f"searaft_{size}",
        builder=builder,
        description=DESCRIPTIONS[size],
        default_config={**DEFAULT_CONFIG, "iters": ITERS[size]},
        checkpoints=_checkpoints(size, PUBLISHED[size]),
        convert=convert_searaft_state,
        load_checkpoint=load_directory,
    )


SPECS = tuple(_spec(size) for size in ("s", "m", "l"))
