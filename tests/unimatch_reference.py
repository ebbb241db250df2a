"""Reference outputs of the official UniMatch code for tests/test_unimatch.py, and the script that made them.

No weights are stored: ``tests.gmflow_reference.seeded_state_dict`` draws every tensor from one seeded
generator in sorted key order, so it fills any model with the official key names and shapes (ours or
autonomousvision/unimatch's) with the same values. The input pair is the one of the GMFlow fixture
(Sintel clean alley_1 frames 1→2 resized to 60×108), stored again here so the fixtures stay independent.

Regenerate tests/data/unimatch_reference.npz (needs a copy of autonomousvision/unimatch's ``unimatch/`` and
``utils/`` folders, never committed):

    .venv/bin/python -m tests.unimatch_reference /path/to/autonomousvision/unimatch
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tests.gmflow_reference import SEED, _sintel_pair, seeded_state_dict

FIXTURE = Path(__file__).parent / "data" / "unimatch_reference.npz"

# registry name → official command-line settings (scripts/gmflow_evaluate.sh)
SCALE2 = {"num_scales": 2, "upsample_factor": 4, "padding_factor": 32,
          "attn_splits_list": [2, 8], "corr_radius_list": [-1, 4], "prop_radius_list": [-1, 1]}
CONFIGS = {
    "unimatch_scale1": {"num_scales": 1, "upsample_factor": 8, "padding_factor": 16, "attn_splits_list": [2],
                        "corr_radius_list": [-1], "prop_radius_list": [-1], "reg_refine": False, "num_reg_refine": 1},
    "unimatch_scale2": {**SCALE2, "reg_refine": False, "num_reg_refine": 1},
    "unimatch_scale2_regrefine6": {**SCALE2, "reg_refine": True, "num_reg_refine": 6},
}


def main(official_root: str) -> None:
    sys.path.insert(0, official_root)
    from unimatch.unimatch import UniMatch as Official  # noqa: PLC0415  (official code, from a scratch copy)
    from utils.utils import InputPadder  # noqa: PLC0415

    torch.set_num_threads(1)
    image0, image1 = _sintel_pair()
    arrays = {"image0": image0, "image1": image1}
    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()[None]  # noqa: E731
    for name, cfg in CONFIGS.items():
        model = Official(num_scales=cfg["num_scales"], upsample_factor=cfg["upsample_factor"],
                         reg_refine=cfg["reg_refine"], task="flow").eval()
        model.load_state_dict(seeded_state_dict(model.state_dict(), seed=SEED), strict=True)
        arrays[f"{name}_keys"] = np.array([f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()])
        # evaluate_flow.py validate_sintel's padding (InputPadder, 'sintel' mode, padding_factor)
        padder = InputPadder(image0.shape[:2], padding_factor=cfg["padding_factor"])
        a, b = padder.pad(to_tensor(image0), to_tensor(image1))
        settings = {k: cfg[k] for k in ("attn_splits_list", "corr_radius_list", "prop_radius_list", "num_reg_refine")}
        with torch.no_grad():
            forward = model(a, b, attn_type="swin", task="flow", **settings)["flow_preds"][-1]
            both = model(a, b, attn_type="swin", task="flow", pred_bidir_flow=True, **settings)["flow_preds"][-1]
        arrays[f"{name}_forward"] = padder.unpad(forward)[0].numpy()
        arrays[f"{name}_backward"] = padder.unpad(both)[1].numpy()
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
