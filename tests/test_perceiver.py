"""Perceiver IO through transformers: offline directory loading, window tiling, frame and clip labelers.

Tiny random configs (few latents, one self-attention layer) saved with ``save_pretrained`` stand in
for the released weights, which are not available here.
"""

from __future__ import annotations

import hashlib
import socket
import uuid

import fsspec
import pytest
import torch
from safetensors.torch import save_file

from models import CheckpointError, get_spec, load_model
from models.hf_directory import load_pretrained
from models.perceiver import FLOW_SCALE, PerceiverIOFlow, flow_patches, normalize
from models.tiling import TileGrid, tent_weights, tile_starts

TILE = (16, 24)
TINY_FLOW = {"num_latents": 8, "d_latents": 16, "num_self_attends_per_block": 1, "num_self_attention_heads": 2,
             "num_cross_attention_heads": 1, "train_size": list(TILE)}
KINETICS_TINY = {i: f"action {i}" for i in range(7)}
IMAGENET_TINY = {i: f"thing {i}" for i in range(6)}


def tiny_flow_network():
    from transformers import PerceiverConfig, PerceiverForOpticalFlow

    torch.manual_seed(0)
    return PerceiverForOpticalFlow(PerceiverConfig(**TINY_FLOW)).eval()


def tiny_clip_network():
    from transformers import PerceiverConfig, PerceiverForMultimodalAutoencoding

    torch.manual_seed(0)
    config = PerceiverConfig(num_latents=8, d_latents=16, num_self_attends_per_block=1, num_self_attention_heads=2,
                             num_cross_attention_heads=1, num_frames=2, image_size=4, audio_samples_per_frame=32,
                             samples_per_patch=16, output_shape=[1, 2, 16, 16], output_num_channels=8,
                             id2label=KINETICS_TINY, label2id={v: k for k, v in KINETICS_TINY.items()})
    config._label_trainable_num_channels = 8
    return PerceiverForMultimodalAutoencoding(config).eval()


def tiny_image_network():
    from transformers import PerceiverConfig, PerceiverForImageClassificationConvProcessing

    torch.manual_seed(0)
    config = PerceiverConfig(num_latents=8, d_latents=16, num_self_attends_per_block=1, num_self_attention_heads=2,
                             num_cross_attention_heads=1, id2label=IMAGENET_TINY,
                             label2id={v: k for k, v in IMAGENET_TINY.items()})
    return PerceiverForImageClassificationConvProcessing(config).eval()


# The model card's preprocessing, scaled down so that the tiny classifier stays cheap.
TINY_PREPROCESSOR = {"size": 32, "crop_size": 36, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("optical-flow-perceiver")
    tiny_flow_network().save_pretrained(folder)
    return folder


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must be fully offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def pair(h: int, w: int, seed: int = 0, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, h, w, generator=generator) * 255,
            torch.rand(batch, 3, h, w, generator=generator) * 255)


# ----------------------------------------------------------------------------- loading


def test_directory_loads_offline_from_a_local_path_and_memory(flow_dir, no_network):
    local = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4)
    assert isinstance(local, PerceiverIOFlow) and local.tile == TILE
    assert local.checkpoint_sha256 == sha256_of(flow_dir / "model.safetensors")
    assert local.network.config.num_latents == 8  # the architecture came from config.json

    root = f"memory://perceiver-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for name in ("tiny-flow", "optical-flow-perceiver"):
        for path in flow_dir.iterdir():
            fs.pipe_file(f"{root}/{name}/{path.name}", path.read_bytes())
    copied = load_model("perceiver_io", checkpoint=f"{root}/tiny-flow", min_overlap=4)
    assert copied.checkpoint_sha256 == local.checkpoint_sha256
    image0, image1 = pair(*TILE)
    with torch.inference_mode():
        torch.testing.assert_close(copied(image0, image1), local(image0, image1), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=f"expected sha256 {'0' * 64}"):
        load_model("perceiver_io", checkpoint=f"{root}/tiny-flow", checkpoint_sha256="0" * 64, min_overlap=4)
    # A folder with the release's name is checked against the release's digest: these weights are not it.
    with pytest.raises(CheckpointError, match=get_spec("perceiver_io").checkpoints[0].sha256):
        load_model("perceiver_io", checkpoint=f"{root}/optical-flow-perceiver", min_overlap=4)


