"""UniMatch flow models: agreement with the official code, bidirectional and pair flows, checkpoints, registry."""

from __future__ import annotations

import pytest
import torch

from models import CheckpointError, get_spec, load_model
from models.unimatch import local_correlation_with_flow
from tests.gmflow_reference import seeded_state_dict
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
from tests.unimatch_reference import CONFIGS, FIXTURE

# Small widths for tests that only need the plumbing (the backbone's and the refinement's widths are fixed).
TINY = {"feature_channels": 16, "num_transformer_layers": 2, "ffn_dim_expansion": 1}
NAMES = list(CONFIGS)

reference = reference_fixture(FIXTURE)


def tiny(name: str) -> dict:
    """TINY, and two refinement steps instead of six (the plumbing is the same from the second on)."""
    return {**TINY, "num_reg_refine": 2} if CONFIGS[name]["reg_refine"] else TINY


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_match_official(name, reference):
    assert keys_and_shapes(load_model(name, random_init=True)) == sorted(reference[f"{name}_keys"].tolist())


@pytest.mark.parametrize("name", NAMES)
def test_matches_official_code(name, reference):
    """Same weights and Sintel pair (60×108, padded as the official evaluation) as the official code,
    forward flow and the backward flow of ``pred_bidir_flow``."""
    assert_matches_official(seeded_model(name, seeded_state_dict), reference, name, size=(60, 108))


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_and_pairs_equal_separate_passes(name, reference):
    model = seeded_model(name, seeded_state_dict, **tiny(name))
    image0, image1 = image_pair(reference)
    frames = torch.cat((image0, image1, image0.flip(-1)))  # a run of three frames
    index0, index1 = torch.tensor([0, 1]), torch.tensor([1, 2])
    with torch.no_grad():
        forward, backward = model.bidirectional(frames[index0], frames[index1])
        pairs = model.pairs(frames, index0, index1)
        expected_forward = model(frames[index0], frames[index1])
        expected_backward = model(frames[index1], frames[index0])
    assert model.native_bidirectional
    for got, expected in (
        (forward, expected_forward),
        (backward, expected_backward),
        (pairs.forward, expected_forward),
        (pairs.backward, expected_backward),
    ):
        assert got.shape == (2, 2, 60, 108)
        assert rel_l2(got, expected) < 1e-5
    assert pairs.confidence is None
    assert rel_l2(forward, backward) > 0.1  # the two directions really differ


