"""Reference outputs of the official DEQ-Flow code for tests/test_deqflow.py, and the script that made them.

Five cases on a 128×128 crop of the shared Sintel clean alley_1 frames 1→2, CPU float32, 1 thread, the
official evaluation path (``model.eval()``, ``flow_up`` of ``model(image1, image2)``), weights from
:func:`seeded_state` (official key format, ``module.`` prefix, ``weight_g``/``weight_v``):

* ``t_naive``, ``t_anderson``, ``t_broyden``: code.v.2.0 ``--tiny --wnorm``, eval_factor 1.5;
* ``b_anderson``, ``b_broyden``: code.v.1.0 default size (DEQ-Flow-B) ``--wnorm``, eval_factor 1.5.

f_thres is 40 (36 for ``b_broyden``): naive and Broyden stop on eps. The Anderson cases use f_thres 6
(9 steps) so that they stop on the step limit, where the iterate v1 returns (the mixed one) and the one
v2 returns (its image) differ visibly.

128×128 is the smallest size at which every correlation level of the official code is at least 2 pixels
wide (below that its sampler divides by zero). The fixture stores every third pixel of each flow
(``flow[:, ::3, ::3]``, float32): 3 and 8 are coprime, so all 64 sub-pixel phases of the convex
upsampling are compared, in ~75 KB.

Regenerate tests/data/deqflow_reference.npz (needs a checkout of locuslab/deq-flow, never committed;
made from commit 869d4bc):

    .venv/bin/python -m tests.deqflow_reference /path/to/locuslab/deq-flow
"""

from __future__ import annotations

import argparse
import sys
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from tests.conftest import TEST_DATA

FIXTURE = Path(__file__).parent / "data" / "deqflow_reference.npz"
SHARED = TEST_DATA  # FLOWLABEL_TEST_DATA (tests/conftest.py)
SINTEL_CLEAN = SHARED / "benchmarks/Sintel/training/clean/alley_1"
CROP = (slice(150, 278), slice(400, 528))
SUBSAMPLE = (slice(None), slice(None, None, 3), slice(None, None, 3))  # C×H×W → every third pixel
SEED = 0

# case → (our registry name, overrides, official code version, official size flag, official solver name)
CASES: dict[str, tuple[str, dict, int, str, str]] = {
    "t_naive": ("deqflow_t", {"solver": "naive", "f_thres": 40, "eval_f_thres": None}, 2, "tiny", "naive_solver"),
    "t_anderson": ("deqflow_t", {"solver": "anderson", "f_thres": 6, "eval_f_thres": None}, 2, "tiny", "anderson"),
    "t_broyden": ("deqflow_t", {"solver": "broyden", "f_thres": 40, "eval_f_thres": None}, 2, "tiny", "broyden"),
    "b_anderson": ("deqflow_b", {"solver": "anderson", "f_thres": 6}, 1, "base", "anderson"),
    "b_broyden": ("deqflow_b", {"solver": "broyden", "f_thres": 36}, 1, "base", "broyden"),
}

# Random weights alone give an update with no fixed point (the flow drifts), and then which iterate
# a solver returns flips with float noise. These settings add negative feedback on the flow so the
# update contracts to a fixed point of roughly (17, 10) px: GRU channels 0–3 become tanh(±GAIN·u),
# tanh(±GAIN·v) and the flow head subtracts FEEDBACK·tanh(GAIN·flow) from an offset TARGET.
GAIN, FEEDBACK, NOISE, TARGET = 0.3, 1.0, 0.3, (0.6, -0.4)


