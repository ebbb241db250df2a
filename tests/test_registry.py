"""Every registered model, through one contract: parametrized over the registry itself."""

import pytest
import torch

from jobs.cli import main
from models import REGISTRY, CheckpointError, get_spec, list_models, load_model

# Cheapest settings per model for a CPU forward pass; a new model must add its entry here.
TEST_OVERRIDES = {
    "dis": {},
    "farneback": {},
    "raft_large": {"iters": 2},
    "raft_small": {"iters": 2},
    "deqflow_b": {"f_thres": 3, "eval_factor": 1.0},
    "deqflow_h": {"f_thres": 3, "eval_factor": 1.0},
    "deqflow_h_v1": {"f_thres": 3, "eval_factor": 1.0},
    "deqflow_t": {"f_thres": 3, "eval_factor": 1.0, "eval_f_thres": 3},
    "gmflow": {"feature_channels": 16, "num_transformer_layers": 1, "ffn_dim_expansion": 1},
    "gmflow_refine": {"feature_channels": 16, "num_transformer_layers": 1, "ffn_dim_expansion": 1},
    "searaft_s": {"iters": 1, "dim": 32, "initial_dim": 16, "block_dims": (16, 24, 32)},
    "searaft_m": {"iters": 1, "dim": 32, "initial_dim": 16, "block_dims": (16, 24, 32)},
    "searaft_l": {"iters": 1, "dim": 32, "initial_dim": 16, "block_dims": (16, 24, 32)},
    "unimatch_scale1": {"feature_channels": 16, "num_transformer_layers": 1, "ffn_dim_expansion": 1},
    "unimatch_scale2": {"feature_channels": 16, "num_transformer_layers": 1, "ffn_dim_expansion": 1},
    "unimatch_scale2_regrefine6": {
        "feature_channels": 16,
        "num_transformer_layers": 1,
        "ffn_dim_expansion": 1,
        "num_reg_refine": 2,
    },
    "perceiver_io": {
        "min_overlap": 4,
        "network_config": {
            "num_latents": 8,
            "d_latents": 16,
            "train_size": [16, 24],
            "num_self_attends_per_block": 1,
            "num_self_attention_heads": 2,
        },
    },
}


# Official checkpoint files that wrap the state_dict (GMFlow saves {'model': state_dict}).
WRAPPED = {
    "gmflow": "model",
    "gmflow_refine": "model",
    "unimatch_scale1": "model",
    "unimatch_scale2": "model",
    "unimatch_scale2_regrefine6": "model",
}


def test_every_registered_model_has_test_settings():
    assert sorted(TEST_OVERRIDES) == list_models()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    image0 = torch.rand(1, 3, 37, 53) * 255  # odd sizes: padding and cropping inside the wrapper
    return image0, torch.roll(image0, shifts=(1, 2), dims=(2, 3))


@pytest.mark.parametrize("name", list_models())
def test_contract_forward_and_bidirectional(name, pair):
    spec = get_spec(name)
    model = load_model(name, random_init=spec.needs_weights, **TEST_OVERRIDES[name])
    image0, image1 = pair
    with torch.inference_mode():
        flow = model(image0, image1)
        forward, backward = model.bidirectional(image0, image1)
    assert flow.shape == (1, 2, 37, 53) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    assert forward.shape == backward.shape == flow.shape
    torch.testing.assert_close(forward, flow, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(image0[:, :2], image1[:, :2])


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).needs_weights])
def test_learned_models_need_a_checkpoint_and_record_them(name):
    spec = get_spec(name)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_model(name)
    assert spec.checkpoints, name
    for ckpt in spec.checkpoints:
        assert ckpt.filename and ckpt.url.startswith("https://") and ckpt.trained_on, ckpt
        assert set(ckpt.benchmark_config) <= {
            "sintel",
            "kitti",
            "kitti2012",
            "chairs",
            "things",
            "middlebury",
            "hd1k",
        }, ckpt.benchmark_config
        assert all(isinstance(v, float | int) for v in ckpt.published.values())
        assert not ckpt.published or ckpt.source, f"{ckpt.filename}: published numbers need a source"


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).needs_weights])
def test_state_dict_from_a_model_loads_back_strictly_and_a_missing_key_is_named(name, tmp_path):
    model = load_model(name, random_init=True, **TEST_OVERRIDES[name])
    state = model.state_dict()
    path = tmp_path / "weights.pt"

    def save(weights):
        torch.save({WRAPPED[name]: weights} if name in WRAPPED else weights, path)

    save(state)
    reloaded = load_model(name, checkpoint=str(path), **TEST_OVERRIDES[name])
    assert len(reloaded.checkpoint_sha256) == 64
    missing = dict(state)
    dropped = sorted(missing)[0]
    del missing[dropped]
    save(missing)
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        load_model(name, checkpoint=str(path), **TEST_OVERRIDES[name])


def test_classical_models_take_no_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="takes no checkpoint"):
        load_model("dis", checkpoint=str(tmp_path / "x.pth"))


def test_cli_lists_every_model(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name} " in printed for name in REGISTRY)
