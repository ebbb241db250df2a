"""RAFT: exactness against the official code, real-weight accuracy, correlation modes, converters, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import CheckpointError, get_spec, load_model
from models.checkpoint import load_strict
from models.contract import Padding
from models.raft import RAFT
from models.raft_convert import convert_raft_state, is_torchvision_state
from models.raft_corr import AllPairsCorrelation, OnDemandCorrelation, all_pairs_bytes
from tests.raft_reference import FIXTURE, ITERS, RAFT_SMALL, SHARED, SUBSAMPLE, read_rgb, seeded_state, sintel_pair

BENCHMARKS = SHARED / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machines two threads spin against other jobs (4× the
    CPU time here). Flows match the fixture bit for bit at 1 thread, to ~1e-6 at 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


@pytest.fixture(scope="module")
def small_real(shared_data) -> RAFT:
    return load_model("raft_small", checkpoint=str(RAFT_SMALL), iters=ITERS)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


def random_pair(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(255 * torch.rand(b, 3, h, w, generator=gen) for _ in range(2))


# --- exactness against princeton-vl/RAFT (tests/raft_reference.py) -------------------------


@torch.no_grad()
@pytest.mark.usefixtures("shared_data")
def test_small_real_weights_match_official(small_real, reference):
    flow = small_real(*sintel_pair("small_real"))
    ours = flow[0][SUBSAMPLE]
    assert ours.shape == reference["small_real"].shape
    assert rel_l2(ours, torch.from_numpy(reference["small_real"])) < 1e-4


@torch.no_grad()
@pytest.mark.usefixtures("shared_data")
def test_large_seeded_weights_match_official(reference):
    model = load_model("raft_large", random_init=True, iters=ITERS)
    load_strict(model, seeded_state(model))
    ours = model(*sintel_pair("large_seeded"))[0][SUBSAMPLE]
    expected = torch.from_numpy(reference["large_seeded"])
    assert expected.abs().max() > 1  # the random flow moves, so the lookups are exercised
    assert rel_l2(ours, expected) < 1e-4


# --- correlation ---------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [3, 4])
def test_on_demand_lookup_equals_all_pairs(radius):
    gen = torch.Generator().manual_seed(1)
    fmap0, fmap1 = torch.randn(2, 2, 32, 17, 21, generator=gen)
    # centres inside, near the border, fractional, and far outside the map (all-zero windows)
    coords = torch.rand(2, 2, 17, 21, generator=gen) * torch.tensor([30.0, 24.0]).view(1, 2, 1, 1) - 4
    coords[0, :, 0, 0] = torch.tensor([500.0, -300.0])
    expected = AllPairsCorrelation(fmap0, fmap1, levels=4, radius=radius)(coords)
    # a small chunk forces several chunks, batch items mixed within one
    actual = OnDemandCorrelation(fmap0, fmap1, levels=4, radius=radius, chunk_elements=2**16)(coords)
    assert actual.shape == (2, 4 * (2 * radius + 1) ** 2, 17, 21)
    assert expected[0, :, 0, 0].abs().max() == 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.usefixtures("shared_data")
def test_on_demand_model_equals_all_pairs(small_real):
    image0, image1 = sintel_pair("small_real")
    expected = small_real(image0, image1)
    small_real.corr = "on_demand"
    try:
        actual = small_real(image0, image1)
    finally:
        small_real.corr = "all_pairs"
    assert rel_l2(actual, expected) < 1e-5


def test_all_pairs_memory_formula_matches_docstring():
    # 1/8 grid h×w, levels floor-halved: N·Σ|level|·4 bytes
    assert all_pairs_bytes(1920, 1080) == 32400 * (32400 + 67 * 120 + 33 * 60 + 16 * 30) * 4
    for (w, h), gigabytes in {(960, 540): 0.35, (1920, 1080): 5.56, (3840, 2160): 89.2}.items():
        assert round(all_pairs_bytes(w, h) / 1e9, 2 if gigabytes < 10 else 1) == gigabytes
    assert [round(all_pairs_bytes(w, h, levels=1) / 1e9, 2) for w, h in ((960, 540), (1920, 1080))] == [0.27, 4.20]


# --- shapes, padding, precision --------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_odd_small_input_shape_and_finite(name):
    model = load_model(name, random_init=True, iters=3)
    flow = model(*random_pair(2, 37, 53))
    assert flow.shape == (2, 2, 37, 53) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


@torch.no_grad()
@pytest.mark.parametrize("pad_mode", ["sintel", "kitti"])
@pytest.mark.usefixtures("shared_data")
def test_padding_round_trip(small_real, pad_mode):
    """forward = crop(predict(pad(x))): the flow of each input pixel is read at its padded position."""
    image0, image1 = sintel_pair("small_real")  # 131×197 → 136×200
    small_real.pad_mode = pad_mode
    try:
        flow = small_real(image0, image1)
    finally:
        small_real.pad_mode = "sintel"
    padding = Padding(131, 197, 8, pad_mode)
    left, right, top, bottom = padding.pads
    assert (top, bottom) == ((2, 3) if pad_mode == "sintel" else (0, 5)) and (left, right) == (1, 2)
    padded = small_real.predict(padding.pad(image0), padding.pad(image1))
    assert padded.shape[-2:] == (136, 200)
    torch.testing.assert_close(flow, padded[..., top : top + 131, left : left + 197])


@torch.no_grad()
@pytest.mark.usefixtures("shared_data")
def test_bidirectional_is_both_directions(small_real):
    image0, image1 = sintel_pair("small_real")
    fwd, bwd = small_real.bidirectional(image0, image1)
    assert fwd.shape == bwd.shape == (1, 2, 131, 197)
    torch.testing.assert_close(fwd, small_real(image0, image1), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bwd, small_real(image1, image0), rtol=1e-4, atol=1e-3)
    # the scene moves, so a backward flow that merely copied the forward one would fail here
    assert (fwd + bwd).abs().mean() < 0.5 * fwd.abs().mean()


@torch.no_grad()
@pytest.mark.usefixtures("shared_data")
def test_autocast_keeps_correlation_in_float32(small_real):
    seen = []
    hook = small_real.update_block.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[1].dtype))
    image0, image1 = sintel_pair("small_real")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the CUDA path's code, on the CPU
            flow = small_real.predict(Padding(131, 197, 8).pad(image0), Padding(131, 197, 8).pad(image1))
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float32}
    assert flow.dtype == torch.float32 and torch.isfinite(flow).all()
    reference = small_real.predict(Padding(131, 197, 8).pad(image0), Padding(131, 197, 8).pad(image1))
    assert (flow - reference).norm(dim=1).mean() < 0.5  # bfloat16 features: close, not equal


@pytest.mark.parametrize(
    "override, message",
    [({"iters": 0}, "iters"), ({"corr": "cuda"}, "corr"), ({"pad_mode": "middle"}, "pad_mode")],
)
def test_bad_config_raises(override, message):
    with pytest.raises(ValueError, match=message):
        load_model("raft_small", random_init=True, **override)


# --- checkpoints and converters ------------------------------------------------------------


def test_parameter_counts_match_published():
    # torchvision documents num_params 5,257,536 (large) and 990,162 (small), as the official code has
    assert sum(p.numel() for p in load_model("raft_large", random_init=True).parameters()) == 5_257_536
    assert sum(p.numel() for p in load_model("raft_small", random_init=True).parameters()) == 990_162


@pytest.mark.usefixtures("shared_data")
def test_real_checkpoint_loads_with_registry_settings(small_real):
    spec = get_spec("raft_small")
    record = spec.find_checkpoint(str(RAFT_SMALL))
    assert small_real.checkpoint_sha256 == record.sha256
    assert small_real.iters == ITERS and small_real.corr == "all_pairs"
    default = load_model("raft_small", checkpoint=str(RAFT_SMALL))
    assert default.iters == 32 and default.pad_mode == "sintel"


@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_official_format_converter_and_strict_errors(name, tmp_path):
    model = load_model(name, random_init=True)
    official = {f"module.{k}": v for k, v in seeded_state(model).items()}
    converted = convert_raft_state(official)
    assert set(converted) == set(model.state_dict())
    load_strict(model, converted)
    key = "update_block.flow_head.conv2.weight"
    assert torch.equal(model.state_dict()[key], official[f"module.{key}"])

    missing = dict(official)
    del missing["module.update_block.gru.convq.bias" if name == "raft_small" else "module.update_block.mask.2.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: update_block\.(gru\.convq|mask\.2)\.bias"):
        load_model(name, checkpoint=str(tmp_path / "missing.pth"))

    torch.save({**official, "module.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_model(name, checkpoint=str(tmp_path / "extra.pth"))


def torchvision_shapes(small: bool) -> dict[str, tuple[int, ...]]:
    """Key → shape of torchvision's ``raft_small()`` / ``raft_large()`` state_dict, written from
    torchvision/models/optical_flow/raft.py (Conv2dNormActivation = [conv, norm, relu]),
    independently of the converter."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key, cout, cin, k):
        shapes[f"{key}.weight"] = (cout, cin, *((k, k) if isinstance(k, int) else k))
        shapes[f"{key}.bias"] = (cout,)

    def norm(key, c, kind):
        if kind == "batch":
            for p in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{key}.{p}"] = (c,)
            shapes[f"{key}.num_batches_tracked"] = ()

    def encoder(prefix, widths, kind, bottleneck):
        conv(f"{prefix}.convnormrelu.0", widths[0], 3, 7)
        norm(f"{prefix}.convnormrelu.1", widths[0], kind)
        cin = widths[0]
        for layer, (cout, stride) in enumerate(zip(widths[1:4], (1, 2, 2)), start=1):
            for block in (0, 1):
                key = f"{prefix}.layer{layer}.{block}"
                c_in = cin if block == 0 else cout
                if bottleneck:
                    mid = cout // 4
                    for i, (o, c, k) in enumerate(((mid, c_in, 1), (mid, mid, 3), (cout, mid, 1)), 1):
                        conv(f"{key}.convnormrelu{i}.0", o, c, k)
                        norm(f"{key}.convnormrelu{i}.1", o, kind)
                else:
                    for i, c in enumerate((c_in, cout), 1):
                        conv(f"{key}.convnormrelu{i}.0", cout, c, 3)
                        norm(f"{key}.convnormrelu{i}.1", cout, kind)
                if block == 0 and stride != 1:
                    conv(f"{key}.downsample.0", cout, c_in, 1)
                    norm(f"{key}.downsample.1", cout, kind)
            cin = cout
        conv(f"{prefix}.conv", widths[4], widths[3], 1)

    ue = "update_block"
    if small:
        encoder("feature_encoder", (32, 32, 64, 96, 128), "instance", True)
        encoder("context_encoder", (32, 32, 64, 96, 160), "none", True)
        conv(f"{ue}.motion_encoder.convcorr1.0", 96, 4 * 7 * 7, 1)
        conv(f"{ue}.motion_encoder.convflow1.0", 64, 2, 7)
        conv(f"{ue}.motion_encoder.convflow2.0", 32, 64, 3)
        conv(f"{ue}.motion_encoder.conv.0", 80, 96 + 32, 3)
        for gate in "zrq":
            conv(f"{ue}.recurrent_block.convgru1.conv{gate}", 96, 96 + 82 + 64, 3)
        conv(f"{ue}.flow_head.conv1", 128, 96, 3)
        conv(f"{ue}.flow_head.conv2", 2, 128, 3)
    else:
        encoder("feature_encoder", (64, 64, 96, 128, 256), "instance", False)
        encoder("context_encoder", (64, 64, 96, 128, 256), "batch", False)
        conv(f"{ue}.motion_encoder.convcorr1.0", 256, 4 * 9 * 9, 1)
        conv(f"{ue}.motion_encoder.convcorr2.0", 192, 256, 3)
        conv(f"{ue}.motion_encoder.convflow1.0", 128, 2, 7)
        conv(f"{ue}.motion_encoder.convflow2.0", 64, 128, 3)
        conv(f"{ue}.motion_encoder.conv.0", 126, 192 + 64, 3)
        for gru, kernel in (("convgru1", (1, 5)), ("convgru2", (5, 1))):
            for gate in "zrq":
                conv(f"{ue}.recurrent_block.{gru}.conv{gate}", 128, 128 + 128 + 128, kernel)
        conv(f"{ue}.flow_head.conv1", 256, 128, 3)
        conv(f"{ue}.flow_head.conv2", 2, 256, 3)
        conv("mask_predictor.convrelu.0", 256, 128, 3)
        conv("mask_predictor.conv", 8 * 8 * 9, 256, 1)
    return shapes