def test_equivalent_digest_is_accepted_and_others_refused(flow_dir):
    from transformers import PerceiverForOpticalFlow

    actual = sha256_of(flow_dir / "model.safetensors")
    loaded = load_pretrained(PerceiverForOpticalFlow, str(flow_dir), expected_sha256="a" * 64,
                             equivalent_sha256=(actual,))
    assert loaded.sha256 == actual and loaded.weights_file == "model.safetensors"
    with pytest.raises(CheckpointError, match=f"expected sha256 {'a' * 64}, got {actual}"):
        load_pretrained(PerceiverForOpticalFlow, str(flow_dir), expected_sha256="a" * 64)


def test_loading_is_strict(flow_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import PerceiverForOpticalFlow

    state = load_file(flow_dir / "model.safetensors")
    dropped = sorted(state)[0]
    del state[dropped]
    (tmp_path / "config.json").write_bytes((flow_dir / "config.json").read_bytes())
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_pretrained(PerceiverForOpticalFlow, str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="one of"):
        load_pretrained(PerceiverForOpticalFlow, str(tmp_path))


def test_a_directory_of_another_perceiver_is_named(tmp_path):
    tiny_image_network().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="expected a PerceiverForOpticalFlow checkpoint"):
        load_model("perceiver_io", checkpoint=str(tmp_path))


def test_network_config_applies_to_random_init_only(flow_dir):
    with pytest.raises(ValueError, match="network_config"):
        load_model("perceiver_io", checkpoint=str(flow_dir), network_config={"num_latents": 4})
    with pytest.raises(ValueError, match="min_overlap"):
        load_model("perceiver_io", checkpoint=str(flow_dir))  # 20 px does not fit a 16×24 window


def test_registry_record_of_the_release():
    spec = get_spec("perceiver_io")
    (record,) = spec.checkpoints
    assert record.url.startswith("https://huggingface.co/deepmind/optical-flow-perceiver/")
    assert record.published == {"sintel_train_clean_epe": 1.81, "sintel_train_final_epe": 2.42,
                                "kitti_train_epe": 4.98}
    assert "Table 4" in record.source and len(record.sha256) == 64
    # A folder named like the release is checked against its digest.
    assert spec.find_checkpoint("/weights/optical-flow-perceiver") is record


# ----------------------------------------------------------------------------- inputs and tiling


def test_patches_hold_each_pixels_3x3_neighbourhood_in_tf_order():
    frames = torch.randn(1, 2, 3, 5, 7)
    patches = flow_patches(frames)
    assert patches.shape == (1, 2, 27, 5, 7)
    padded = torch.nn.functional.pad(frames, (1, 1, 1, 1))
    for row in range(3):
        for col in range(3):
            for rgb in range(3):
                expected = padded[:, :, rgb, row:row + 5, col:col + 7]
                assert torch.equal(patches[:, :, 3 * (3 * row + col) + rgb], expected)
    assert normalize(torch.tensor([0.0, 255.0])).tolist() == [-1.0, 1.0]


def test_tile_starts_follow_the_colab_and_stay_inside():
    assert tile_starts(436, 368, 20) == [0, 68]  # Sintel height
    assert tile_starts(1024, 496, 20) == [0, 476, 528]  # Sintel width: the colab's grid
    assert tile_starts(368, 368, 20) == [0]
    assert tile_starts(700, 368, 20) == [0, 332]  # the colab: [0, 348, 332], its window at 348 ends at 716 > 700
    for length in range(368, 2000, 7):
        starts = tile_starts(length, 368, 20)
        assert starts[0] == 0 and starts[-1] == length - 368
        assert all(b - a <= 368 - 20 for a, b in zip(starts, starts[1:]))  # overlap ≥ 20 px
        assert starts == sorted(set(starts))
    with pytest.raises(ValueError, match="min_overlap"):
        tile_starts(500, 368, 368)


