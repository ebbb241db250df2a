"""GMFlow: agreement with the official code, bidirectional flow, checkpoints, registry records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gmflow_reference import CONFIGS, FIXTURE, seeded_state_dict
from models import CheckpointError, get_spec, load_model
from models.checkpoint import load_strict
from models.gmflow import GMFlow

# Small widths for tests that only need the plumbing (the backbone's widths are fixed).
TINY = {"feature_channels": 16, "num_transformer_layers": 2, "ffn_dim_expansion": 1}
NAMES = list(CONFIGS)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


def _images(reference: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1).float()[None]

    return to_tensor(reference["image0"]), to_tensor(reference["image1"])


def _seeded_model(name: str, **overrides) -> GMFlow:
    model = load_model(name, random_init=True, **overrides)
    load_strict(model, seeded_state_dict(model.state_dict()))
    return model


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_official(name, reference):
    model = load_model(name, random_init=True)
    ours = [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    assert sorted(ours) == sorted(reference[f"{name}_keys"].tolist())


@pytest.mark.parametrize("name", NAMES)
def test_matches_official_code(name, reference):
    """Same weights and Sintel pair (60×108, padded as the official evaluate) as the official code."""
    model = _seeded_model(name)
    image0, image1 = _images(reference)
    official_forward = torch.from_numpy(reference[f"{name}_forward"])[None]
    official_backward = torch.from_numpy(reference[f"{name}_backward"])[None]
    assert official_forward.norm(dim=1).mean() > 1.0  # a non-trivial flow to compare
    with torch.no_grad():
        flow = model(image0, image1)
        forward, backward = model.bidirectional(image0, image1)
    assert flow.shape == (1, 2, 60, 108)
    assert rel_l2(flow, official_forward) < 1e-4
    assert rel_l2(forward, official_forward) < 1e-4
    assert rel_l2(backward, official_backward) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_equals_two_forward_passes(name, reference):
    model = _seeded_model(name, **TINY)
    image0, image1 = _images(reference)
    image0, image1 = torch.cat((image0, image1.flip(-1))), torch.cat((image1, image0.flip(-1)))  # batch of 2
    with torch.no_grad():
        forward, backward = model.bidirectional(image0, image1)
        expected_forward, expected_backward = model(image0, image1), model(image1, image0)
    assert model.native_bidirectional
    assert rel_l2(forward, expected_forward) < 1e-5
    assert rel_l2(backward, expected_backward) < 1e-5
    assert rel_l2(forward, backward) > 0.1  # the two directions really differ


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pad_mode", ["sintel", "kitti"])
def test_odd_size_shape_and_finite(name, pad_mode):
    torch.manual_seed(0)
    model = load_model(name, random_init=True, pad_mode=pad_mode, **TINY)
    assert model.pad_mode == pad_mode
    image0, image1 = torch.rand(2, 3, 37, 53) * 255, torch.rand(2, 3, 37, 53) * 255
    with torch.no_grad():
        flow = model(image0, image1)
        forward, backward = model.bidirectional(image0, image1)
    for f in (flow, forward, backward):
        assert f.shape == (2, 2, 37, 53) and f.dtype == torch.float32
        assert torch.isfinite(f).all()
    assert rel_l2(forward, flow) < 1e-5


def _fake_official_checkpoint(path, state):
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 100000, "epoch": 3}, path)


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_loads_strictly(name, tmp_path):
    donor = load_model(name, random_init=True, **TINY)
    state = seeded_state_dict(donor.state_dict(), seed=7)
    path = tmp_path / "gmflow_fake.pth"
    _fake_official_checkpoint(path, state)

    model = load_model(name, checkpoint=str(path), **TINY)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert len(model.checkpoint_sha256) == 64


def test_checkpoint_with_missing_or_extra_key_is_rejected(tmp_path):
    state = load_model("gmflow", random_init=True, **TINY).state_dict()
    missing = dict(state)
    del missing["feature_flow_attn.k_proj.bias"]
    _fake_official_checkpoint(tmp_path / "missing.pth", missing)
    with pytest.raises(CheckpointError, match=r"missing keys: feature_flow_attn\.k_proj\.bias"):
        load_model("gmflow", checkpoint=str(tmp_path / "missing.pth"), **TINY)

    extra = {**state, "module.extra.weight": torch.zeros(1)}
    _fake_official_checkpoint(tmp_path / "extra.pth", extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys: module\.extra\.weight"):
        load_model("gmflow", checkpoint=str(tmp_path / "extra.pth"), **TINY)


def test_checkpoint_without_model_entry_is_rejected(tmp_path):
    state = load_model("gmflow", random_init=True, **TINY).state_dict()
    torch.save(state, tmp_path / "bare.pth")  # a bare state_dict is not what the official code saves
    with pytest.raises(CheckpointError, match="expected an official GMFlow checkpoint.*'model'"):
        load_model("gmflow", checkpoint=str(tmp_path / "bare.pth"), **TINY)


@pytest.mark.parametrize(("name", "pad_multiple"), [("gmflow", 16), ("gmflow_refine", 32)])
def test_load_model_needs_checkpoint_unless_random_init(name, pad_multiple):
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_model(name)
    model = load_model(name, random_init=True, **TINY)
    assert isinstance(model, GMFlow) and not model.training
    assert model.pad_multiple == pad_multiple


def test_registry_records():
    expected = {
        "gmflow": ["gmflow_chairs-1d776046.pth", "gmflow_things-e9887eda.pth",
                   "gmflow_sintel-0c07dcb3.pth", "gmflow_kitti-285701a8.pth"],
        "gmflow_refine": ["gmflow_with_refine_things-36579974.pth", "gmflow_with_refine_sintel-3ed1cf48.pth",
                          "gmflow_with_refine_kitti-8d3b9786.pth"],
    }
    # The official scripts/evaluate.sh settings, spelled out (not read back from the registry's own constants).
    official = {
        "gmflow": {"num_scales": 1, "upsample_factor": 8, "padding_factor": 16, "attn_splits_list": (2,),
                   "corr_radius_list": (-1,), "prop_radius_list": (-1,)},
        "gmflow_refine": {"num_scales": 2, "upsample_factor": 4, "padding_factor": 32, "attn_splits_list": (2, 8),
                          "corr_radius_list": (-1, 4), "prop_radius_list": (-1, 1)},
    }
    for name, filenames in expected.items():
        spec = get_spec(name)
        assert [c.filename for c in spec.checkpoints] == filenames
        assert {k: spec.default_config[k] for k in official[name]} == official[name]
        for ckpt in spec.checkpoints:
            assert ckpt.sha256 is None and ckpt.url.startswith("https://drive.google.com/")
            assert ckpt.benchmark_config["kitti"]["pad_mode"] == "kitti"
            assert spec.find_checkpoint(f"s3://bucket/models/{ckpt.filename}") is ckpt
            assert dict(ckpt.eval_config) == official[name]
    assert get_spec("gmflow").find_checkpoint("x/gmflow_things-e9887eda.pth").published["sintel_train_clean_epe"] == 1.495
    refine_sintel = get_spec("gmflow_refine").find_checkpoint("gmflow_with_refine_sintel-3ed1cf48.pth")
    assert refine_sintel.published == {"sintel_test_clean_epe": 1.74, "sintel_test_final_epe": 2.90}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"upsample_factor": 8}, "upsample_factor: expected 4"),
        ({"attn_splits_list": (2,)}, "attn_splits_list: expected 2 values"),
        ({"padding_factor": 16}, "padding_factor 16: expected a multiple of 32"),
        ({"corr_radius_list": (-1, 0)}, "corr_radius_list: expected -1"),
        ({"attn_splits_list": (2, 0)}, "attn_splits_list: expected splits >= 1"),
        ({"pad_mode": "middlebury"}, "pad_mode: expected"),
    ],
)
def test_bad_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_model("gmflow_refine", random_init=True, **{**TINY, **overrides})