def read_rgb(path: Path) -> torch.Tensor:
    """An image file → 1×3×H×W float RGB in [0, 255]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float()[None]


def sintel_pair() -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = CROP
    return tuple(read_rgb(SINTEL_CLEAN / f"frame_000{i}.png")[..., rows, cols] for i in (1, 2))


def _contract(name: str, w: np.ndarray, b: np.ndarray) -> None:
    """Rewrite (in place) the few update-block weights that make the update a contraction."""
    leaf = name.rsplit(".", 1)[-1]
    if ".gru." in name and leaf[:5] in ("convq", "convz"):
        kh, kw = w.shape[2] // 2, w.shape[3] // 2
        w[:4] *= 1e-3  # near zero, not zero: weight norm divides by each row's norm
        if leaf.startswith("convz"):
            b[:4] = 10.0  # update gate open, so these state channels equal their candidate
        else:
            b[:4] = 0.0
            for j, (channel, sign) in enumerate(((-2, 1), (-2, -1), (-1, 1), (-1, -1))):
                w[j, channel, kh, kw] = sign * GAIN  # the GRU input ends with the flow (u, v)
    elif name.endswith("flow_head.conv1"):
        w[:4] *= 1e-3
        b[:4] = 0.0
        for j in range(4):
            w[j, j, 1, 1] = 1.0
    elif name.endswith("flow_head.conv2"):
        w *= NOISE
        b *= NOISE
        w[:, :4] *= 1e-3
        w[0, 0, 1, 1], w[0, 1, 1, 1] = -FEEDBACK, FEEDBACK
        w[1, 2, 1, 1], w[1, 3, 1, 1] = -FEEDBACK, FEEDBACK
        b[0] += TARGET[0]
        b[1] += TARGET[1]


def seeded_state(model: nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic weights for a DEQ-Flow ``model`` (ours), in the OFFICIAL key format.

    Keys carry DataParallel's ``module.`` prefix; update-block convolutions (not the mask head) are
    stored weight-normalised as ``weight_g``/``weight_v`` with v ≠ w, so folding is exercised.
    Each module draws from numpy's legacy RandomState (a stream numpy keeps stable) seeded with its
    name, so the values do not depend on the order modules are created in: convolutions
    U(±1/√fan_in), batch-norm statistics near (0, 1). A module registered under two names (the
    downsample norms) gets one value, drawn for its first name in sorted order, under both names.
    """
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    state: dict[str, torch.Tensor] = {}
    for module in model.modules():
        aliases = sorted(names[id(module)])
        rng = np.random.RandomState((seed * 1_000_003 + zlib.crc32(aliases[0].encode())) % 2**32)
        tensors: dict[str, torch.Tensor] = {}
        if isinstance(module, nn.Conv2d):
            bound = 1 / np.sqrt(module.in_channels * module.kernel_size[0] * module.kernel_size[1])
            w = rng.uniform(-bound, bound, module.weight.shape)
            b = rng.uniform(-bound, bound, module.bias.shape)
            if aliases[0].startswith("update_block.") and ".mask." not in aliases[0]:
                _contract(aliases[0], w, b)
                factor = rng.uniform(1.0, 2.0, (w.shape[0], 1, 1, 1))
                g = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
                tensors["weight_g"] = torch.from_numpy(g).float()
                tensors["weight_v"] = torch.from_numpy(w * factor).float()
            else:
                tensors["weight"] = torch.from_numpy(w).float()
            tensors["bias"] = torch.from_numpy(b).float()
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            tensors["weight"] = torch.from_numpy(rng.uniform(0.8, 1.2, c)).float()
            tensors["bias"] = torch.from_numpy(rng.uniform(-0.1, 0.1, c)).float()
            tensors["running_mean"] = torch.from_numpy(rng.uniform(-0.1, 0.1, c)).float()
            tensors["running_var"] = torch.from_numpy(rng.uniform(0.5, 1.5, c)).float()
            tensors["num_batches_tracked"] = torch.tensor(0)
        for alias in aliases:
            state.update({f"module.{alias}.{k}": v for k, v in tensors.items()})
    return state


# --- regeneration with the official code -----------------------------------------------------------


def _stub_imports() -> None:
    """Modules the official code imports for training and logging only."""
    for name in ("termcolor", "scipy", "scipy.optimize", "scipy.interpolate", "einops"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["termcolor"].colored = lambda text, *args, **kwargs: text
    sys.modules["scipy.optimize"].root = None
    sys.modules["scipy"].interpolate = sys.modules["scipy.interpolate"]
    sys.modules["einops"].rearrange = None
    # code.v.1.0's Anderson calls torch.solve(B, A), removed from torch 2 (a stub that raises remains).
    torch.solve = lambda b, a: (torch.linalg.solve(a, b), None)


def _official_model(checkout: Path, version: int, size: str, solver: str, f_thres: int) -> nn.Module:
    root = checkout / f"code.v.{version}.0"
    for name in [n for n, m in sys.modules.items() if str(root.parent) in str(getattr(m, "__file__", "") or "")]:
        del sys.modules[name]  # both versions have modules named update, corr, utils, …
    sys.path[:] = [str(root / "core"), str(root)] + [p for p in sys.path if str(checkout) not in p]
    common = dict(
        small=False,
        large=False,
        huge=False,
        gigantic=False,
        tiny=size == "tiny",
        gma=False,
        wnorm=True,
        dropout=0.0,
        vdropout=0.0,
        mixed_precision=False,
        alternate_corr=False,
        f_solver=solver,
        b_solver="broyden",
        f_thres=f_thres,
        b_thres=36,
        eval_factor=1.5,
        n_losses=1,
        indexing=[],
        phantom_grad=[1],
        tau=1.0,
        sup_all=False,
        ift=False,
        safe_ift=False,
        sradius_mode=False,
    )
    if version == 1:
        from deq import get_model  # the official code.v.1.0/core/deq.py

        args = argparse.Namespace(**common, stop_mode="abs", sliced_core=False)
        return get_model(args)(args)
    from deq_flow import DEQFlow  # the official code.v.2.0/core/deq_flow.py

    args = argparse.Namespace(
        **common,
        old_version=False,
        all_grad=False,
        f_eps=1e-3,
        b_eps=1e-3,
        f_stop_mode="abs",
        b_stop_mode="abs",
        eval_f_thres=0,
        indexing_core=False,
    )
    return DEQFlow(args)


def regenerate(checkout: Path) -> dict[str, np.ndarray]:
    from models import load_model

    _stub_imports()
    torch.set_num_threads(1)
    image0, image1 = sintel_pair()
    outputs = {}
    for case, (name, overrides, version, size, official_solver) in CASES.items():
        ours = load_model(name, random_init=True, **overrides)
        state = {k.removeprefix("module."): v for k, v in seeded_state(ours).items()}
        official = _official_model(checkout, version, size, official_solver, overrides["f_thres"])
        official.load_state_dict(state, strict=True)
        with torch.no_grad():
            _, flow_up, _ = official.eval()(image0, image1)
        outputs[case] = flow_up[0][SUBSAMPLE].numpy().astype(np.float32)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/locuslab/deq-flow")
    outputs = regenerate(parser.parse_args().checkout.resolve())
    np.savez_compressed(FIXTURE, **outputs)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes): {sorted(outputs)}")


if __name__ == "__main__":
    main()