def test_tent_weights_and_blending_are_a_partition_of_unity():
    weights = tent_weights(6, 9)
    assert weights[0].tolist() == [1.0] * 9 and weights[:, 0].tolist() == [1.0] * 6
    assert weights.max() == 3 and torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))
    grid = TileGrid(40, 61, TILE, min_overlap=4)
    assert len(grid.origins) > 4
    field = torch.randn(2, 40, 61, dtype=torch.float64)
    torch.testing.assert_close(grid.blend(grid.crop(field)), field, rtol=1e-12, atol=1e-12)  # every seam
    constant = torch.full((len(grid.origins), 2, *TILE), 3.25)
    assert torch.allclose(grid.blend(constant), torch.tensor(3.25))


def test_a_frame_of_exactly_one_window_is_a_single_forward(flow_dir):
    model = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4)
    image0, image1 = pair(*TILE)
    with torch.inference_mode():
        flow = model(image0, image1)
        logits = model.network(inputs=flow_patches(normalize(torch.stack([image0, image1], dim=1)))).logits
    torch.testing.assert_close(flow, logits.permute(0, 3, 1, 2) * FLOW_SCALE, rtol=1e-6, atol=0)


class ConstantFlowNetwork(torch.nn.Module):
    """Stands in for the network: every window predicts the same translation (logits = pixels / 20)."""

    def __init__(self, u: float, v: float, tile=TILE):
        super().__init__()
        from transformers import PerceiverConfig

        self.config = PerceiverConfig(train_size=list(tile))
        self.uv = torch.nn.Parameter(torch.tensor([u, v]) / FLOW_SCALE, requires_grad=False)
        self.windows = 0

    def forward(self, inputs):
        from types import SimpleNamespace

        self.windows += inputs.shape[0]
        n, _, _, h, w = inputs.shape
        return SimpleNamespace(logits=self.uv.expand(n, h, w, 2))


def test_a_constant_translation_stays_constant_across_seams_and_padding():
    network = ConstantFlowNetwork(2.5, -1.25)
    model = PerceiverIOFlow(network=network, tile_batch=5, min_overlap=4)
    image0, image1 = pair(45, 70, batch=3)
    flow = model(image0, image1)
    assert flow.shape == (3, 2, 45, 70)
    torch.testing.assert_close(flow[:, 0], torch.full((3, 45, 70), 2.5))
    torch.testing.assert_close(flow[:, 1], torch.full((3, 45, 70), -1.25))
    assert network.windows == 3 * len(TileGrid(45, 70, TILE, 4).origins)  # every window of every pair, batched
    small = model(*pair(9, 11))  # smaller than a window: padded, then cropped back
    assert small.shape == (1, 2, 9, 11) and torch.allclose(small[:, 0], torch.tensor(2.5))


def test_windows_batched_across_pairs_equal_one_pair_at_a_time(flow_dir):
    batched = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4, tile_batch=7)
    single = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4, tile_batch=1)
    image0, image1 = pair(37, 53, batch=2)
    with torch.inference_mode():
        together = batched(image0, image1)
        apart = torch.cat([single(image0[i:i + 1], image1[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-7)


def test_small_frames_are_padded_where_pad_mode_says(flow_dir):
    sintel = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4)
    kitti = load_model("perceiver_io", checkpoint=str(flow_dir), min_overlap=4, pad_mode="kitti")
    image0, image1 = pair(10, 24)
    with torch.inference_mode():
        padded = torch.nn.functional.pad(torch.cat([image0, image1]), (0, 0, 0, 6), mode="replicate")
        expected = kitti(padded[:1], padded[1:])[..., :10, :]
        torch.testing.assert_close(kitti(image0, image1), expected)
        centred = torch.nn.functional.pad(torch.cat([image0, image1]), (0, 0, 3, 3), mode="replicate")
        torch.testing.assert_close(sintel(image0, image1), sintel(centred[:1], centred[1:])[..., 3:13, :])
