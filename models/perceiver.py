"""Perceiver IO optical flow (Jaegle et al., ICLR 2022, arXiv:2107.14795), through HuggingFace ``transformers``.

The network is ``transformers.PerceiverForOpticalFlow``, not a re-implementation; its released
weights (``deepmind/optical-flow-perceiver``, a HuggingFace model directory) load with
:func:`load_perceiver_io`, which takes the architecture from the directory's ``config.json``:
``PerceiverConfig()``'s defaults are the *language* model's, so nothing here builds a flow
network from them.

The network sees fixed 368×496 windows (``config.train_size``) of both frames, each pixel
represented by its 3×3 neighbourhood in both frames (2 × 27 = 54 values). Any frame size works
as in DeepMind's optical-flow colab (deepmind-research ``perceiver/colabs/optical_flow.ipynb``):
overlapping windows, blended with tent weights (:mod:`models.tiling`); frames smaller than a
window are first replicate-padded to it (the colab leaves that to the user: "pad or resize").
Windows of all pairs in a call are batched together, ``tile_batch`` at a time.

Input and output scaling, from the same colab and the HuggingFace demo of this checkpoint
(huggingface.co/spaces/nielsr/perceiver-optical-flow, ``app.py``):
  * ``normalize(im) = im / 255 * 2 − 1`` (RGB in [−1, 1]);
  * 3×3 patches of each normalized frame, zero-padded at the window border
    (``io_processors.patches_for_flow``), channels in ``tf.image.extract_patches`` order
    (patch row, patch column, RGB);
  * the decoder divides its output by ``rescale_factor = 100`` (inside transformers'
    ``PerceiverOpticalFlowDecoder``), and the colab multiplies by ``FLOW_SCALE_FACTOR = 20``:
    pixels = logits × 20.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .contract import FlowModel
from .hf_directory import load_pretrained
from .registry import Checkpoint, ModelSpec
from .tiling import TileGrid

PAD_MODES = ("sintel", "kitti")
FLOW_SCALE = 20.0  # colab FLOW_SCALE_FACTOR; see the module docstring
PATCH = 3  # each pixel is fed with its 3×3 neighbourhood

# config.json of deepmind/optical-flow-perceiver (unchanged since its first commit 18592a2): the
# released architecture, used to build a randomly initialised network (tests of speed, FLOPs).
# Checkpoints are always built from their own config.json.
RELEASE_CONFIG: Mapping[str, Any] = {
    "num_latents": 2048,
    "d_latents": 512,
    "d_model": 322,
    "num_blocks": 1,
    "num_self_attends_per_block": 24,
    "num_self_attention_heads": 16,
    "num_cross_attention_heads": 1,
    "qk_channels": None,
    "v_channels": None,
    "cross_attention_shape_for_attention": "kv",
    "self_attention_widening_factor": 1,
    "cross_attention_widening_factor": 1,
    "hidden_act": "gelu",
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "use_query_residual": True,
    "train_size": [368, 496],
    "architectures": ["PerceiverForOpticalFlow"],
}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 255] → [−1, 1], as the colab's ``normalize``."""
    return images / 255.0 * 2 - 1


def flow_patches(frames: torch.Tensor) -> torch.Tensor:
    """B×2×3×H×W normalized frame pairs → B×2×27×H×W network input.

    Channel (3·(3·row + col) + rgb) holds the pixel at offset (row − 1, col − 1), zero outside
    the window: the colab's ``patches_for_flow`` (``tf.image.extract_patches`` order).
    """
    b, t, c, h, w = frames.shape
    # unfold orders its channels (rgb, row, col); move rgb innermost.
    cols = F.unfold(frames.reshape(b * t, c, h, w), kernel_size=PATCH, padding=PATCH // 2)
    cols = cols.view(b, t, c, PATCH * PATCH, h, w).transpose(2, 3)
    return cols.reshape(b, t, PATCH * PATCH * c, h, w)


class PerceiverIOFlow(FlowModel):
    """Perceiver IO flow on frames of any size; build with :func:`perceiver_io` or :func:`load_perceiver_io`.

    ``network``: a ``transformers.PerceiverForOpticalFlow``; its ``config.train_size`` is the window size.
    ``tile_batch``: windows per network call. Memory is dominated by the 2048 × 182,528 attention
    matrices of each 368×496 window (~1.5 GB each in float32, in the encoder and in the decoder):
    one window on CPU peaked at 4.5 GB resident, model included.
    ``min_overlap``: minimum overlap of neighbouring windows in pixels (colab: 20).
    ``pad_mode``: where frames smaller than a window are padded: "sintel" (centred) or "kitti"
    (height at the bottom), as the other models' official padders.
    """

    def __init__(
        self, *, network: torch.nn.Module, tile_batch: int = 4, min_overlap: int = 20, pad_mode: str = "sintel"
    ):
        super().__init__()
        if not isinstance(tile_batch, int) or isinstance(tile_batch, bool) or tile_batch < 1:
            raise ValueError(f"tile_batch: expected an integer ≥ 1, got {tile_batch!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode: expected one of {PAD_MODES}, got {pad_mode!r}")
        self.network = network
        self.tile = tuple(int(s) for s in network.config.train_size)
        if not isinstance(min_overlap, int) or not 0 <= min_overlap < min(self.tile):
            raise ValueError(f"min_overlap: expected an integer in [0, {min(self.tile)}), got {min_overlap!r}")
        self.tile_batch, self.min_overlap, self.pad_mode = tile_batch, min_overlap, pad_mode

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) replicate padding that makes the frame at least one window."""
        ph, pw = max(self.tile[0] - height, 0), max(self.tile[1] - width, 0)
        if self.pad_mode == "kitti":
            return pw // 2, pw - pw // 2, 0, ph
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float RGB in [0, 255] (any H, W) → B×2×H×W flow in pixels."""
        b, _, h, w = image0.shape
        left, right, top, bottom = pads = self._pads(h, w)
        frames = torch.stack([image0, image1], dim=1)  # B×2×3×H×W
        if any(pads):
            frames = F.pad(frames.flatten(1, 2), pads, mode="replicate").unflatten(1, (2, 3))
        grid = TileGrid(frames.shape[-2], frames.shape[-1], self.tile, self.min_overlap)
        frames = normalize(frames)
        (th, tw), origins = self.tile, grid.origins
        # Windows of every pair in one queue, cut only when their batch runs: memory stays at one batch.
        jobs = [(pair, y, x) for pair in range(b) for y, x in origins]
        flows = torch.cat(
            [
                self._window_flow(torch.stack([frames[p, ..., y : y + th, x : x + tw] for p, y, x in batch]))
                for batch in (jobs[i : i + self.tile_batch] for i in range(0, len(jobs), self.tile_batch))
            ]
        ).unflatten(0, (b, len(origins)))
        flow = torch.stack([grid.blend(tiles) for tiles in flows])
        return flow[..., top : top + h, left : left + w]

    def _window_flow(self, windows: torch.Tensor) -> torch.Tensor:
        """N×2×3×th×tw normalized windows → N×2×th×tw flow in pixels."""
        logits = self.network(inputs=flow_patches(windows)).logits  # N×th×tw×2
        return (logits * FLOW_SCALE).permute(0, 3, 1, 2).float()


