"""SEA-RAFT: agreement with the official code (flow both ways, uncertainty), the confidence it gives,
frames encoded once, both released checkpoint formats, registry records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models import CheckpointError, get_spec, load_model
from models.searaft import SEARAFT, SPRING_PUBLISHED, convert_searaft_state, mixture_confidence
from tests.parity import image_pair, keys_and_shapes, reference_fixture, rel_l2, seeded_model
from tests.searaft_reference import CASES, FIXTURE, TINY, seeded_state

NAMES = ["searaft_s", "searaft_m", "searaft_l"]
# Settings of config/eval/*.json each reference case ran with (iters, scale).
OFFICIAL = {"s": (4, 0), "m": (4, 0), "l": (12, 0), "m_spring": (4, -1)}


reference = reference_fixture(FIXTURE)


def _seeded(name: str, **overrides) -> SEARAFT:
    return seeded_model(name, seeded_state, **{**TINY, **overrides})


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(("size", "name"), [("s", "searaft_s"), ("m", "searaft_m"), ("m", "searaft_l")])
def test_state_dict_keys_match_official(size, name, reference):
    assert keys_and_shapes(load_model(name, random_init=True)) == sorted(reference[f"keys_{size}"].tolist())


@pytest.mark.parametrize("case", list(CASES))
def test_matches_official_code(case, reference):
    """Same weights and frames as the official calc_flow: flow both ways, uncertainty, confidence."""
    name, _, (h, w), step = CASES[case]
    iters, scale = OFFICIAL[case]
    model = _seeded(name, scale=scale)
    assert model.iters == iters  # the registry's default is the official eval setting
    image0, image1 = image_pair(reference, (h, w))
    sub = (slice(None), slice(None), slice(None, None, step), slice(None, None, step))
    expected = {
        key: torch.from_numpy(reference[f"{case}_{key}"])[None]
        for key in ("forward", "backward", "forward_info", "backward_info")
    }
    assert expected["forward"].norm(dim=1).mean() > 1.0  # a non-trivial flow to compare
    with torch.no_grad():  # both directions in one call, as predict_pairs makes it
        flow, info = model.estimate(torch.cat([image0, image1]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert flow.shape == (2, 2, h, w) and info.shape == (2, 4, h, w)
    assert rel_l2(flow[:1][sub], expected["forward"]) < 1e-4
    assert rel_l2(flow[1:][sub], expected["backward"]) < 1e-4
    assert rel_l2(info[:1][sub], expected["forward_info"]) < 1e-4
    assert rel_l2(info[1:][sub], expected["backward_info"]) < 1e-4
    confidence = mixture_confidence(info[:1][sub])
    assert rel_l2(confidence, mixture_confidence(expected["forward_info"])) < 1e-4
    if case == "s":
        assert confidence.std() > 0.1  # here the seeded uncertainty gives a confidence that varies


def test_half_resolution_runs_the_network_on_the_halved_frames(reference):
    """scale -1 = the scale-0 network on frames halved by bilinear resizing, its flow resized back ×2."""
    half, full = _seeded("searaft_m", scale=-1), _seeded("searaft_m", scale=0)
    assert (half.pad_multiple, full.pad_multiple) == (2, 1)
    image0, image1 = image_pair(reference, (250, 268))
    down = [
        torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        for x in (image0, image1)
    ]
    with torch.no_grad():
        flow = half(image0, image1)
        small = full(*down)
        odd = half(image0[..., :249, :267], image1[..., :249, :267])  # padded to even by the contract
    expected = 2 * torch.nn.functional.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)
    assert flow.shape == (1, 2, 250, 268) and rel_l2(flow, expected) < 1e-5
    assert odd.shape == (1, 2, 249, 267) and torch.isfinite(odd).all()


# ----------------------------------------------------------------------------- confidence


def test_confidence_is_the_mixtures_one_pixel_probability_relative_to_the_sharpest():
    # Pixels: all weight on the ordinary component; an even mixture with b = 4 px; the same with
    # b = e^10 (the clamp); raw log-scales beyond the clamps on both components.
    # Rows: pixels; columns: the weight logits of the wide and the ordinary component, their raw log-scales.
    pixels = torch.tensor(
        [[-30.0, 30.0, 5.0, -5.0], [0.0, 0.0, math.log(4.0), 0.0], [0.0, 0.0, 20.0, 0.0], [0.0, 0.0, -2.0, -3.0]]
    )
    info = pixels.T[None, :, None, :]  # 1×4×1×4
    confidence = mixture_confidence(info, var_min=0.0, var_max=10.0)[0, 0]
    ordinary = 1 - math.exp(-1)
    expected = [
        1.0,
        0.5 * (1 - math.exp(-1 / 4)) / ordinary + 0.5,
        0.5 * -math.expm1(-math.exp(-10)) / ordinary + 0.5,
        1.0,
    ]
    torch.testing.assert_close(confidence, torch.tensor(expected), rtol=1e-6, atol=0)


def test_confidence_falls_with_the_predicted_scale_and_stays_in_range():
    log_b = torch.linspace(-1, 12, 50)
    info = torch.stack([torch.full_like(log_b, 1.0), torch.zeros_like(log_b), log_b, torch.zeros_like(log_b)])
    confidence = mixture_confidence(info[None, :, None, :])[0, 0]
    steps = confidence[1:] - confidence[:-1]
    inside = (log_b[1:] > 0) & (log_b[:-1] < 10)  # the first component's scale is clamped to [1, e^10]
    assert (steps[inside] < 0).all() and (steps[~inside] == 0).all()
    assert confidence.max() == 1.0 and confidence.min() > 0


def test_pairs_encode_each_frame_once_and_equal_pair_by_pair(reference):
    model = _seeded("searaft_s", iters=2)
    frames = torch.stack(
        [torch.from_numpy(reference[k][:125, :134]).permute(2, 0, 1).float() for k in ("image0", "image1", "image0")]
    )
    frames[2] = frames[2].flip(-1)
    calls = []
    model.fnet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    index0, index1 = torch.tensor([0, 1]), torch.tensor([1, 2])
    with torch.no_grad():
        out = model.pairs(frames, index0, index1)
        assert calls == [3]
        singles = [model.pairs(frames[[i, j]], torch.tensor([0]), torch.tensor([1])) for i, j in zip([0, 1], [1, 2])]
    assert model.predicts_confidence and out.confidence.shape == (2, 125, 134)
    for field in ("forward", "backward", "confidence"):
        expected = torch.cat([getattr(s, field) for s in singles])
        assert rel_l2(getattr(out, field), expected) < 1e-5
    assert rel_l2(out.forward[0], out.forward[1]) > 1e-3  # the two pairs differ, far beyond the agreement above
    assert ((out.confidence > 0) & (out.confidence <= 1)).all()


# ----------------------------------------------------------------------------- checkpoints


def _official_state(name: str) -> dict[str, torch.Tensor]:
    return seeded_state(load_model(name, random_init=True, **TINY).state_dict(), seed=7)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_pth_loads_strictly(prefix, tmp_path):
    state = _official_state("searaft_m")
    path = tmp_path / "Tartan-C-T-TSKH-spring540x960-M.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    model = load_model("searaft_m", checkpoint=str(path), **TINY)
    assert model.scale == -1 and model.iters == 4  # the Spring checkpoint's official settings
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    wrong = dict(state)
    wrong["update_block.refine.0.gamma_"] = wrong.pop("update_block.refine.0.gamma")
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"missing keys: update_block\.refine\.0\.gamma.*unexpected keys"):
        load_model("searaft_m", checkpoint=str(path), **TINY)


def _hub_directory(path, state: dict[str, torch.Tensor], config: dict | None = None):
    """What PyTorchModelHubMixin.save_pretrained writes for the official model class."""
    from huggingface_hub import PyTorchModelHubMixin

    class HubSEARAFT(SEARAFT, PyTorchModelHubMixin):
        pass

    model = HubSEARAFT(arch=load_model("searaft_s", random_init=True, **TINY).arch, iters=4)
    model.load_state_dict(state)
    model.save_pretrained(path, config=config)
    return path


def test_huggingface_directory_loads_strictly(tmp_path):
    from safetensors.torch import load_file, save_file

    state = _official_state("searaft_s")
    folder = _hub_directory(tmp_path / "Tartan-C-T-TSKH-spring540x960-S", state)
    saved = load_file(folder / "model.safetensors")
    # safetensors keeps one name per shared tensor: the downsample.1 aliases of bn3 are not in the file.
    assert "cnet.layer2.0.bn3.weight" in saved and "cnet.layer2.0.downsample.1.weight" not in saved
    model = load_model("searaft_s", checkpoint=str(folder), **TINY)
    assert model.scale == -1 and model.checkpoint_sha256 and isinstance(model, SEARAFT)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    with pytest.raises(CheckpointError, match=f"expected sha256 {'0' * 64}"):
        load_model("searaft_s", checkpoint=str(folder), checkpoint_sha256="0" * 64, **TINY)
    saved["fnet.conv1.weight_"] = saved.pop("fnet.conv1.weight")
    save_file(saved, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: fnet\.conv1\.weight"):
        load_model("searaft_s", checkpoint=str(folder), **TINY)


def test_huggingface_directory_of_another_size_is_named(tmp_path):
    official_m = {
        "pretrain": "resnet34",
        "initial_dim": TINY["initial_dim"],
        "block_dims": list(TINY["block_dims"]),
        "dim": TINY["dim"],
        "radius": 4,
        "num_blocks": 2,
        "iters": 4,
        "scale": -1,
    }
    folder = _hub_directory(tmp_path / "hub", _official_state("searaft_s"), config={"args": official_m})
    assert json.loads((folder / "config.json").read_text())["args"]["pretrain"] == "resnet34"
    with pytest.raises(CheckpointError, match="pretrain='resnet34' \\(expected 'resnet18'\\)"):
        load_model("searaft_s", checkpoint=str(folder), **TINY)


def test_converter_restores_aliases_and_strips_the_prefix():
    bn = torch.ones(3)
    state = {"module.fnet.layer2.0.bn3.weight": bn, "module.fnet.layer2.0.downsample.0.weight": torch.zeros(1)}
    converted = convert_searaft_state(state)
    assert converted.keys() == {
        "fnet.layer2.0.bn3.weight",
        "fnet.layer2.0.downsample.0.weight",
        "fnet.layer2.0.downsample.1.weight",
    }
    assert converted["fnet.layer2.0.downsample.1.weight"] is bn


# ----------------------------------------------------------------------------- registry


def test_registry_records():
    files = {
        "s": [
            "Tartan-C-T-TSKH432x960-S.pth",
            "Tartan-C-T-TSKH-kitti432x960-S.pth",
            "Tartan-C-T-TSKH-spring540x960-S.pth",
            "Tartan-C-T-TSKH-spring540x960-S",
        ],
        "m": [
            "Tartan-C-T-TSKH432x960-M.pth",
            "Tartan-C-T-TSKH-kitti432x960-M.pth",
            "Tartan-C-T-TSKH-kitti432x960-M",
            "Tartan-C-T-TSKH-spring540x960-M.pth",
            "Tartan-C-T-TSKH-spring540x960-M",
        ],
    }
    for name, size, iters in (("searaft_s", "s", 4), ("searaft_m", "m", 4), ("searaft_l", "m", 12)):
        spec = get_spec(name)
        assert [c.filename for c in spec.checkpoints] == files[size]
        assert spec.default_config["iters"] == iters and spec.load_checkpoint is not None
        for ckpt in spec.checkpoints:
            assert ckpt.eval_config == {"iters": iters, "scale": -1 if "spring" in ckpt.filename else 0}
            pth = ckpt.filename.endswith(".pth")
            host = "https://drive.google.com/" if pth else "https://huggingface.co/MemorySlices/"
            assert ckpt.url.startswith(host) and spec.find_checkpoint(f"s3://b/{ckpt.filename}") is ckpt
    tskh_m = get_spec("searaft_m").find_checkpoint("x/Tartan-C-T-TSKH432x960-M.pth")
    assert tskh_m.published == {"sintel_test_clean_epe": 1.44, "sintel_test_final_epe": 2.86}
    assert get_spec("searaft_l").find_checkpoint("x/Tartan-C-T-TSKH-kitti432x960-M.pth").published == {
        "kitti_test_fl_all": 4.30
    }
    assert get_spec("searaft_m").find_checkpoint("Tartan-C-T-TSKH-kitti432x960-M").published == {}  # listed once
    assert all(not c.published for c in get_spec("searaft_s").checkpoints)
    spring_m = SPRING_PUBLISHED[("searaft_m", "Tartan-C-T-TSKH-spring540x960-M.pth")]
    assert spring_m == {
        "spring_test_1px": 3.686,
        "spring_test_epe": 0.363,
        "spring_test_fl": 1.347,
        "spring_test_wauc": 94.534,
    }
    for name, filename in SPRING_PUBLISHED:
        assert get_spec(name).find_checkpoint(filename) is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scale": 1}, "scale: expected one of"),
        ({"iters": 0}, "iters: expected an integer"),
        ({"var_min": 1.0}, "expected var_min ≤ 0 ≤ var_max"),
        ({"corr": "sparse"}, "corr: expected one of"),
    ],
)
def test_bad_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_model("searaft_s", random_init=True, **{**TINY, **overrides})
