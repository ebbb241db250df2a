"""Reference outputs of the official GMFlow code for tests/test_gmflow.py, and the script that made them.

No weights are stored: :func:`seeded_state_dict` draws every tensor from one seeded generator in
sorted key order, so it fills any model with the official key names and shapes (ours or
haofeixu/gmflow's) with the same values, whatever order the model initializes in. The scales
(weights N(0, 1/fan_in), norm gains ≈ 0.3) keep the random network well conditioned: with the
official init, softmax logits reach the hundreds and the official code's own float32 output
moves by ~5e-4 between 1 and 2 CPU threads, too much to compare at 1e-4.

Regenerate tests/data/gmflow_reference.npz (needs a checkout of haofeixu/gmflow, never committed):

    .venv/bin/python -m tests.gmflow_reference /path/to/haofeixu/gmflow
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tests.conftest import TEST_DATA

FIXTURE = Path(__file__).parent / "data" / "gmflow_reference.npz"
SINTEL_CLEAN = TEST_DATA / "benchmarks/Sintel/training/clean/alley_1"  # FLOWLABEL_TEST_DATA (tests/conftest.py)
SEED = 0
SIZE = (60, 108)  # H, W: padded to 64×112 (gmflow) and 64×128 (gmflow_refine)

# name → official command-line settings (scripts/evaluate.sh)
CONFIGS = {
    "gmflow": {
        "num_scales": 1,
        "upsample_factor": 8,
        "padding_factor": 16,
        "attn_splits_list": [2],
        "corr_radius_list": [-1],
        "prop_radius_list": [-1],
    },
    "gmflow_refine": {
        "num_scales": 2,
        "upsample_factor": 4,
        "padding_factor": 32,
        "attn_splits_list": [2, 8],
        "corr_radius_list": [-1, 4],
        "prop_radius_list": [-1, 1],
    },
}
# The settings the official forward takes as arguments, not as constructor arguments.
SCALE_LISTS = ("attn_splits_list", "corr_radius_list", "prop_radius_list")


def seeded_state_dict(state: dict[str, torch.Tensor], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Same keys and shapes as ``state``, values drawn in sorted key order from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        shape = state[key].shape
        r = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            out[key] = r / shape[1:].numel() ** 0.5
        elif "norm" in key and key.endswith("weight"):
            out[key] = 0.3 * (1 + 0.1 * r)
        else:
            out[key] = 0.1 * r
    return out


def _sintel_pair() -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = SIZE
    images = []
    for frame in ("frame_0001.png", "frame_0002.png"):
        bgr = cv2.imread(str(SINTEL_CLEAN / frame))
        images.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA))
    return images[0], images[1]


class Official(NamedTuple):
    """An official model with the seeded weights, and ``flow(image0, image1, **extra)``: it called on unpadded
    B×3×H×W images, padded as the official evaluation → its last B×2×H×W flow (2B with ``pred_bidir_flow``)."""

    model: nn.Module
    flow: Callable[..., torch.Tensor]


def official_models(
    configs: dict[str, dict], build: Callable[[dict], nn.Module], settings: Callable[[dict], dict], input_padder: type
) -> dict[str, Official]:
    """name → the official model ``build(config)`` with the seeded weights, its forward given ``settings(config)``
    and the official ``InputPadder`` ('sintel' mode, the config's padding_factor)."""
    models = {}
    for name, cfg in configs.items():
        model = build(cfg).eval()
        model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
        models[name] = Official(model, _padded_flow(model, input_padder, cfg["padding_factor"], settings(cfg)))
    return models


def _padded_flow(model: nn.Module, input_padder: type, padding_factor: int, settings: dict) -> Callable:
    def flow(a: torch.Tensor, b: torch.Tensor, **extra) -> torch.Tensor:
        padder = input_padder(a.shape[-2:], padding_factor=padding_factor)
        return padder.unpad(model(*padder.pad(a, b), **settings, **extra)["flow_preds"][-1])

    return flow


def official_gmflow(official_root: str) -> dict[str, Official]:
    """The official GMFlow of each of :data:`CONFIGS`, from a checkout of haofeixu/gmflow."""
    sys.path.insert(0, official_root)
    from gmflow.gmflow import GMFlow  # noqa: PLC0415  (official code, run from a scratch checkout)
    from utils.utils import InputPadder  # noqa: PLC0415

    def build(cfg: dict) -> nn.Module:
        return GMFlow(num_scales=cfg["num_scales"], upsample_factor=cfg["upsample_factor"])

    return official_models(CONFIGS, build, lambda cfg: {k: cfg[k] for k in SCALE_LISTS}, InputPadder)


def write_fixture(path: Path, models: dict[str, Official]) -> None:
    """The Sintel pair and each model's keys, forward flow and the backward one of ``pred_bidir_flow`` → ``path``."""
    torch.set_num_threads(1)
    image0, image1 = _sintel_pair()
    arrays = {"image0": image0, "image1": image1}
    a, b = (torch.from_numpy(x).permute(2, 0, 1).float()[None] for x in (image0, image1))
    for name, official in models.items():
        arrays[f"{name}_keys"] = np.array([f"{k} {tuple(v.shape)}" for k, v in official.model.state_dict().items()])
        with torch.no_grad():
            arrays[f"{name}_forward"] = official.flow(a, b)[0].numpy()
            arrays[f"{name}_backward"] = official.flow(a, b, pred_bidir_flow=True)[1].numpy()
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    write_fixture(FIXTURE, official_gmflow(sys.argv[1]))
