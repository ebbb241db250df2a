"""Reference outputs of the official RAFT code for tests/test_raft.py, and the script that made them.

Two cases on the shared Sintel clean alley_1 frames 1→2, CPU float32, 12 iterations, the
official evaluation path (``InputPadder`` in Sintel mode, ``test_mode=True``):

* ``small_real``: RAFT-small with the real ``raft-small.pth`` on a 131×197 crop;
* ``large_seeded``: RAFT (large) with :func:`seeded_state` weights on a 133×165 crop.

Both crops are odd-sized, so the padding is exercised too. The fixture stores every other pixel
of each flow (``flow[:, ::2, ::2]``, float32): comparing at that precision, on a quarter of the
pixels, keeps the file at ~60 KB. No weights are stored: :func:`seeded_state` fills any model
with the official key names (ours or princeton-vl's) with the same values.

Regenerate tests/data/raft_reference.npz (needs a checkout of princeton-vl/RAFT, never committed):

    .venv/bin/python -m tests.raft_reference /path/to/princeton-vl/RAFT
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

FIXTURE = Path(__file__).parent / "data" / "raft_reference.npz"
SHARED = TEST_DATA  # FLOWLABEL_TEST_DATA (tests/conftest.py)
SINTEL_CLEAN = SHARED / "benchmarks/Sintel/training/clean/alley_1"
RAFT_SMALL = SHARED / "weights" / "raft-small.pth"
ITERS = 12
SEED = 0
# case → (rows, cols) of the crop of frames 1 and 2
CROPS = {
    "small_real": (slice(150, 281), slice(400, 597)),
    "large_seeded": (slice(200, 333), slice(600, 765)),
}
SUBSAMPLE = (slice(None), slice(None, None, 2), slice(None, None, 2))  # C×H×W → every other pixel


def read_rgb(path: Path) -> torch.Tensor:
    """An image file → 1×3×H×W float RGB in [0, 255]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float()[None]


def sintel_pair(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = CROPS[case]
    return tuple(read_rgb(SINTEL_CLEAN / f"frame_000{i}.png")[..., rows, cols] for i in (1, 2))


def seeded_state(model: nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic weights for ``model``'s state_dict, independent of the order modules are
    created in: each tensor comes from a generator seeded with its key. Tensors registered under
    two names (the official downsample norms) get one value, drawn for the first name.

    Weights are N(0, 1/fan_in); the flow head's last layer is scaled by 0.05 so that the random
    flow stays within the image and the correlation lookups matter.
    """
    tensors = model.state_dict(keep_vars=True)
    canonical: dict[int, str] = {}
    for name in sorted(tensors):
        canonical.setdefault(id(tensors[name]), name)
    state = {}
    for name, tensor in tensors.items():
        key = canonical[id(tensor)]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        shape = tensor.shape
        if key.endswith("num_batches_tracked"):
            value = torch.zeros_like(tensor)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=gen)
        elif tensor.ndim == 4:
            value = torch.randn(shape, generator=gen) / tensor[0].numel() ** 0.5
        elif key.endswith("weight"):  # norm gain
            value = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        if key.startswith("update_block.flow_head.conv2"):
            value = 0.05 * value
        state[name] = value.detach().clone()
    return state


def _official_raft(checkout: Path):
    """Import princeton-vl/RAFT's core/ from ``checkout``; scipy is only needed by its
    forward_interpolate (warm start), so a stub stands in when it is missing."""
    sys.path.insert(0, str(checkout / "core"))
    try:
        import scipy  # noqa: F401
    except ImportError:
        sys.modules["scipy"] = types.SimpleNamespace(interpolate=None)
    from raft import RAFT
    from utils.utils import InputPadder

    return RAFT, InputPadder


@torch.no_grad()
def main(checkout: Path) -> None:
    from models import load_model

    RAFT, InputPadder = _official_raft(checkout)
    torch.set_num_threads(1)
    out = {}
    for case, small in (("small_real", True), ("large_seeded", False)):
        official = RAFT(argparse.Namespace(small=small, mixed_precision=False, alternate_corr=False))
        if small:
            state = torch.load(RAFT_SMALL, map_location="cpu", weights_only=True)
            state = {k.removeprefix("module."): v for k, v in state.items()}
        else:
            state = seeded_state(load_model("raft_large", random_init=True))
        official.load_state_dict(state, strict=True)
        official.eval()
        image0, image1 = sintel_pair(case)
        padder = InputPadder(image0.shape, mode="sintel")
        _, flow = official(*padder.pad(image0, image1), iters=ITERS, test_mode=True)
        out[case] = padder.unpad(flow)[0][SUBSAMPLE].numpy().astype(np.float32)
    np.savez_compressed(FIXTURE, **out)
    print(f"wrote {FIXTURE}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/princeton-vl/RAFT")
    main(parser.parse_args().checkout)