@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_torchvision_converter(name):
    small = name == "raft_small"
    gen = torch.Generator().manual_seed(2)
    fake = {k: torch.randn(s, generator=gen) if s else torch.tensor(7) for k, s in torchvision_shapes(small).items()}
    assert is_torchvision_state(fake) and not is_torchvision_state({"module.fnet.conv1.weight": 0})
    model = load_model(name, random_init=True)
    load_strict(model, convert_raft_state(fake))  # every key placed, every shape right
    ours = model.state_dict()
    pairs = {
        "fnet.conv1.weight": "feature_encoder.convnormrelu.0.weight",
        "fnet.conv2.bias": "feature_encoder.conv.bias",
        "cnet.layer3.0.downsample.0.weight": "context_encoder.layer3.0.downsample.0.weight",
        "update_block.encoder.convf2.weight": "update_block.motion_encoder.convflow2.0.weight",
        "update_block.flow_head.conv2.bias": "update_block.flow_head.conv2.bias",
    }
    if small:
        pairs["fnet.layer2.0.conv3.weight"] = "feature_encoder.layer2.0.convnormrelu3.0.weight"
        pairs["update_block.gru.convr.weight"] = "update_block.recurrent_block.convgru1.convr.weight"
    else:
        pairs["update_block.gru.convq2.weight"] = "update_block.recurrent_block.convgru2.convq.weight"
        pairs["update_block.gru.convz1.bias"] = "update_block.recurrent_block.convgru1.convz.bias"
        pairs["update_block.mask.2.weight"] = "mask_predictor.conv.weight"
        pairs["cnet.norm1.running_var"] = "context_encoder.convnormrelu.1.running_var"
        # torchvision stores the downsample norm once; the official name norm3 aliases it
        pairs["cnet.layer2.0.norm3.running_mean"] = "context_encoder.layer2.0.downsample.1.running_mean"
        pairs["cnet.layer2.0.downsample.1.weight"] = "context_encoder.layer2.0.downsample.1.weight"
        pairs["cnet.layer1.1.norm2.bias"] = "context_encoder.layer1.1.convnormrelu2.1.bias"
    for mine, theirs in pairs.items():
        assert torch.equal(ours[mine], fake[theirs]), mine
    with pytest.raises(CheckpointError, match="feature_encoder.extra.weight"):
        convert_raft_state({**fake, "feature_encoder.extra.weight": torch.zeros(1)})


