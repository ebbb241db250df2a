"""Perceiver IO classifiers used as labelers beside the flow (Jaegle et al., ICLR 2022, arXiv:2107.14795).

Both run HuggingFace ``transformers`` models loaded from model directories (local path or any
fsspec URI, offline, strict; see :mod:`models.hf_directory`), not re-implementations:

* :class:`ImageClassifier` — ``PerceiverForImageClassificationConvProcessing``
  (``deepmind/vision-perceiver-conv``): ImageNet-1k top-k of single frames, with the model card's
  preprocessing (transformers' ``PerceiverImageProcessor``): centre crop of size/crop_size ×
  the short side (224/256), resize to 224×224 (bicubic), scale to [0, 1], normalize with the
  ImageNet mean and std.
* :class:`ClipClassifier` — ``PerceiverForMultimodalAutoencoding`` (``deepmind/multimodal-perceiver``):
  16-frame clips with their audio are auto-encoded with the class label masked, which makes the
  model a Kinetics-700 classifier (transformers' docs of the class); the reconstruction errors of
  video and audio come with it. Inputs as in DeepMind's video-autoencoding colab
  (deepmind-research ``perceiver/colabs/video_autoencoding.ipynb``): centre square crop resized
  to 224×224, RGB in [0, 1]; audio at 48 kHz (1920 samples per frame: 25 frames/s), in [−1, 1],
  one channel; outputs decoded in chunks of output points (``subsampled_output_points``), as the
  colab does with 128 chunks.

These are labelers, not flow models: they live beside the flow registry in :data:`LABELERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .hf_directory import load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # transformers IMAGENET_DEFAULT_MEAN / STD
IMAGENET_STD = (0.229, 0.224, 0.225)
AUDIO_RATE = 48000  # Hz: the colab resamples to 48 kHz; 1920 samples per frame is then 25 frames/s


@dataclass(frozen=True)
class TopK:
    """Top-k classes per input: ``ids`` N×k int32, ``names`` N×k str, ``probs`` N×k float32 (softmax)."""

    ids: np.ndarray
    names: np.ndarray
    probs: np.ndarray


def top_k(logits: torch.Tensor, k: int, id2label: Mapping[int, str]) -> TopK:
    """N×C logits → the k most probable classes of each row, by softmax probability."""
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    ids_np = ids.cpu().numpy().astype(np.int32)
    names = np.vectorize(lambda i: str(id2label.get(int(i), str(int(i)))), otypes=[str])(ids_np)
    return TopK(ids_np, names.reshape(ids_np.shape), probs.cpu().numpy().astype(np.float32))


def _labels(config: Any) -> dict[int, str]:
    return {int(k): str(v) for k, v in (config.id2label or {}).items()}


# ----------------------------------------------------------------------------- ImageNet frames


def _size(value: Any, name: str) -> tuple[int, int]:
    """An image processor size: an int or {"height", "width"} (or {"shortest_edge"})."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and {"height", "width"} <= set(value):
        return int(value["height"]), int(value["width"])
    if isinstance(value, Mapping) and "shortest_edge" in value:
        return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise ValueError(f"preprocessor_config.json {name}: expected an int or {{height, width}}, got {value!r}")


@dataclass(frozen=True)
class ImagePreprocessing:
    """transformers' ``PerceiverImageProcessor`` (its defaults, or the directory's preprocessor_config.json).

    Centre crop to (size / crop_size) × the short side, resize to ``size`` (bicubic, antialiased as
    PIL's filter, rounded to 8 bits as PIL images are), scale to [0, 1], normalize. torch's
    antialiased bicubic stands in for PIL's (not installed here); they agree to about one grey level.
    """

    size: tuple[int, int] = (224, 224)
    crop_size: tuple[int, int] = (256, 256)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ImagePreprocessing:
        if not config:
            return cls()
        unsupported = [
            k for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize") if config.get(k) is False
        ]
        if unsupported:
            raise ValueError(f"preprocessor_config.json: expected every step enabled, got {unsupported} false")
        return cls(
            size=_size(config.get("size", 224), "size"),
            crop_size=_size(config.get("crop_size", 256), "crop_size"),
            mean=tuple(config.get("image_mean", IMAGENET_MEAN)),
            std=tuple(config.get("image_std", IMAGENET_STD)),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float RGB in [0, 255] → N×3×size normalized pixel values."""
        h, w = images.shape[-2:]
        ch = int(self.size[0] / self.crop_size[0] * min(h, w))
        cw = int(self.size[1] / self.crop_size[1] * min(h, w))
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = images[..., top : top + ch, left : left + cw]
        resized = F.interpolate(crop, size=self.size, mode="bicubic", antialias=True, align_corners=False)
        pixels = resized.round().clamp(0, 255) / 255.0
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


class ImageClassifier:
    """ImageNet-1k top-k of frames. ``network``: ``PerceiverForImageClassificationConvProcessing``."""

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        preprocessing: ImagePreprocessing = ImagePreprocessing(),
        k: int = 5,
        batch_size: int = 16,
    ):
        if k < 1 or batch_size < 1:
            raise ValueError(f"expected k ≥ 1 and batch_size ≥ 1, got k={k}, batch_size={batch_size}")
        self.network, self.preprocessing, self.k, self.batch_size = network.eval(), preprocessing, k, batch_size
        self.id2label = _labels(network.config)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> TopK:
        """N×H×W×3 uint8 RGB frames → their top-k ImageNet classes."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames N×H×W×3, got {images.shape} {images.dtype}")
        logits = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size])).to(self.device)
            pixels = self.preprocessing(batch.permute(0, 3, 1, 2).float())
            logits.append(self.network(inputs=pixels).logits)
        return top_k(torch.cat(logits), self.k, self.id2label)