def test_pairs_encode_each_frame_once(reference):
    model = seeded_model("unimatch_scale2_regrefine6", seeded_state_dict, **tiny("unimatch_scale2_regrefine6"))
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    frames = torch.rand(3, 3, 32, 64) * 255
    with torch.no_grad():
        model.pairs(frames, torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert calls == [3]  # one backbone call on the 3 frames, not 2 × 2 pairs


def test_local_correlation_with_flow_samples_around_the_flow():
    torch.manual_seed(0)
    feature0, feature1 = torch.randn(1, 8, 6, 7), torch.randn(1, 8, 6, 7)
    flow = torch.zeros(1, 2, 6, 7)
    flow[:, 0] = 1.0  # one pixel right
    corr = local_correlation_with_flow(feature0, feature1, flow, radius=1)  # 3×3 offsets, row-major (dy, dx)
    # offset (dy, dx) = (0, +1) with flow +1 in x: feature1 two pixels to the right
    expected = (feature0[..., :, :-2] * feature1[..., :, 2:]).sum(1) / 8**0.5
    torch.testing.assert_close(corr[:, 5, :, :-2], expected)
    assert (corr[:, 5, :, -2:] == 0).all()  # sampled outside the image: zero features
    half = local_correlation_with_flow(feature0, feature1, flow * 0.5, radius=1)[:, 4, :, :-1]
    between = (feature0[..., :, :-1] * (feature1[..., :, :-1] + feature1[..., :, 1:]) / 2).sum(1) / 8**0.5
    torch.testing.assert_close(half, between)  # bilinear halfway


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pad_mode", ["sintel", "kitti"])
def test_odd_size_shape_and_finite(name, pad_mode):
    assert_odd_size_shape_and_finite(name, pad_mode, **tiny(name))


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_loads_strictly(name, tmp_path):
    assert_official_checkpoint_loads_strictly(name, tmp_path, **TINY)


def test_checkpoint_with_missing_extra_or_other_model_keys_is_rejected(tmp_path):
    missing = assert_missing_or_extra_key_is_rejected(
        "unimatch_scale2_regrefine6", tmp_path, "refine.gru.convq2.bias", "upsampler.0.weight", **TINY
    )

    # a refinement checkpoint into the plain scale-2 model: no upsampler, refine.* unexpected
    with pytest.raises(CheckpointError, match=r"missing keys: upsampler\..*unexpected keys: refine"):
        load_model("unimatch_scale2", checkpoint=str(missing), **TINY)

    state = load_model("unimatch_scale2_regrefine6", random_init=True, **TINY).state_dict()
    torch.save(state, tmp_path / "bare.pth")  # a bare state_dict is not what the official code saves
    with pytest.raises(CheckpointError, match="'model'"):
        load_model("unimatch_scale2_regrefine6", checkpoint=str(tmp_path / "bare.pth"), **TINY)


EXPECTED_FILES = {
    "unimatch_scale1": ["gmflow-scale1-things-e9887eda.pth", "gmflow-scale1-mixdata-train320x576-4c3a6e9a.pth"],
    "unimatch_scale2": [
        "gmflow-scale2-things-36579974.pth",
        "gmflow-scale2-sintel-3ed1cf48.pth",
        "gmflow-scale2-mixdata-train320x576-9ff1c094.pth",
    ],
    "unimatch_scale2_regrefine6": [
        "gmflow-scale2-regrefine6-things-776ed612.pth",
        "gmflow-scale2-regrefine6-sintelft-6e39e2b9.pth",
        "gmflow-scale2-regrefine6-kitti15-25b554d7.pth",
        "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth",
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_registry_records(name):
    spec = get_spec(name)
    assert [c.filename for c in spec.checkpoints] == EXPECTED_FILES[name]
    official = {k: tuple(v) if isinstance(v, list) else v for k, v in CONFIGS[name].items()}
    for ckpt in spec.checkpoints:
        assert ckpt.sha256 is None
        assert ckpt.url == "https://s3.eu-central-1.amazonaws.com/avg-projects/unimatch/pretrained/" + ckpt.filename
        assert spec.find_checkpoint(f"s3://bucket/models/{ckpt.filename}") is ckpt
        assert {k: ckpt.eval_config[k] for k in official} == official  # scripts/gmflow_evaluate.sh settings
        assert ckpt.eval_config["attn_type"] == "swin"
        assert ckpt.benchmark_config["kitti"]["pad_mode"] == "kitti"
        assert ckpt.benchmark_config["sintel"]["pad_mode"] == "sintel"
    model = load_model(name, random_init=True, **TINY)
    assert model.pad_multiple == CONFIGS[name]["padding_factor"]


def test_published_scores():
    scale1 = get_spec("unimatch_scale1").find_checkpoint("gmflow-scale1-things-e9887eda.pth")
    assert scale1.published["sintel_train_clean_epe"] == 1.495 and "gmflow_things-e9887eda" in scale1.source
    scale2 = get_spec("unimatch_scale2").find_checkpoint("gmflow-scale2-sintel-3ed1cf48.pth")
    assert scale2.published == {"sintel_test_clean_epe": 1.74, "sintel_test_final_epe": 2.90}
    kitti = get_spec("unimatch_scale2_regrefine6").find_checkpoint("gmflow-scale2-regrefine6-kitti15-25b554d7.pth")
    assert kitti.published == {"kitti_test_fl_all": 4.49} and "2211.05783" in kitti.source


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attn_type": "self_swin2d_cross_1d"}, "attn_type: expected"),
        ({"num_reg_refine": 0}, "num_reg_refine: expected an integer >= 1"),
        ({"upsample_factor": 8}, "upsample_factor: expected 4"),
        ({"padding_factor": 16}, "padding_factor 16: expected a multiple of 32"),
    ],
)
def test_bad_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_model("unimatch_scale2_regrefine6", random_init=True, **{**TINY, **overrides})
