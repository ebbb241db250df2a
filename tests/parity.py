"""Helpers of the tests that compare our models with outputs of the official code (fixtures in tests/data,
made by the tests/*_reference.py scripts), and the checks GMFlow and UniMatch share: both load the same
``{'model': state_dict}`` checkpoints and have fixtures of the same layout (``image0``, ``image1`` H×W×3
uint8; ``<name>_forward``, ``<name>_backward`` 2×H×W; ``<name>_keys``).

tests/conftest.py registers this module for pytest's assertion rewriting, so a failing check here
reports its values as one written in a test would.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import CheckpointError, load_model
from models.checkpoint import load_strict
from models.contract import FlowModel
from tests.gmflow_reference import seeded_state_dict

StateDict = dict[str, torch.Tensor]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over all elements."""
    return ((a - b).norm() / b.norm()).item()


def reference_fixture(path: Path):
    """A module-scoped fixture ``reference``: the arrays of the .npz at ``path``, by name.
    Use as ``reference = reference_fixture(FIXTURE)`` in a test module."""

    @pytest.fixture(scope="module", name="reference")
    def reference() -> dict[str, np.ndarray]:
        with np.load(path) as data:
            return dict(data)

    return reference


def image_pair(reference: dict[str, np.ndarray], size: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """The fixture's H×W×3 ``image0``, ``image1`` (cropped to the top-left ``size`` = (h, w) if given)
    → two 1×3×h×w float tensors in [0, 255]."""
    h, w = size or (None, None)
    return tuple(torch.from_numpy(reference[k][:h, :w]).permute(2, 0, 1).float()[None] for k in ("image0", "image1"))


def keys_and_shapes(model: torch.nn.Module) -> list[str]:
    """Sorted "<key> (<shape>)" of the state_dict, as the fixtures' ``*_keys`` record the official model's."""
    return sorted(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items())


def seeded_model(name: str, seeded_state: Callable[[StateDict], StateDict], **config) -> FlowModel:
    """Registry model ``name`` (``config`` overriding its defaults) with the reference script's seeded weights."""
    model = load_model(name, random_init=True, **config)
    load_strict(model, seeded_state(model.state_dict()))
    return model


# ----------------------------------------------------------------------------- GMFlow and UniMatch


def fake_official_checkpoint(path: Path, state: StateDict) -> None:
    """Save ``state`` as the official GMFlow / UniMatch training code does, with the entries inference ignores."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 100000, "epoch": 3}, path)


def assert_matches_official(
    model: FlowModel, reference: dict[str, np.ndarray], name: str, size: tuple[int, int]
) -> None:
    """On the fixture's h×w (``size``) pair: the forward flow, and both flows of ``bidirectional``, within 1e-4
    (relative L2) of the official ``<name>_forward`` and ``<name>_backward``."""
    image0, image1 = image_pair(reference)
    official_forward = torch.from_numpy(reference[f"{name}_forward"])[None]
    official_backward = torch.from_numpy(reference[f"{name}_backward"])[None]
    assert official_forward.norm(dim=1).mean() > 1.0  # a non-trivial flow to compare
    with torch.no_grad():
        flow = model(image0, image1)
        forward, backward = model.bidirectional(image0, image1)
    assert flow.shape == (1, 2, *size)
    assert rel_l2(flow, official_forward) < 1e-4
    assert rel_l2(forward, official_forward) < 1e-4
    assert rel_l2(backward, official_backward) < 1e-4


def assert_odd_size_shape_and_finite(name: str, pad_mode: str, **config) -> None:
    """Model ``name`` (random init from seed 0, ``pad_mode``) on two random 37×53 pairs (padded in both
    dimensions): finite float32 2×2×37×53 flows, and the forward flow of ``bidirectional`` equal to the plain one."""
    torch.manual_seed(0)
    model = load_model(name, random_init=True, pad_mode=pad_mode, **config)
    assert model.pad_mode == pad_mode
    image0, image1 = torch.rand(2, 3, 37, 53) * 255, torch.rand(2, 3, 37, 53) * 255
    with torch.no_grad():
        flow = model(image0, image1)
        forward, backward = model.bidirectional(image0, image1)
    for f in (flow, forward, backward):
        assert f.shape == (2, 2, 37, 53) and f.dtype == torch.float32
        assert torch.isfinite(f).all()
    assert rel_l2(forward, flow) < 1e-5


def assert_official_checkpoint_loads_strictly(name: str, tmp_path: Path, **config) -> None:
    """A fake official checkpoint of model ``name`` (seeded weights, seed 7) loads with every tensor exact."""
    donor = load_model(name, random_init=True, **config)
    state = seeded_state_dict(donor.state_dict(), seed=7)
    path = tmp_path / "fake-official.pth"
    fake_official_checkpoint(path, state)

    model = load_model(name, checkpoint=str(path), **config)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert len(model.checkpoint_sha256) == 64


def assert_missing_or_extra_key_is_rejected(name: str, tmp_path: Path, missing: str, extra: str, **config) -> Path:
    """Fake official checkpoints of model ``name``, one without the key ``missing``, one with ``extra`` added,
    are rejected naming that key. → the path of the one without ``missing``."""
    state = load_model(name, random_init=True, **config).state_dict()
    fake_official_checkpoint(tmp_path / "missing.pth", {k: v for k, v in state.items() if k != missing})
    with pytest.raises(CheckpointError, match="missing keys: " + re.escape(missing)):
        load_model(name, checkpoint=str(tmp_path / "missing.pth"), **config)

    fake_official_checkpoint(tmp_path / "extra.pth", {**state, extra: torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys: " + re.escape(extra)):
        load_model(name, checkpoint=str(tmp_path / "extra.pth"), **config)
    return tmp_path / "missing.pth"
