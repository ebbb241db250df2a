"""Perceiver IO through transformers: offline directory loading, window tiling, frame and clip labelers.

Tiny random configs (few latents, one self-attention layer) saved with ``save_pretrained`` stand in
for the released weights, which are not available here.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import s3fs
import torch
from safetensors.torch import save_file

from jobs.cli import main as cli_main
from jobs.synthetic import Motion, tone, translating_frames, write_video, write_video_with_audio
from models import CheckpointError, get_spec, load_model
from models.hf_directory import load_pretrained
from models.perceiver import FLOW_SCALE, PerceiverIOFlow, flow_patches, normalize
from models.perceiver_labels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    clip_frame,
    load_clip_classifier,
    load_image_classifier,
)
from models.tiling import TileGrid, tent_weights, tile_starts
from pipeline.label.clip_labels import ClipShape, iter_clips
from pipeline.label.frame_labels import FrameLabeler
from pipeline.read.decode import DecodeReport, iter_video_frames
from pipeline.schema import output_schema, top_k_column

TILE = (16, 24)
TINY_FLOW = {
    "num_latents": 8,
    "d_latents": 16,
    "num_self_attends_per_block": 1,
    "num_self_attention_heads": 2,
    "num_cross_attention_heads": 1,
    "train_size": list(TILE),
}
KINETICS_TINY = {i: f"action {i}" for i in range(7)}
IMAGENET_TINY = {i: f"thing {i}" for i in range(6)}


def tiny_flow_network():
    from transformers import PerceiverConfig, PerceiverForOpticalFlow

    torch.manual_seed(0)
    return PerceiverForOpticalFlow(PerceiverConfig(**TINY_FLOW)).eval()


def tiny_clip_network():
    from transformers import PerceiverConfig, PerceiverForMultimodalAutoencoding

    torch.manual_seed(0)
    config = PerceiverConfig(
        num_latents=8,
        d_latents=16,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_frames=2,
        image_size=4,
        audio_samples_per_frame=1920,
        samples_per_patch=16,
        output_shape=[1, 2, 16, 16],
        output_num_channels=8,
        id2label=KINETICS_TINY,
        label2id={v: k for k, v in KINETICS_TINY.items()},
    )
    config._label_trainable_num_channels = 8
    return PerceiverForMultimodalAutoencoding(config).eval()


def tiny_image_network():
    from transformers import PerceiverConfig, PerceiverForImageClassificationConvProcessing

    torch.manual_seed(0)
    config = PerceiverConfig(
        num_latents=8,
        d_latents=16,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        id2label=IMAGENET_TINY,
        label2id={v: k for k, v in IMAGENET_TINY.items()},
    )
    return PerceiverForImageClassificationConvProcessing(config).eval()


# The model card's preprocessing, scaled down so that the tiny classifier stays cheap.
TINY_PREPROCESSOR = {
    "size": 32,
    "crop_size": 36,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


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
    return (
        torch.rand(batch, 3, h, w, generator=generator) * 255,
        torch.rand(batch, 3, h, w, generator=generator) * 255,
    )


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
    loaded = load_pretrained(
        PerceiverForOpticalFlow, str(flow_dir), expected_sha256="a" * 64, equivalent_sha256=(actual,)
    )
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
    assert record.published == {"sintel_train_clean_epe": 1.81, "sintel_train_final_epe": 2.42, "kitti_train_epe": 4.98}
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
                expected = padded[:, :, rgb, row : row + 5, col : col + 7]
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
        apart = torch.cat([single(image0[i : i + 1], image1[i : i + 1]) for i in range(2)])
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


# ----------------------------------------------------------------------------- frame labels


def test_image_preprocessing_crops_the_centre_as_the_model_card():
    preprocessing = ImagePreprocessing()  # transformers' PerceiverImageProcessor defaults: 224 of 256, ImageNet stats
    image = torch.zeros(1, 3, 480, 640)
    image[..., 30:450, 110:530] = 200.0  # the centre crop: int(224 / 256 · 480) = 420 px, top 30, left 110
    pixels = preprocessing(image)
    assert pixels.shape == (1, 3, 224, 224)
    expected = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pixels, expected.view(1, 3, 1, 1).expand_as(pixels), rtol=0, atol=1e-6)
    config = ImagePreprocessing.from_config({"size": {"height": 32, "width": 32}, "crop_size": 36})
    assert config.size == (32, 32) and config.crop_size == (36, 36)
    with pytest.raises(ValueError, match="do_normalize"):
        ImagePreprocessing.from_config({"do_normalize": False})


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vision-perceiver-conv")
    tiny_image_network().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_PREPROCESSOR))
    return folder


def test_image_classifier_top_k_from_its_directory(image_dir, no_network):
    classifier, sha256 = load_image_classifier(str(image_dir), k=3, batch_size=2)
    assert sha256 == sha256_of(image_dir / "model.safetensors")
    assert classifier.preprocessing.size == (32, 32)  # from preprocessor_config.json
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    top = classifier(frames)
    assert top.ids.shape == top.names.shape == top.probs.shape == (3, 3)
    assert all(top.names[i, j] == IMAGENET_TINY[top.ids[i, j]] for i in range(3) for j in range(3))
    assert (np.diff(top.probs, axis=1) <= 0).all()
    with torch.inference_mode():
        pixels = classifier.preprocessing(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
        probs = classifier.network(inputs=pixels).logits.softmax(-1)
    np.testing.assert_allclose(top.probs, probs.topk(3).values.numpy(), rtol=1e-6)


class FakeClassifier:
    k = 2

    def __init__(self):
        self.seen = 0

    def __call__(self, images):
        from models.perceiver_labels import TopK

        self.seen += len(images)
        n = len(images)
        return TopK(
            np.tile(np.int32([7, 3]), (n, 1)),
            np.tile(np.array(["seven", "three"]), (n, 1)),
            np.tile(np.float32([0.75, 0.25]), (n, 1)),
        )


def test_frame_labels_every_n_pairs_and_their_columns():
    classifier = FakeClassifier()
    rows = {"ordinal": np.arange(5, 10), "image0": np.zeros((5, 4, 4, 3), np.uint8)}
    labels = FrameLabeler(classifier, every=2, checkpoint_sha256="")(rows)
    assert classifier.seen == 2  # ordinals 6 and 8
    assert labels["frame_classes"][:, 0].tolist() == [-1, 7, -1, 7, -1]
    assert labels["frame_class_names"][1].tolist() == ["seven", "three"]
    valid = labels["frame_classes"][:, 0] >= 0
    column = top_k_column(labels["frame_class_probs"], valid, pa.float32())
    assert column.to_pylist() == [None, [0.75, 0.25], None, [0.75, 0.25], None]
    assert "frame_classes" not in output_schema().names  # the default schema is unchanged
    assert output_schema(optional=("frame_classes",)).field("frame_classes").type == pa.list_(pa.int32())


# ----------------------------------------------------------------------------- clip labels


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multimodal-perceiver")
    tiny_clip_network().save_pretrained(folder)
    return folder


def test_clip_decoding_in_chunks_equals_transformers_subsampled_forward(clip_dir):
    classifier, _ = load_clip_classifier(str(clip_dir), k=3, output_chunks=4)
    assert (classifier.frames, classifier.image_size, classifier.fps) == (2, (16, 16), 25.0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    audio = rng.uniform(-1, 1, (2, classifier.audio_samples)).astype(np.float32)
    inputs = classifier.inputs(torch.from_numpy(frames), torch.from_numpy(audio))
    image, sound = [], []
    with torch.inference_mode():
        encoded = classifier.encode(inputs)
        for points in classifier.chunk_points():
            reference = classifier.network(inputs=inputs, subsampled_output_points=points).logits
            mine = classifier.decode(encoded, points)
            for key in ("image", "audio", "label"):
                torch.testing.assert_close(mine[key], reference[key], rtol=0, atol=0)
            image.append(reference["image"])
            sound.append(reference["audio"])
    labels = classifier(frames, audio)
    video = torch.cat(image, dim=1).reshape(2, 2, 16, 16, 3)
    expected_video = (video - torch.from_numpy(frames).float() / 255).square().mean(dim=(1, 2, 3, 4))
    expected_audio = (torch.cat(sound, dim=1) - torch.from_numpy(audio)).square().mean(dim=1)
    np.testing.assert_allclose(labels.video_mse, expected_video.numpy(), rtol=1e-5)
    np.testing.assert_allclose(labels.audio_mse, expected_audio.numpy(), rtol=1e-5)
    assert labels.classes.names[0, 0] == KINETICS_TINY[labels.classes.ids[0, 0]]


def test_clips_take_their_audio_by_timestamp_and_silence_without_a_track(tmp_path):
    frames = translating_frames(40, 56, 12, Motion(1.0, 0.0))
    audio = tone(12 / 25, hz=300)
    with_audio = write_video_with_audio(tmp_path / "with.mp4", frames, audio, fps=25)
    silent = write_video(tmp_path / "silent.mp4", frames, fps=25)
    shape = ClipShape(frames=4, size=(16, 16), fps=25.0, audio_samples=4 * 1920, audio_rate=48000)
    with open(with_audio, "rb") as video, open(with_audio, "rb") as sound:
        clips = list(iter_clips(video, sound, shape))
    assert [c.frame_indices for c, _ in clips] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert all(has for _, has in clips) and clips[0][0].frames.shape == (4, 16, 16, 3)
    for clip, _ in clips[1:]:  # AAC's first frames ramp up; later ones match the tone closely
        start = int(round(clip.times[0] * 48000))
        assert np.abs(clip.audio - audio[start : start + 4 * 1920]).max() < 0.05
    with open(silent, "rb") as video, open(silent, "rb") as sound:
        clips = list(iter_clips(video, sound, shape, max_clips=2))
    assert len(clips) == 2 and not any(has for _, has in clips)
    assert all(not clip.audio.any() for clip, _ in clips)
    with open(silent, "rb") as video:
        decoded = [frame.image for frame in iter_video_frames(video, DecodeReport())]
    np.testing.assert_array_equal(clips[1][0].frames[2], clip_frame(decoded[6], (16, 16)))


# ----------------------------------------------------------------------------- through the pipeline


@pytest.mark.slow
def test_frame_and_clip_labels_through_the_pipeline(ray_local, local_s3, tmp_path, image_dir, clip_dir, capsys):
    """flowlabel label from SeaweedFS with both labelers, their checkpoints read from S3 too; then a resume."""
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    root = f"{local_s3.bucket}/perceiver-{uuid.uuid4().hex[:8]}"
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = translating_frames(48, 64, 9, Motion(1.0, 0.5))
    write_video_with_audio(videos / "talking.mp4", frames, tone(9 / 25), fps=25)
    write_video(videos / "silent.mp4", frames, fps=25)
    fs.put(str(videos), f"{root}/videos", recursive=True)
    fs.put(str(image_dir), f"{root}/weights/vision", recursive=True)
    fs.put(str(clip_dir), f"{root}/weights/multimodal", recursive=True)
    out = f"s3://{root}/labels"
    argv = [
        "label",
        f"s3://{root}/videos/",
        "--out",
        out,
        "--storage-options",
        json.dumps(local_s3.storage_options),
        "--frame-labels",
        "perceiver_image_classifier",
        "--frame-labels-checkpoint",
        f"s3://{root}/weights/vision",
        "--frame-labels-top-k",
        "3",
        "--frame-labels-every",
        "3",
        "--clip-labels",
        "perceiver_multimodal",
        "--clip-labels-checkpoint",
        f"s3://{root}/weights/multimodal",
        "--clip-labels-top-k",
        "3",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "labeled 16 pairs" in printed and "labeled 8 clips" in printed, printed

    pairs = pads.dataset(f"{root}/labels", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert pairs.num_rows == 16
    for frame0, classes, names, probs in zip(
        *(pairs[c].to_pylist() for c in ("frame0", "frame_classes", "frame_class_names", "frame_class_probs"))
    ):
        if frame0 % 3:  # every 3rd pair of a video: ordinals 0, 3, 6
            assert classes is None and names is None and probs is None
        else:
            assert len(classes) == 3 and names == [IMAGENET_TINY[c] for c in classes] and probs == sorted(probs)[::-1]

    clips = pads.dataset(f"{root}/labels/_clips", filesystem=fs, format="parquet", partitioning="hive").to_table()
    rows = sorted(clips.to_pylist(), key=lambda r: (r["source"], r["clip"]))
    assert len(rows) == 8  # 9 frames at 25 frames/s: 4 clips of 2 per video, the 9th frame left over
    assert [(r["frame_first"], r["frame_last"]) for r in rows[:4]] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert {r["source"].rsplit("/", 1)[-1]: r["has_audio"] for r in rows} == {"silent.mp4": False, "talking.mp4": True}
    assert all(len(r["classes"]) == 3 and r["class_names"][0] == KINETICS_TINY[r["classes"][0]] for r in rows)
    assert all(np.isfinite(r["video_mse"]) and r["video_mse"] > 0 and np.isfinite(r["audio_mse"]) for r in rows)
    assert {r["checkpoint"] for r in rows} == {sha256_of(clip_dir / "model.safetensors")}
    assert (
        pairs.num_rows
        == pads.dataset(f"{root}/labels", filesystem=fs, format="parquet", partitioning="hive").count_rows()
    )  # _clips/ stays out of the pair table

    manifest = json.loads(fs.cat(f"{root}/labels/_flowlabel.json"))
    assert manifest["options"]["frame_labels"]["weights_sha256"] == sha256_of(image_dir / "model.safetensors")
    assert manifest["counts"]["clips"] == 8

    before = {p: fs.info(p)["ETag"] for p in fs.find(f"{root}/labels/_clips")}
    assert cli_main(argv) == 0  # resumed: nothing left to label
    printed = capsys.readouterr().out
    assert "nothing to do: all" in printed and not re.search(r"labeled \d+ clips", printed), printed
    assert {p: fs.info(p)["ETag"] for p in fs.find(f"{root}/labels/_clips")} == before
