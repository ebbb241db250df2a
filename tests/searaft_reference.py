"""Reference outputs of the official SEA-RAFT code for tests/test_searaft.py, and the script that made them.

No weights are stored: :func:`seeded_state` draws every tensor from one seeded generator in sorted
key order, so it fills any model with the official key names and shapes (ours or
princeton-vl/SEA-RAFT's) with the same values, whatever order the model initializes in. Scales:
weights N(0, 1/fan_in), norm gains ≈ 0.3, BatchNorm running variances ≈ 1, and the ConvNeXt layer
scales ≈ 0.3 (the official 1e-6 init would make the refinement a no-op); the flow head's four
uncertainty rows are scaled up so that the predicted log-scales spread over several units (with
these seeds the S network's confidence then spans 0.17–1; M's wide component stays at log b ≤ 0).

The networks are the official S / M / L structures (ResNet-18 or ResNet-34 encoders, 4 or 12
iterations) at reduced widths, so that the official code runs in seconds on a busy CPU; the
full-width key lists are stored too. Each case runs the official ``calc_flow`` (resize by
2**scale, ``RAFT.forward(test_mode=True)``, resize back) in both directions.

Regenerate tests/data/searaft_reference.npz (needs a checkout of princeton-vl/SEA-RAFT, never
committed, and a stub ``scipy`` package on PYTHONPATH: the official utils import
``scipy.interpolate`` for training-only helpers; ``scipy/__init__.py`` holding ``interpolate = None``
is enough):

    PYTHONPATH=/path/to/stub .venv/bin/python -m tests.searaft_reference /path/to/princeton-vl/SEA-RAFT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "data" / "searaft_reference.npz"
SINTEL_CLEAN = Path(__file__).resolve().parents[2] / "shared/data/benchmarks/Sintel/training/clean/alley_1"
SEED = 0
UNCERTAINTY_GAIN = 20.0
TINY = {"initial_dim": 16, "block_dims": (16, 24, 32), "dim": 32}  # widths of the reference networks
# name → (registry model, official config/eval file, input H×W, step): every input is the top-left
# part of one crop of the Sintel frames (stored once as image0, image1); outputs are stored
# subsampled, [:, ::step, ::step], to keep the file small.
CASES = {
    "s": ("searaft_s", "sintel-S.json", (125, 134), 2),  # odd sizes: the official InputPadder pads to 128×136
    "m": ("searaft_m", "kitti-M.json", (125, 134), 2),
    "l": ("searaft_l", "sintel-L.json", (125, 134), 2),
    "m_spring": ("searaft_m", "spring-M.json", (250, 268), 4),  # scale -1: runs at 125×134, padded inside
}
CROP = (150, 400, 250, 268)  # top, left, height, width of the crop of the Sintel frames


def seeded_state(state: dict[str, torch.Tensor], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Same keys and shapes as ``state``, values drawn in sorted key order from ``seed``; the
    ``downsample.1`` keys repeat their block's ``bn3`` values, as in every official state_dict."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    aliases = {k: k.replace(".downsample.1.", ".bn3.") for k in state if ".downsample.1." in k}
    for key in sorted(state):
        value = state[key]
        if key in aliases:  # one BatchNorm registered twice: both keys hold the same tensor
            continue
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked
            out[key] = value.clone()
            continue
        r = torch.randn(value.shape, generator=generator)
        if value.ndim > 1:
            out[key] = r / value.shape[1:].numel() ** 0.5
        elif key.endswith("running_var"):
            out[key] = 1 + 0.1 * r.abs()
        elif key.endswith(("weight", "gamma")) and not key.endswith("conv.weight"):
            out[key] = 0.3 * (1 + 0.1 * r)  # BatchNorm / LayerNorm gains, ConvNeXt layer scales
        else:
            out[key] = 0.1 * r
    for key in ("flow_head.2.weight", "flow_head.2.bias"):
        if key in out:  # uncertainty rows 20× wider: log-scales over several units (S: a confidence that varies)
            out[key][2:] *= UNCERTAINTY_GAIN
    return {**out, **{alias: out[key] for alias, key in aliases.items()}}


def sintel_pair() -> tuple[np.ndarray, np.ndarray]:
    """Crops of the shared Sintel clean alley_1 frames 1 and 2, H×W×3 uint8 RGB."""
    import cv2

    top, left, h, w = CROP
    return tuple(
        cv2.cvtColor(cv2.imread(str(SINTEL_CLEAN / f"frame_000{i}.png")), cv2.COLOR_BGR2RGB)[
            top : top + h, left : left + w
        ]
        for i in (1, 2)
    )


def official_args(checkout: Path, config_file: str, full_width: bool = False) -> argparse.Namespace:
    args = argparse.Namespace(**json.loads((checkout / "config/eval" / config_file).read_text()))
    if not full_width:
        args.initial_dim, args.block_dims, args.dim = TINY["initial_dim"], list(TINY["block_dims"]), TINY["dim"]
    return args


def _official(checkout: Path):
    sys.path[:0] = [str(checkout / "core"), str(checkout)]
    import extractor  # noqa: PLC0415  (official code, run from a scratch checkout)
    from raft import RAFT  # noqa: PLC0415

    # The official encoders start from torchvision's ImageNet ResNets (not installable beside this
    # torch); the seeded weights overwrite every parameter anyway, so that step is skipped.
    extractor.ResNetFPN._init_weights = lambda self, args: None
    return RAFT


def main(checkout_root: str) -> None:
    checkout = Path(checkout_root)
    RAFT = _official(checkout)
    calc_flow = official_calc_flow(checkout)
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()[None]  # noqa: E731
    for size, config_file in (("s", "sintel-S.json"), ("m", "sintel-M.json")):
        state = RAFT(official_args(checkout, config_file, full_width=True)).state_dict()
        arrays[f"keys_{size}"] = np.array([f"{k} {tuple(v.shape)}" for k, v in state.items()])
    arrays["image0"], arrays["image1"] = sintel_pair()
    for case, (_, config_file, (h, w), step) in CASES.items():
        args = official_args(checkout, config_file)
        model = RAFT(args).eval()
        model.load_state_dict(seeded_state(model.state_dict()), strict=True)
        a, b = (to_tensor(arrays[k][:h, :w]) for k in ("image0", "image1"))
        with torch.no_grad():
            for direction, (x, y) in (("forward", (a, b)), ("backward", (b, a))):
                flow, info = calc_flow(args, model, x, y)
                arrays[f"{case}_{direction}"] = flow[0, :, ::step, ::step].numpy()
                arrays[f"{case}_{direction}_info"] = info[0, :, ::step, ::step].numpy()
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


def official_calc_flow(checkout: Path):
    """The official evaluate.py ``calc_flow`` (and the ``forward_flow`` it calls), compiled from the
    checkout's source: importing evaluate.py would import its dataset stack (h5py, torchvision, …)."""
    import ast  # noqa: PLC0415

    import torch.nn.functional as F  # noqa: PLC0415

    source = (checkout / "evaluate.py").read_text()
    wanted = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name in ("forward_flow", "calc_flow")
    ]
    namespace = {"F": F, "torch": torch}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "evaluate.py", "exec"), namespace)  # noqa: S102
    return namespace["calc_flow"]


if __name__ == "__main__":
    main(sys.argv[1])