def perceiver_io(
    *,
    tile_batch: int = 4,
    min_overlap: int = 20,
    pad_mode: str = "sintel",
    network_config: Mapping[str, Any] | None = None,
) -> PerceiverIOFlow:
    """The released architecture (41.1 M parameters) with random weights, or with ``network_config``'s
    PerceiverConfig fields changed (tiny networks for tests). Checkpoints load with
    :func:`load_perceiver_io` (``load_model(..., checkpoint=DIR)``), their architecture from config.json."""
    from transformers import PerceiverConfig, PerceiverForOpticalFlow

    network = PerceiverForOpticalFlow(PerceiverConfig(**{**RELEASE_CONFIG, **(network_config or {})})).eval()
    return PerceiverIOFlow(network=network, tile_batch=tile_batch, min_overlap=min_overlap, pad_mode=pad_mode)


# --- registry records ---------------------------------------------------------------------

HUB_ID = "deepmind/optical-flow-perceiver"
# refs/pr/1 of the Hub repository, merged into main (9c7927a) as "Adding `safetensors` variant":
# config.json and pytorch_model.bin unchanged since the first commit 18592a2, plus model.safetensors.
HUB_REVISION = "3aa2a2f19ab717dae518732f21e0fc119230ccf8"
SAFETENSORS_SHA256 = "fcfa0b3bf2801006764051216407c1fed359f6611dc377cf0ebe762b5848cf85"
PYTORCH_BIN_SHA256 = "3633a73cec625d7d5fcf77a087893d8035da26e74f4083a99b45db35734455dd"
# The same weights serialized twice; a directory holding either one is the release.
EQUIVALENT_SHA256 = {SAFETENSORS_SHA256: (PYTORCH_BIN_SHA256,)}
PAPER_TABLE4 = (
    "Perceiver IO paper (Jaegle et al., ICLR 2022, arXiv:2107.14795) Table 4, "
    "also on the model card; trained on AutoFlow only, so Sintel and KITTI training sets are unseen"
)


def load_perceiver_io(
    uri: str,
    config: Mapping[str, Any],
    expected_sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[PerceiverIOFlow, str]:
    """A HuggingFace ``PerceiverForOpticalFlow`` directory (local path or fsspec URI, read offline)
    → (model with ``config``'s settings, sha256 of the weights file)."""
    from transformers import PerceiverForOpticalFlow

    settings = dict(config)
    if settings.pop("network_config", None):
        raise ValueError(
            f"network_config: the architecture of {uri} comes from its config.json; "
            "expected no network_config with a checkpoint"
        )
    loaded = load_pretrained(
        PerceiverForOpticalFlow,
        uri,
        expected_sha256=expected_sha256,
        equivalent_sha256=EQUIVALENT_SHA256.get(expected_sha256 or "", ()),
        storage_options=storage_options,
    )
    return PerceiverIOFlow(network=loaded.model, **settings), loaded.sha256


SPECS = (
    ModelSpec(
        name="perceiver_io",
        builder=perceiver_io,
        description="Perceiver IO optical flow (Jaegle et al., ICLR 2022), 41 M parameters; HuggingFace "
        "transformers, 368×496 windows blended over any frame size",
        default_config={"tile_batch": 4, "min_overlap": 20, "pad_mode": "sintel", "network_config": None},
        checkpoints=(
            Checkpoint(
                name="optical-flow-perceiver",
                filename="optical-flow-perceiver",  # the folder `huggingface-cli download --local-dir` makes
                url=f"https://huggingface.co/{HUB_ID}/tree/{HUB_REVISION}",
                sha256=SAFETENSORS_SHA256,
                trained_on="AutoFlow (400k synthetic pairs)",
                published={"sintel_train_clean_epe": 1.81, "sintel_train_final_epe": 2.42, "kitti_train_epe": 4.98},
                source=PAPER_TABLE4,
            ),
        ),
        load_checkpoint=load_perceiver_io,
    ),
)
