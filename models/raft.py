"""RAFT: Recurrent All-Pairs Field Transforms (Teed & Deng, ECCV 2020, arXiv:2003.12039).

A clean re-implementation of princeton-vl/RAFT's inference path with the same module and
parameter names, so its released checkpoints (``module.``-prefixed DataParallel state_dicts)
load unchanged after :func:`models.raft_convert.convert_raft_state`, which also accepts
torchvision's RAFT weights. Flow on CPU float32 equals the official code's to float rounding.

Shapes: images B×3×H×W RGB in [0, 255] (H, W multiples of 8 inside :meth:`RAFT.predict`);
features and flow are estimated on the 1/8 grid h×w = H/8×W/8, then upsampled ×8; flow is in
pixels of the input, channel 0 = x (right), 1 = y (down).

Differences from the official forward (``test_mode=True``), none of which changes its output
where it has one:
  * the upsampling (mask head, convex combination) runs once after the last iteration instead
    of after every one, since inference only returns the last flow;
  * inputs smaller than 128 px on a side are replicate-padded to 128 inside :meth:`predict`:
    the 4-level pyramid needs ≥ 2 pixels per axis at 1/64 scale, and below that the official
    code returns NaN (64–127 px) or raises (< 64 px); torchvision documents ``min_size=(128, 128)``;
  * ``corr="on_demand"`` selects :class:`models.raft_corr.OnDemandCorrelation` (the official
    ``alternate_corr`` needs its CUDA extension);
  * no ``flow_init`` warm start (the official Sintel submission's sequence state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .contract import PairwiseFlowModel, frames_used
from .raft_convert import convert_raft_state
from .raft_corr import CORRELATIONS, min_feature_size
from .registry import C_T, C_T_SKHT, C_T_SKHT_K, Checkpoint, ModelSpec, sintel_test_scores, train_scores

NORMS = ("batch", "instance", "none")
PAD_MODES = ("sintel", "kitti")
DOWNSAMPLE = 8  # the encoders' stride: flow is estimated on the 1/8 grid


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3×3 conv-norm-ReLU layers with a (projected) skip connection; RAFT's large encoders."""

    def __init__(self, in_planes: int, planes: int, *, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = _norm(norm, planes)
        self.norm2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), _norm(norm, planes)
            )
            # The official block registers this norm twice (as norm3 and inside downsample), so
            # its checkpoints carry both keys; the alias lets them load strictly.
            self.norm3 = self.downsample[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1×1 → 3×3 → 1×1 conv-norm-ReLU at a quarter of the width, with a skip; RAFT-small's encoders."""

    def __init__(self, in_planes: int, planes: int, *, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1)
        self.norm1 = _norm(norm, planes // 4)
        self.norm2 = _norm(norm, planes // 4)
        self.norm3 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), _norm(norm, planes)
            )
            self.norm4 = self.downsample[1]  # registered twice, as in ResidualBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


BLOCKS = {"residual": ResidualBlock, "bottleneck": BottleneckBlock}


class Encoder(nn.Module):
    """Feature / context encoder: B×3×H×W in [-1, 1] → B×``out_dim``×H/8×W/8.

    ``widths`` = (stem, layer1, layer2, layer3); the stem and layer2, layer3 halve the resolution.
    """

    def __init__(self, *, block: str, widths: tuple[int, int, int, int], out_dim: int, norm: str):
        super().__init__()
        make_block = BLOCKS[block]
        stem, *stages = widths
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.norm1 = _norm(norm, stem)
        self.relu1 = nn.ReLU(inplace=True)
        in_planes = stem
        for i, (planes, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            first = make_block(in_planes, planes, norm=norm, stride=stride)
            layer = nn.Sequential(first, make_block(planes, planes, norm=norm))
            self.add_module(f"layer{i}", layer)
            in_planes = planes
        self.conv2 = nn.Conv2d(in_planes, out_dim, kernel_size=1)
        # Official initialization, so that random-init runs (tests, benchmarks) behave like an untrained RAFT.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class MotionEncoder(nn.Module):
    """Correlation features and current flow → motion features (``out_dim`` channels, the last two
    of which are the flow itself)."""

    def __init__(self, *, corr_channels: int, corr_widths: tuple[int, ...], flow_widths: tuple[int, int], out_dim: int):
        super().__init__()
        if len(corr_widths) not in (1, 2):
            raise ValueError(f"corr_widths: expected 1 or 2 widths, got {corr_widths}")
        self.convc1 = nn.Conv2d(corr_channels, corr_widths[0], kernel_size=1)
        self.convc2 = None
        if len(corr_widths) == 2:
            self.convc2 = nn.Conv2d(corr_widths[0], corr_widths[1], kernel_size=3, padding=1)
        self.convf1 = nn.Conv2d(2, flow_widths[0], kernel_size=7, padding=3)
        self.convf2 = nn.Conv2d(flow_widths[0], flow_widths[1], kernel_size=3, padding=1)
        self.conv = nn.Conv2d(corr_widths[-1] + flow_widths[1], out_dim - 2, kernel_size=3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        if self.convc2 is not None:
            cor = F.relu(self.convc2(cor))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


def _gru_step(h: torch.Tensor, x: torch.Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> torch.Tensor:
    """One convolutional GRU update of hidden state ``h`` with input ``x``."""
    hx = torch.cat([h, x], dim=1)
    z = torch.sigmoid(convz(hx))
    r = torch.sigmoid(convr(hx))
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return (1 - z) * h + z * q


class ConvGRU(nn.Module):
    """GRU with 3×3 convolutions (RAFT-small)."""

    def __init__(self, *, hidden_dim: int, input_dim: int):
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size=3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size=3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _gru_step(h, x, self.convz, self.convr, self.convq)


class SepConvGRU(nn.Module):
    """Two GRU updates, with 1×5 then 5×1 convolutions: a 5×5 receptive field for less compute (RAFT)."""

    def __init__(self, *, hidden_dim: int, input_dim: int):
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(channels, hidden_dim, kernel_size=(1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(channels, hidden_dim, kernel_size=(1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(channels, hidden_dim, kernel_size=(1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(channels, hidden_dim, kernel_size=(5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(channels, hidden_dim, kernel_size=(5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(channels, hidden_dim, kernel_size=(5, 1), padding=(2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = _gru_step(h, x, self.convz1, self.convr1, self.convq1)
        return _gru_step(h, x, self.convz2, self.convr2, self.convq2)


GRUS = {"conv": ConvGRU, "sep_conv": SepConvGRU}


class FlowHead(nn.Module):
    """Hidden state → B×2×h×w flow update (1/8-grid pixels)."""

    def __init__(self, *, in_dim: int, hidden_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, hidden_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """One refinement step: (hidden, context, correlation, flow) → (new hidden, flow update).

    ``mask`` (large model only) predicts the convex-upsampling weights from the hidden state;
    RAFT-small upsamples bilinearly instead.
    """

    def __init__(self, *, encoder: MotionEncoder, gru: nn.Module, flow_head: FlowHead, mask: nn.Module | None):
        super().__init__()
        self.encoder = encoder
        self.gru = gru
        self.flow_head = flow_head
        self.mask = mask

    def forward(
        self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, self.flow_head(net)


@dataclass(frozen=True)
class RAFTArch:
    """Architecture hyperparameters; the two official ones are ``LARGE`` and ``SMALL``."""

    block: str  # encoder block: "residual" or "bottleneck"
    encoder_widths: tuple[int, int, int, int]
    feature_dim: int
    hidden_dim: int
    context_dim: int
    context_norm: str
    corr_levels: int
    corr_radius: int
    motion_corr_widths: tuple[int, ...]
    motion_flow_widths: tuple[int, int]
    motion_dim: int
    gru: str  # "conv" or "sep_conv"
    flow_head_dim: int
    convex_upsampling: bool


LARGE = RAFTArch(
    block="residual",
    encoder_widths=(64, 64, 96, 128),
    feature_dim=256,
    hidden_dim=128,
    context_dim=128,
    context_norm="batch",
    corr_levels=4,
    corr_radius=4,
    motion_corr_widths=(256, 192),
    motion_flow_widths=(128, 64),
    motion_dim=128,
    gru="sep_conv",
    flow_head_dim=256,
    convex_upsampling=True,
)

SMALL = RAFTArch(
    block="bottleneck",
    encoder_widths=(32, 32, 64, 96),
    feature_dim=128,
    hidden_dim=96,
    context_dim=64,
    context_norm="none",
    corr_levels=4,
    corr_radius=3,
    motion_corr_widths=(96,),
    motion_flow_widths=(64, 32),
    motion_dim=82,
    gru="conv",
    flow_head_dim=128,
    convex_upsampling=False,
)

# The convex-upsampling logits are scaled by 0.25 "to balance gradients" in the official code
# (princeton-vl/RAFT#24); at inference it sets the softmax temperature, so it must stay.
MASK_SCALE = 0.25


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


def coords_grid(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """B×2×h×w pixel coordinates (x, y) of the grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(batch, 1, 1, 1)


def upsample_bilinear(flow: torch.Tensor) -> torch.Tensor:
    """B×2×h×w flow on the 1/8 grid → B×2×8h×8w pixels, bilinear (RAFT-small)."""
    h, w = flow.shape[-2:]
    return DOWNSAMPLE * F.interpolate(flow, size=(DOWNSAMPLE * h, DOWNSAMPLE * w), mode="bilinear", align_corners=True)


def upsample_convex(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B×2×h×w flow, B×(9·8·8)×h×w logits → B×2×8h×8w: each full-resolution pixel is a convex
    combination of its 3×3 coarse neighbours (paper Sec. 3.3, appendix B)."""
    b, _, h, w = flow.shape
    k = DOWNSAMPLE
    weights = torch.softmax(mask.view(b, 1, 9, k, k, h, w), dim=2)
    neighbours = F.unfold(k * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = torch.sum(weights * neighbours, dim=2)  # B×2×k×k×h×w
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, k * h, k * w)


class RAFT(PairwiseFlowModel):
    """RAFT flow model; build it with :func:`raft_large` or :func:`raft_small`.

    ``iters``: refinement iterations (official evaluation: 32 on Sintel, 24 on KITTI and Chairs).
    ``corr``: "all_pairs" (official) or "on_demand" (same output up to float rounding). The
    all-pairs pyramid takes 4·(H·W/64)²·~1.33 bytes per pair: 0.35 GB at 540p, 5.56 GB at 1080p,
    89.2 GB at 4K (:func:`models.raft_corr.all_pairs_bytes`); on-demand memory is linear in H·W
    but each lookup recomputes its dot products (slower, most of all on CPU).
    ``pad_mode``: "sintel" or "kitti" padding, as the official InputPadder.
    """

    pad_multiple = DOWNSAMPLE

    def __init__(self, *, arch: RAFTArch, iters: int, corr: str, pad_mode: str):
        super().__init__()
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
            raise ValueError(f"iters: expected an integer ≥ 1, got {iters!r}")
        if corr not in CORRELATIONS:
            raise ValueError(f"corr: expected one of {sorted(CORRELATIONS)}, got {corr!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode: expected one of {PAD_MODES}, got {pad_mode!r}")
        self.arch, self.iters, self.corr, self.pad_mode = arch, iters, corr, pad_mode
        self.fnet = Encoder(block=arch.block, widths=arch.encoder_widths, out_dim=arch.feature_dim, norm="instance")
        context_dim = arch.hidden_dim + arch.context_dim  # split into the GRU's initial state and its context input
        self.cnet = Encoder(block=arch.block, widths=arch.encoder_widths, out_dim=context_dim, norm=arch.context_norm)
        encoder = MotionEncoder(
            corr_channels=arch.corr_levels * (2 * arch.corr_radius + 1) ** 2,
            corr_widths=arch.motion_corr_widths,
            flow_widths=arch.motion_flow_widths,
            out_dim=arch.motion_dim,
        )
        gru = GRUS[arch.gru](hidden_dim=arch.hidden_dim, input_dim=arch.motion_dim + arch.context_dim)
        mask = None
        if arch.convex_upsampling:
            mask = nn.Sequential(
                nn.Conv2d(arch.hidden_dim, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 9 * DOWNSAMPLE**2, kernel_size=1),
            )
        flow_head = FlowHead(in_dim=arch.hidden_dim, hidden_dim=arch.flow_head_dim)
        self.update_block = UpdateBlock(encoder=encoder, gru=gru, flow_head=flow_head, mask=mask)
        self.min_size = DOWNSAMPLE * min_feature_size(arch.corr_levels)

    def _flows(self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """M×2×H×W flow from frames[first[i]] to frames[second[i]] (N×3×H×W, multiples of 8)."""
        h, w = frames.shape[-2:]
        pad_h, pad_w = max(self.min_size - h, 0), max(self.min_size - w, 0)
        if not (pad_h or pad_w):
            return self._estimate(frames, first, second)
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        flow = self._estimate(F.pad(frames, pads, mode="replicate"), first, second)
        return flow[..., pads[2] : pads[2] + h, pads[0] : pads[0] + w]

    def _encode(
        self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of frames[first] and frames[second], GRU state and context of frames[first].

        Each encoder sees each frame it needs once: the context only of frames that start a pair.
        """
        arch = self.arch
        frames, (first_f, second_f) = frames_used(frames, first, second)
        images = 2 * (frames / 255.0) - 1.0
        fmaps = self.fnet(images).float()
        images, (first_c,) = frames_used(images, first_f)
        net, inp = torch.split(self.cnet(images)[first_c], [arch.hidden_dim, arch.context_dim], dim=1)
        return fmaps[first_f], fmaps[second_f], torch.tanh(net), torch.relu(inp)

    def _estimate(self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        arch = self.arch
        fmap0, fmap1, net, inp = self._encode(frames, first, second)
        # Correlation in float32 even under autocast, as the official code: dot products of
        # 256-d features lose too much in float16/bfloat16.
        with _no_autocast(fmap0):
            lookup = CORRELATIONS[self.corr](fmap0, fmap1, levels=arch.corr_levels, radius=arch.corr_radius)

        b, _, h, w = fmap0.shape
        coords0 = coords_grid(b, h, w, fmap0.device)
        coords1 = coords0.clone()
        for _ in range(self.iters):
            with _no_autocast(coords1):
                corr = lookup(coords1)
            net, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta.float()

        flow = coords1 - coords0
        if self.update_block.mask is None:
            with _no_autocast(flow):
                return upsample_bilinear(flow)
        mask = MASK_SCALE * self.update_block.mask(net)
        with _no_autocast(flow):
            return upsample_convex(flow, mask.float())


def raft_large(*, iters: int = 32, corr: str = "all_pairs", pad_mode: str = "sintel") -> RAFT:
    """RAFT (5.3 M parameters): the raft-{chairs,things,sintel,kitti}.pth checkpoints."""
    return RAFT(arch=LARGE, iters=iters, corr=corr, pad_mode=pad_mode)


def raft_small(*, iters: int = 32, corr: str = "all_pairs", pad_mode: str = "sintel") -> RAFT:
    """RAFT-small (1.0 M parameters): the raft-small.pth checkpoint."""
    return RAFT(arch=SMALL, iters=iters, corr=corr, pad_mode=pad_mode)


# --- registry records ---------------------------------------------------------------------

# download_models.sh (princeton-vl/RAFT @ 3fa0bb0 and later): one zip holding all five .pth files.
OFFICIAL_URL = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
OFFICIAL_SOURCE = "RAFT paper (Teed & Deng, ECCV 2020, arXiv:2003.12039v3) Table 1"
TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_SOURCE = (
    "torchvision docs, Raft_Large_Weights / Raft_Small_Weights metrics (references/optical_flow evaluation; "
    "kitti_train_epe is their per_image_epe)"
)

# Official evaluate.py: Sintel iters=32 with centred padding, KITTI iters=24 with bottom padding,
# FlyingChairs iters=24 (384×512 needs no padding). torchvision's references use the same.
SINTEL_EVAL = {"iters": 32, "pad_mode": "sintel"}
KITTI_EVAL = {"iters": 24, "pad_mode": "kitti"}
CHAIRS_EVAL = {"iters": 24, "pad_mode": "sintel"}
BENCHMARKS = {"sintel": SINTEL_EVAL, "kitti": KITTI_EVAL, "chairs": CHAIRS_EVAL}


def _official(filename: str, trained_on: str, published: dict[str, float], **fields) -> Checkpoint:
    return Checkpoint(
        name=filename.removesuffix(".pth"),
        filename=filename,
        url=OFFICIAL_URL,
        trained_on=trained_on,
        benchmark_config=BENCHMARKS,
        published=published,
        **{"eval_config": SINTEL_EVAL, "source": OFFICIAL_SOURCE, **fields},
    )


def _torchvision(filename: str, trained_on: str, published: dict[str, float], **fields) -> Checkpoint:
    # sha256 stays unknown: torchvision publishes only its first 8 hex digits, in the file name.
    return Checkpoint(
        name=filename.split("-")[0],
        filename=filename,
        url=TORCHVISION_URL + filename,
        trained_on=trained_on,
        benchmark_config=BENCHMARKS,
        published=published,
        source=TORCHVISION_SOURCE,
        **{"eval_config": SINTEL_EVAL, **fields},
    )


LARGE_CHECKPOINTS = (
    _official("raft-chairs.pth", "FlyingChairs (C)", {}, eval_config=CHAIRS_EVAL, source="no published score"),
    _official("raft-things.pth", C_T, train_scores(1.43, 2.71, 5.04, 17.4)),
    _official(
        "raft-sintel.pth",
        C_T_SKHT,
        sintel_test_scores(1.94, 3.18),
        # The paper's warm-start row (1.61 / 2.86) initializes each frame from the previous flow.
        source=OFFICIAL_SOURCE + ", without warm start",
    ),
    _official("raft-kitti.pth", C_T_SKHT_K, {"kitti_test_fl_all": 5.10}, eval_config=KITTI_EVAL),
    _torchvision(
        "raft_large_C_T_V1-22a6c225.pth",
        C_T + ", ported from raft-things.pth",
        train_scores(1.4411, 2.7894, 5.0172, 17.4506),
    ),
    _torchvision(
        "raft_large_C_T_V2-1bb1363a.pth",
        C_T + ", retrained by torchvision",
        train_scores(1.3822, 2.7161, 4.5118, 16.0679),
    ),
    _torchvision(
        "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
        C_T_SKHT + ", ported from raft-sintel.pth",
        sintel_test_scores(1.94, 3.18),
    ),
    _torchvision(
        "raft_large_C_T_SKHT_V2-ff5fadd5.pth", C_T_SKHT + ", retrained by torchvision", sintel_test_scores(1.819, 3.067)
    ),
    _torchvision(
        "raft_large_C_T_SKHT_K_V1-4a6a5039.pth",
        C_T_SKHT_K + ", ported from raft-kitti.pth",
        {"kitti_test_fl_all": 5.10},
        eval_config=KITTI_EVAL,
    ),
    _torchvision(
        "raft_large_C_T_SKHT_K_V2-b5c70766.pth",
        C_T_SKHT_K + ", retrained by torchvision",
        {"kitti_test_fl_all": 5.19},
        eval_config=KITTI_EVAL,
    ),
)

SMALL_CHECKPOINTS = (
    _official(
        "raft-small.pth",
        C_T,
        train_scores(2.21, 3.35, 7.51, 26.9),
        sha256="c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332",
    ),
    _torchvision(
        "raft_small_C_T_V1-ad48884c.pth",
        C_T + ", ported from raft-small.pth",
        train_scores(2.1231, 3.2790, 7.6557, 25.2801),
    ),
    _torchvision(
        "raft_small_C_T_V2-01064c6d.pth",
        C_T + ", retrained by torchvision",
        train_scores(1.9901, 3.2831, 7.5978, 25.2369),
    ),
)

DEFAULT_CONFIG = {"iters": 32, "corr": "all_pairs", "pad_mode": "sintel"}

SPECS = (
    ModelSpec(
        name="raft_large",
        builder=raft_large,
        description="RAFT (Teed & Deng, ECCV 2020), 5.3 M parameters; official and torchvision weights",
        default_config=DEFAULT_CONFIG,
        checkpoints=LARGE_CHECKPOINTS,
        convert=convert_raft_state,
    ),
    ModelSpec(
        name="raft_small",
        builder=raft_small,
        description="RAFT-small (Teed & Deng, ECCV 2020), 1.0 M parameters; official and torchvision weights",
        default_config=DEFAULT_CONFIG,
        checkpoints=SMALL_CHECKPOINTS,
        convert=convert_raft_state,
    ),
)
