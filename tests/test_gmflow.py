"""GMFlow: agreement with the official code, bidirectional flow, checkpoints, registry records."""

from __future__ import annotations

import pytest
import torch

from models import CheckpointError, get_spec, load_model
from models.gmflow import GMFlow
from tests.gmflow_reference import CONFIGS, FIXTURE, seeded_state_dict
from tests.parity import (
    assert_matches_official,
    assert_missing_or_extra_key_is_rejected,
    assert_odd_size_shape_and_finite,
    assert_official_checkpoint_loads_strictly,
    image_pair,
    keys_and_shapes,
    reference_fixture,
    rel_l2,
    seeded_model,
)

# Small widths for tests that only need the plumbing (the backbone's widths are fixed).
TINY = {"feature_channels": 16, "num_transformer_layers": 2, "ffn_dim_expansion": 1}
NAMES = list(CONFIGS)

reference = reference_fixture(FIXTURE)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_official(name, reference):
    assert keys_and_shapes(load_model(name, random_init=True)) == sorted(reference[f"{name}_keys"].tolist())


@pytest.mark.parametrize("name", NAMES)
def test_matches_official_code(name, reference):
    """Same weights and Sintel pair (60×108, padded as the official evaluate) as the official code."""
    assert_matches_official(seeded_model(name, seeded_state_dict), reference, name, size=(60, 108))


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_equals_two_forward_passes(name, reference):
    model = seeded_model(name, seeded_state_dict, **TINY)
    image0, image1 = image_pair(reference)
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
    assert_odd_size_shape_and_finite(name, pad_mode, **TINY)


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_loads_strictly(name, tmp_path):
    assert_official_checkpoint_loads_strictly(name, tmp_path, **TINY)


def test_checkpoint_with_missing_or_extra_key_is_rejected(tmp_path):
    assert_missing_or_extra_key_is_rejected(
        "gmflow", tmp_path, "feature_flow_attn.k_proj.bias", "module.extra.weight", **TINY
    )


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
        "gmflow": [
            "gmflow_chairs-1d776046.pth",
            "gmflow_things-e9887eda.pth",
            "gmflow_sintel-0c07dcb3.pth",
            "gmflow_kitti-285701a8.pth",
        ],
        "gmflow_refine": [
            "gmflow_with_refine_things-36579974.pth",
            "gmflow_with_refine_sintel-3ed1cf48.pth",
            "gmflow_with_refine_kitti-8d3b9786.pth",
        ],
    }
    # The official scripts/evaluate.sh settings, spelled out (not read back from the registry's own constants).
    official = {
        "gmflow": {
            "num_scales": 1,
            "upsample_factor": 8,
            "padding_factor": 16,
            "attn_splits_list": (2,),
            "corr_radius_list": (-1,),
            "prop_radius_list": (-1,),
        },
        "gmflow_refine": {
            "num_scales": 2,
            "upsample_factor": 4,
            "padding_factor": 32,
            "attn_splits_list": (2, 8),
            "corr_radius_list": (-1, 4),
            "prop_radius_list": (-1, 1),
        },
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
    things = get_spec("gmflow").find_checkpoint("x/gmflow_things-e9887eda.pth")
    assert things.published["sintel_train_clean_epe"] == 1.495
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