def test_registry_records_and_random_init():
    with pytest.raises(ValueError, match="raft-small.pth"):
        load_model("raft_small")
    model = load_model("raft_small", random_init=True, iters=5, corr="on_demand")
    assert isinstance(model, RAFT) and model.iters == 5 and model.corr == "on_demand" and model.pad_multiple == 8

    large = get_spec("raft_large")
    files = {c.filename: c for c in large.checkpoints}
    for name in ("raft-chairs.pth", "raft-things.pth", "raft-sintel.pth", "raft-kitti.pth"):
        assert files[name].url == "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
        assert files[name].benchmark_config["kitti"] == {"iters": 24, "pad_mode": "kitti"}
    assert files["raft-things.pth"].eval_config["iters"] == 32
    assert files["raft-chairs.pth"].eval_config["iters"] == 24
    assert files["raft-kitti.pth"].eval_config == {"iters": 24, "pad_mode": "kitti"}
    assert files["raft-things.pth"].published["sintel_train_clean_epe"] == 1.43
    tv = large.find_checkpoint("https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth")
    assert tv.url.endswith("raft_large_C_T_SKHT_V2-ff5fadd5.pth") and tv.published["sintel_test_final_epe"] == 3.067


# --- real weights, real ground truth (reference EPEs: ../shared/data/README.md) -------------


