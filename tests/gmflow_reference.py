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
from pathlib import Path

import numpy as np
import torch

from tests.conftest import TEST_DATA

FIXTURE = Path(__file__).parent / "data" / "gmflow_reference.npz"
SINTEL_CLEAN = TEST_DATA / "benchmarks/Sintel/training/clean/alley_1"  # FLOWLABEL_TEST_DATA (tests/conftest.py)
SEED = 0
SIZE = (60, 108)  # H, W: padded to 64×112 (gmflow) and 64×128 (gmflow_refine)

# name → official command-line settings (scripts/evaluate.sh)
CONFIGS = {
    "gmflow": {"num_scales": 1, "upsample_factor": 8, "padding_factor": 16,
               "attn_splits_list": [2], "corr_radius_list": [-1], "prop_radius_list": [-1]},
    "gmflow_refine": {"num_scales": 2, "upsample_factor": 4, "padding_factor": 32,
                      "attn_splits_list": [2, 8], "corr_radius_list": [-1, 4], "prop_radius_list": [-1, 1]},
}


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


def main(official_root: str) -> None:
    sys.path.insert(0, official_root)
    from gmflow.gmflow import GMFlow as Official  # noqa: PLC0415  (official code, run from a scratch checkout)
    from utils.utils import InputPadder  # noqa: PLC0415

    torch.set_num_threads(1)
    image0, image1 = _sintel_pair()
    arrays = {"image0": image0, "image1": image1}
    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()[None]  # noqa: E731
    for name, cfg in CONFIGS.items():
        model = Official(num_scales=cfg["num_scales"], upsample_factor=cfg["upsample_factor"]).eval()
        model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
        arrays[f"{name}_keys"] = np.array([f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()])
        # validate_sintel's padding (InputPadder, 'sintel' mode, padding_factor)
        padder = InputPadder(image0.shape[:2], padding_factor=cfg["padding_factor"])
        a, b = padder.pad(to_tensor(image0), to_tensor(image1))
        lists = {k: cfg[k] for k in ("attn_splits_list", "corr_radius_list", "prop_radius_list")}
        with torch.no_grad():
            forward = model(a, b, **lists)["flow_preds"][-1]
            both = model(a, b, pred_bidir_flow=True, **lists)["flow_preds"][-1]
        arrays[f"{name}_forward"] = padder.unpad(forward)[0].numpy()
        arrays[f"{name}_backward"] = padder.unpad(both)[1].numpy()
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
