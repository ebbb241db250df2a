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

from torch import nn

from tests.gmflow_reference import SCALE_LISTS, Official, official_models, write_fixture

FIXTURE = Path(__file__).parent / "data" / "unimatch_reference.npz"

# registry name → official command-line settings (scripts/gmflow_evaluate.sh)
SCALE2 = {
    "num_scales": 2,
    "upsample_factor": 4,
    "padding_factor": 32,
    "attn_splits_list": [2, 8],
    "corr_radius_list": [-1, 4],
    "prop_radius_list": [-1, 1],
}
CONFIGS = {
    "unimatch_scale1": {
        "num_scales": 1,
        "upsample_factor": 8,
        "padding_factor": 16,
        "attn_splits_list": [2],
        "corr_radius_list": [-1],
        "prop_radius_list": [-1],
        "reg_refine": False,
        "num_reg_refine": 1,
    },
    "unimatch_scale2": {**SCALE2, "reg_refine": False, "num_reg_refine": 1},
    "unimatch_scale2_regrefine6": {**SCALE2, "reg_refine": True, "num_reg_refine": 6},
}


def official_unimatch(official_root: str) -> dict[str, Official]:
    """The official UniMatch flow model of each of :data:`CONFIGS`, from a copy of autonomousvision/unimatch."""
    sys.path.insert(0, official_root)
    from unimatch.unimatch import UniMatch  # noqa: PLC0415  (official code, from a scratch copy)
    from utils.utils import InputPadder  # noqa: PLC0415

    def build(cfg: dict) -> nn.Module:
        return UniMatch(
            num_scales=cfg["num_scales"],
            upsample_factor=cfg["upsample_factor"],
            reg_refine=cfg["reg_refine"],
            task="flow",
        )

    def settings(cfg: dict) -> dict:
        return {"attn_type": "swin", "task": "flow", **{k: cfg[k] for k in (*SCALE_LISTS, "num_reg_refine")}}

    return official_models(CONFIGS, build, settings, InputPadder)


if __name__ == "__main__":
    write_fixture(FIXTURE, official_unimatch(sys.argv[1]))