def read_flo(path) -> np.ndarray:
    """Middlebury .flo → H×W×2 float32 (u, v)."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, np.float32, 1)
        if magic.size != 1 or magic[0] != 202021.25:
            raise ValueError(f"{path}: expected .flo magic 202021.25, got {magic}")
        w, h = (int(v) for v in np.fromfile(f, np.int32, 2))
        return np.fromfile(f, np.float32, h * w * 2).reshape(h, w, 2)


def epe(model: RAFT, frame0, frame1, gt_path) -> float:
    with torch.no_grad():
        flow = model(read_rgb(frame0), read_rgb(frame1))[0].permute(1, 2, 0).numpy()
    gt = read_flo(gt_path)
    valid = (np.abs(gt) < 1e9).all(axis=-1)
    return float(np.linalg.norm(flow - gt, axis=-1)[valid].mean())


@pytest.mark.slow
@pytest.mark.parametrize(
    "frames, gt, expected",
    [
        (
            ("Sintel/training/clean/alley_1/frame_0001.png", "Sintel/training/clean/alley_1/frame_0002.png"),
            "Sintel/training/flow/alley_1/frame_0001.flo",
            0.242,
        ),
        (
            ("middlebury/other-data/RubberWhale/frame10.png", "middlebury/other-data/RubberWhale/frame11.png"),
            "middlebury/other-gt-flow/RubberWhale/flow10.flo",
            0.320,
        ),
    ],
)
@pytest.mark.usefixtures("shared_data")
def test_real_weights_reproduce_official_epe(small_real, frames, gt, expected):
    value = epe(small_real, *(BENCHMARKS / f for f in frames), BENCHMARKS / gt)
    assert math.isclose(value, expected, abs_tol=0.005), value