def load_image_classifier(
    uri: str,
    *,
    sha256: str | None = None,
    k: int = 5,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[ImageClassifier, str]:
    """A ``PerceiverForImageClassificationConvProcessing`` directory → (classifier, sha256 of its weights)."""
    from transformers import PerceiverForImageClassificationConvProcessing

    loaded = load_pretrained(
        PerceiverForImageClassificationConvProcessing, uri, expected_sha256=sha256, storage_options=storage_options
    )
    preprocessing = ImagePreprocessing.from_config(loaded.side_files.get("preprocessor_config.json"))
    return ImageClassifier(
        network=loaded.model.to(device), preprocessing=preprocessing, k=k, batch_size=batch_size
    ), loaded.sha256


# ----------------------------------------------------------------------------- Kinetics-700 clips


def clip_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 frame → size uint8: centre square crop, then cv2.resize (bilinear), as the colab's
    ``load_video`` (``crop_center_square`` + ``cv2.resize``)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    square = image[top : top + side, left : left + side]
    return cv2.resize(square, (size[1], size[0]))


@dataclass(frozen=True)
class ClipLabels:
    """Per clip: top-k Kinetics-700 classes; mean squared reconstruction error of the video (RGB in
    [0, 1]) and of the audio (samples in [−1, 1]), N each."""

    classes: TopK
    video_mse: np.ndarray
    audio_mse: np.ndarray


@dataclass
class _Encoded:
    inputs: torch.Tensor
    modality_sizes: Mapping[str, int]
    inputs_without_pos: Any
    latents: torch.Tensor


class ClipClassifier:
    """Kinetics-700 top-k and reconstruction errors of clips. ``network``: ``PerceiverForMultimodalAutoencoding``.

    ``output_chunks``: how many pieces the video and audio outputs are decoded in; one piece holds
    1/output_chunks of the 16×224×224 image points and of the audio patches (colab: 128). The
    encoder runs once per clip; each piece then queries its latents.
    """

    def __init__(self, *, network: torch.nn.Module, k: int = 5, output_chunks: int = 128):
        if k < 1 or output_chunks < 1:
            raise ValueError(f"expected k ≥ 1 and output_chunks ≥ 1, got k={k}, output_chunks={output_chunks}")
        self.network, self.k, self.output_chunks = network.eval(), k, output_chunks
        config = network.config
        self.id2label = _labels(config)
        self.num_labels = config.num_labels
        self.frames = int(config.num_frames)
        self.image_size = tuple(int(s) for s in config.output_shape[2:4])
        self.samples_per_patch = int(config.samples_per_patch)
        self.audio_samples = self.frames * int(config.audio_samples_per_frame)
        self.fps = AUDIO_RATE / int(config.audio_samples_per_frame)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def chunk_points(self, device: torch.device | str | None = None) -> list[dict[str, torch.Tensor | None]]:
        """``subsampled_output_points`` of each decoding piece: image points over (T, H, W), audio patches."""
        image = torch.arange(self.frames * self.image_size[0] * self.image_size[1], device=device)
        audio = torch.arange(self.audio_samples // self.samples_per_patch, device=device)
        pieces = min(self.output_chunks, len(audio), len(image))
        return [
            {"image": i, "audio": a, "label": None}
            for i, a in zip(torch.tensor_split(image, pieces), torch.tensor_split(audio, pieces))
        ]

    def inputs(self, frames: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """B×T×H×W×3 uint8 frames, B×S float audio → the network's input dict, label zeroed (it is masked)."""
        images = frames.permute(0, 1, 4, 2, 3).float() / 255.0
        label = torch.zeros(frames.shape[0], self.num_labels, device=frames.device)
        return {"image": images, "audio": audio.float()[..., None], "label": label}

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> _Encoded:
        """The first half of ``PerceiverModel.forward``: preprocess (label masked with probability 1), encode."""
        perceiver = self.network.perceiver
        x, sizes, without_pos = perceiver.input_preprocessor(inputs)
        latents = perceiver.encoder(perceiver.embeddings(batch_size=x.shape[0]), inputs=x).last_hidden_state
        return _Encoded(x, sizes, without_pos, latents)

    def decode(self, encoded: _Encoded, points: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """The second half for one piece: its decoder queries attend to the latents → {image, audio, label}."""
        perceiver = self.network.perceiver
        query = perceiver.decoder.decoder_query(
            encoded.inputs, encoded.modality_sizes, encoded.inputs_without_pos, subsampled_points=points
        )
        logits = perceiver.decoder(query, z=encoded.latents).logits
        sizes = {"audio": len(points["audio"]), "image": len(points["image"]), "label": 1}
        return perceiver.output_postprocessor(logits, modality_sizes=sizes)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, audio: np.ndarray) -> ClipLabels:
        """N×T×H×W×3 uint8 clips (T, H, W as the model's) and N×S float32 audio → :class:`ClipLabels`."""
        expected = (self.frames, *self.image_size, 3)
        if frames.ndim != 5 or frames.shape[1:] != expected or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 clips N×{'×'.join(map(str, expected))}, got {frames.shape} {frames.dtype}"
            )
        if audio.shape != (frames.shape[0], self.audio_samples):
            raise ValueError(f"expected audio N×{self.audio_samples}, got {audio.shape}")
        device = self.device
        frames_t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
        audio_t = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(device)
        encoded = self.encode(self.inputs(frames_t, audio_t))
        pixels = frames_t.float().div(255.0).flatten(1, 3)  # N×(T·H·W)×3
        patches = audio_t.unflatten(1, (-1, self.samples_per_patch))  # N×P×samples_per_patch
        video_se = torch.zeros(frames.shape[0], device=device)
        audio_se = torch.zeros(frames.shape[0], device=device)
        label_logits = None
        for points in self.chunk_points(device):
            out = self.decode(encoded, points)
            video_se += (out["image"].float() - pixels[:, points["image"]]).square().sum(dim=(1, 2))
            audio_se += (out["audio"].float() - patches[:, points["audio"]].flatten(1)).square().sum(dim=1)
            label_logits = out["label"] if label_logits is None else label_logits
        return ClipLabels(
            top_k(label_logits, self.k, self.id2label),
            (video_se / pixels[0].numel()).cpu().numpy().astype(np.float32),
            (audio_se / self.audio_samples).cpu().numpy().astype(np.float32),
        )


def load_clip_classifier(
    uri: str,
    *,
    sha256: str | None = None,
    k: int = 5,
    output_chunks: int = 128,
    device: str | torch.device = "cpu",
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[ClipClassifier, str]:
    """A ``PerceiverForMultimodalAutoencoding`` directory → (classifier, sha256 of its weights)."""
    from transformers import PerceiverForMultimodalAutoencoding

    loaded = load_pretrained(
        PerceiverForMultimodalAutoencoding, uri, expected_sha256=sha256, storage_options=storage_options
    )
    return ClipClassifier(network=loaded.model.to(device), k=k, output_chunks=output_chunks), loaded.sha256


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LabelerSpec:
    """A labeler's record: where its released weights are and what its authors report for them.

    ``kind``: "frame" (per frame pair, columns added to the pair rows) or "clip" (a clip table).
    ``load(uri, *, sha256, device, storage_options, **options)`` → (labeler, sha256 of the weights).
    """

    name: str
    kind: str
    description: str
    hub_id: str
    revision: str
    load: Callable[..., tuple[Any, str]]
    published: Mapping[str, float] = field(default_factory=dict)
    source: str = ""


LABELERS: Mapping[str, LabelerSpec] = {
    spec.name: spec
    for spec in (
        LabelerSpec(
            name="perceiver_image_classifier",
            kind="frame",
            description="Perceiver IO ImageNet-1k classifier with conv preprocessing (transformers "
            "PerceiverForImageClassificationConvProcessing)",
            hub_id="deepmind/vision-perceiver-conv",
            # main: config.json, preprocessor_config.json, pytorch_model.bin ("Update dataset tags");
            # refs/pr/1 (9e887ddb738d7de3bb0dc357003fec3ab44af668) adds model.safetensors.
            revision="795b5eea5867940bd8fa46105029874afce6f037",
            load=load_image_classifier,
            published={"imagenet_top1": 82.1},
            source="transformers docs of PerceiverForImageClassificationConvProcessing (Perceiver IO paper, "
            "ImageNet without JFT pre-training)",
        ),
        LabelerSpec(
            name="perceiver_multimodal",
            kind="clip",
            description="Perceiver IO multimodal autoencoder (video + audio + label) used as a Kinetics-700 "
            "classifier with the label masked (transformers PerceiverForMultimodalAutoencoding)",
            hub_id="deepmind/multimodal-perceiver",
            # refs/pr/1 "Adding `safetensors` variant" (config.json as on main, plus model.safetensors).
            revision="4a12bbf63e4b0cbd170e9dc23e67c2283190ca18",
            load=load_clip_classifier,
            source="no classification accuracy published for this checkpoint",
        ),
    )
}


def get_labeler(name: str, kind: str) -> LabelerSpec:
    """The record of labeler ``name`` of ``kind`` ("frame" or "clip"); ValueError lists the known ones."""
    known = sorted(n for n, s in LABELERS.items() if s.kind == kind)
    if name not in known:
        raise ValueError(f"{kind} labeler: expected one of {known}, got {name!r}")
    return LABELERS[name]
