"""UniMatch flow models: agreement with the official code, bidirectional and pair flows, checkpoints, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gmflow_reference import seeded_state_dict
from tests.unimatch_reference import CONFIGS, FIXTURE
from models import CheckpointError, get_spec, load_model
from models.checkpoint import load_strict
from models.unimatch import UniMatch, local_correlation_with_flow

# Small widths for tests that only need the plumbing (the backbone's and the refinement's widths are fixed).
TINY = {"feature_channels": 16, "num_transformer_layers": 2, "ffn_dim_expansion": 1}
NAMES = list(CONFIGS)


def tiny(name: str) -> dict:
    """TINY, and two refinement steps instead of six (the plumbing is the same from the second on)."""
    return {**TINY, "num_reg_refine": 2} if CONFIGS[name]["reg_refine"] else TINY


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


def _seeded_model(name: str, **overrides) -> UniMatch:
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
    """Same weights and Sintel pair (60×108, padded as the official evaluation) as the official code,
    forward flow and the backward flow of ``pred_bidir_flow``."""
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
def test_bidirectional_and_pairs_equal_separate_passes(name, reference):
    model = _seeded_model(name, **tiny(name))
    image0, image1 = _images(reference)
    frames = torch.cat((image0, image1, image0.flip(-1)))  # a run of three frames
    index0, index1 = torch.tensor([0, 1]), torch.tensor([1, 2])
    with torch.no_grad():
        forward, backward = model.bidirectional(frames[index0], frames[index1])
        pairs = model.pairs(frames, index0, index1)
        expected_forward = model(frames[index0], frames[index1])
        expected_backward = model(frames[index1], frames[index0])
    assert model.native_bidirectional
    for got, expected in ((forward, expected_forward), (backward, expected_backward),
                          (pairs.forward, expected_forward), (pairs.backward, expected_backward)):
        assert got.shape == (2, 2, 60, 108)
        assert rel_l2(got, expected) < 1e-5
    assert pairs.confidence is None
    assert rel_l2(forward, backward) > 0.1  # the two directions really differ


def test_pairs_encode_each_frame_once(reference):
    model = _seeded_model("unimatch_scale2_regrefine6", **tiny("unimatch_scale2_regrefine6"))
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
    torch.manual_seed(0)
    model = load_model(name, random_init=True, pad_mode=pad_mode, **tiny(name))
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
    path = tmp_path / "gmflow-fake.pth"
    _fake_official_checkpoint(path, state)

    model = load_model(name, checkpoint=str(path), **TINY)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert len(model.checkpoint_sha256) == 64


def test_checkpoint_with_missing_extra_or_other_model_keys_is_rejected(tmp_path):
    state = load_model("unimatch_scale2_regrefine6", random_init=True, **TINY).state_dict()
    missing = dict(state)
    del missing["refine.gru.convq2.bias"]
    _fake_official_checkpoint(tmp_path / "missing.pth", missing)
    with pytest.raises(CheckpointError, match=r"missing keys: refine\.gru\.convq2\.bias"):
        load_model("unimatch_scale2_regrefine6", checkpoint=str(tmp_path / "missing.pth"), **TINY)

    extra = {**state, "upsampler.0.weight": torch.zeros(1)}
    _fake_official_checkpoint(tmp_path / "extra.pth", extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys: upsampler\.0\.weight"):
        load_model("unimatch_scale2_regrefine6", checkpoint=str(tmp_path / "extra.pth"), **TINY)

    # a refinement checkpoint into the plain scale-2 model: no upsampler, refine.* unexpected
    with pytest.raises(CheckpointError, match=r"missing keys: upsampler\..*unexpected keys: refine"):
        load_model("unimatch_scale2", checkpoint=str(tmp_path / "missing.pth"), **TINY)

    torch.save(state, tmp_path / "bare.pth")  # a bare state_dict is not what the official code saves
    with pytest.raises(CheckpointError, match="'model'"):
        load_model("unimatch_scale2_regrefine6", checkpoint=str(tmp_path / "bare.pth"), **TINY)


EXPECTED_FILES = {
    "unimatch_scale1": ["gmflow-scale1-things-e9887eda.pth", "gmflow-scale1-mixdata-train320x576-4c3a6e9a.pth"],
    "unimatch_scale2": ["gmflow-scale2-things-36579974.pth", "gmflow-scale2-sintel-3ed1cf48.pth",
                        "gmflow-scale2-mixdata-train320x576-9ff1c094.pth"],
    "unimatch_scale2_regrefine6": ["gmflow-scale2-regrefine6-things-776ed612.pth",
                                   "gmflow-scale2-regrefine6-sintelft-6e39e2b9.pth",
                                   "gmflow-scale2-regrefine6-kitti15-25b554d7.pth",
                                   "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth"],
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
