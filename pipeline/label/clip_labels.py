"""Clip labels (``--clip-labels``): consecutive clips of a video with their audio → the clip table.

Stages, each a plain function or class (the Ray wiring is in :mod:`jobs.label_clips`):
  * :func:`iter_clip_chunks` (read tasks): decode the video once, resample it to the model's frame
    rate (25 frames/s for Perceiver IO's multimodal model), cut consecutive non-overlapping clips
    of its frame count (16), each frame centre-cropped and resized for the model; read the audio
    track beside it (:class:`AudioTrack`), resampled to the model's rate, aligned by timestamps;
    silence where a video has no audio track or the track does not cover the clip.
  * :class:`ClipLabeler` (actors): the model once per actor; classes and reconstruction errors.
  * :func:`write_clip_chunk` (write tasks): one Parquet file per chunk of clips,
    ``<out>/_clips/corpus=…/video=…/<first clip>-<last clip>.parquet``. The leading ``_`` keeps
    the clip table out of the pair table: ``pq.read_table(out)`` skips folders starting with ``_``
    (as it does ``_npz/``), and ``pq.read_table(out + "/_clips")`` reads the clips as one dataset.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from models.perceiver_labels import AUDIO_RATE, clip_frame, get_labeler
from pipeline.chunks import chunk_id, iter_chunks
from pipeline.label.labeler import assigned_device
from pipeline.read.decode import DecodeReport, iter_video_frames, resample
from pipeline.read.sources import Source
from pipeline.schema import clip_table
from pipeline.storage import filesystem, join
from pipeline.write.sinks import SinkOptions, write_files

CLIPS_DIR = "_clips"
CLIP_SUMMARY_KEYS = ("video_id", "source", "corpus", "chunk", "clips", "bytes_written")


@dataclass(frozen=True)
class ClipLabelOptions:
    """labeler: record name (``perceiver_multimodal``); checkpoint: its model directory (URI);
    top_k: classes kept per clip; output_chunks: pieces the outputs are decoded in (see
    :class:`models.perceiver_labels.ClipClassifier`); max_clips: per video (None: all);
    clips_per_chunk: clips per output file (and per Ray block)."""

    labeler: str
    checkpoint: str
    checkpoint_sha256: str | None = None
    top_k: int = 5
    output_chunks: int = 128
    max_clips: int | None = None
    clips_per_chunk: int = 8

    def __post_init__(self) -> None:
        get_labeler(self.labeler, "clip")
        if not self.checkpoint:
            raise ValueError(f"clip labels ({self.labeler}): expected a checkpoint directory, got none")
        for name in ("top_k", "output_chunks", "clips_per_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"clip labels {name}: expected ≥ 1, got {getattr(self, name)}")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"clip labels max_clips: expected ≥ 1, got {self.max_clips}")

    def load(self, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None):
        """(the model's :class:`ClipClassifier`, sha256 of its weights)."""
        spec = get_labeler(self.labeler, "clip")
        return spec.load(
            self.checkpoint,
            sha256=self.checkpoint_sha256,
            k=self.top_k,
            output_chunks=self.output_chunks,
            device=device,
            storage_options=storage_options,
        )


@dataclass(frozen=True)
class ClipShape:
    """What the model takes per clip: ``frames`` frames of ``size`` (H, W) at ``fps``, and
    ``audio_samples`` mono samples at ``audio_rate`` Hz."""

    frames: int
    size: tuple[int, int]
    fps: float
    audio_samples: int
    audio_rate: int

    @classmethod
    def of(cls, classifier: Any) -> ClipShape:
        return cls(
            classifier.frames, tuple(classifier.image_size), classifier.fps, classifier.audio_samples, AUDIO_RATE
        )


class AudioTrack:
    """The best audio stream of a container, decoded and resampled once, read forward in time.

    :meth:`read` returns ``n`` samples from a time on; times must not go backwards. Samples
    before the stream's first timestamp or after its end are silence; a container without audio
    is silence throughout (``has_audio`` False). The first channel is used, as DeepMind's colab
    (``audio[..., 0:1]``).
    """

    def __init__(self, fileobj: IO[bytes], rate: int):
        self.rate = rate
        self._container = av.open(fileobj, mode="r")
        stream = self._container.streams.best("audio")
        self.has_audio = stream is not None
        self._frames = self._decode(stream) if stream is not None else iter(())
        self._buffer = np.zeros(0, np.float32)
        self._start: float | None = None  # time of _buffer[0], seconds
        self._ended = not self.has_audio

    def _decode(self, stream) -> Iterator[tuple[float | None, np.ndarray]]:
        resampler = av.AudioResampler(format="fltp", rate=self.rate)
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue  # a corrupt packet: its samples are missing, the rest stays aligned by timestamps
            for frame in frames:
                time = frame.time
                for out in resampler.resample(frame):
                    yield time, out.to_ndarray()[0].astype(np.float32)
                    time = None
        for out in resampler.resample(None):
            yield None, out.to_ndarray()[0].astype(np.float32)

    def _pull(self) -> bool:
        try:
            time, samples = next(self._frames)
        except StopIteration:
            self._ended = True
            return False
        if self._start is None:
            self._start = 0.0 if time is None else time
        self._buffer = np.concatenate([self._buffer, samples])
        return True

    def read(self, start: float, n: int) -> np.ndarray:
        """``n`` float32 samples in [−1, 1] from time ``start`` (seconds) on."""
        while not self._ended and (self._start is None or self._end_time() < start + n / self.rate):
            self._pull()
        out = np.zeros(n, np.float32)
        if self._start is None:
            return out
        first = int(round((start - self._start) * self.rate))
        lo, hi = max(first, 0), min(first + n, len(self._buffer))
        if hi > lo:
            out[lo - first : hi - first] = self._buffer[lo:hi]
        if first > 0:  # later reads start later: drop what is behind
            self._buffer = self._buffer[first:]
            self._start += first / self.rate
        return out

    def _end_time(self) -> float:
        return self._start + len(self._buffer) / self.rate

    def close(self) -> None:
        self._container.close()


@dataclass(frozen=True)
class Clip:
    """One clip: ``index`` among the video's clips, its source frame indices and times, frames
    T×H×W×3 uint8 (preprocessed for the model) and audio S float32."""

    index: int
    frame_indices: tuple[int, ...]
    times: tuple[float | None, ...]
    frames: np.ndarray
    audio: np.ndarray


def iter_clips(
    video: IO[bytes], audio: IO[bytes], shape: ClipShape, max_clips: int | None = None
) -> Iterator[tuple[Clip, bool]]:
    """Consecutive clips of a video → (clip, has_audio). ``video`` and ``audio`` are two file
    objects of the same file (decoded side by side)."""
    track = AudioTrack(audio, shape.audio_rate)
    try:
        frames = resample(
            iter_video_frames(video, DecodeReport(), fit=lambda image: clip_frame(image, shape.size)), shape.fps
        )
        window = []
        index = 0
        for frame in frames:
            window.append(frame)
            if len(window) < shape.frames:
                continue
            start = window[0].time or 0.0
            sound = track.read(start, shape.audio_samples)
            yield (
                Clip(
                    index,
                    tuple(f.index for f in window),
                    tuple(f.time for f in window),
                    np.stack([f.image for f in window]),
                    sound,
                ),
                track.has_audio,
            )
            window, index = [], index + 1
            if max_clips is not None and index >= max_clips:
                return
    finally:
        track.close()


def clip_batch(clips: list[Clip], has_audio: bool, source: Source) -> dict[str, np.ndarray]:
    n = len(clips)
    return {
        "video_id": np.full(n, source.video_id, object),
        "source": np.full(n, source.uri, object),
        "corpus": np.full(n, source.corpus, object),
        "chunk": np.full(n, chunk_id(clips[0].index, clips[-1].index), object),
        "clip": np.array([c.index for c in clips], np.int32),
        "frame_first": np.array([c.frame_indices[0] for c in clips], np.int32),
        "frame_last": np.array([c.frame_indices[-1] for c in clips], np.int32),
        "t0": np.array([np.nan if c.times[0] is None else c.times[0] for c in clips], np.float64),
        "t1": np.array([np.nan if c.times[-1] is None else c.times[-1] for c in clips], np.float64),
        "has_audio": np.full(n, has_audio, bool),
        "frames": np.stack([c.frames for c in clips]),
        "audio": np.stack([c.audio for c in clips]),
    }


def iter_clip_chunks(
    source: Source,
    shape: ClipShape,
    options: ClipLabelOptions,
    done: frozenset[str] = frozenset(),
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The clips of one video as batches of ``options.clips_per_chunk``, chunks in ``done`` left out."""
    fs, path = filesystem(source.uri, storage_options)
    with fs.open(path, "rb") as video, fs.open(path, "rb") as audio:
        chunk: list[Clip] = []
        for clip, has_audio in iter_clips(video, audio, shape, options.max_clips):
            chunk.append(clip)
            if len(chunk) == options.clips_per_chunk:
                if chunk_id(chunk[0].index, chunk[-1].index) not in done:
                    yield clip_batch(chunk, has_audio, source)
                chunk = []
        if chunk and chunk_id(chunk[0].index, chunk[-1].index) not in done:
            yield clip_batch(chunk, has_audio, source)


INPUT_COLUMNS = ("frames", "audio")


class ClipLabeler:
    """Ray Data UDF: chunks of clips → the same rows without frames and audio, plus the labels."""

    def __init__(self, options: ClipLabelOptions, storage_options: Mapping[str, Any] | None = None):
        self.options = options
        self.classifier, self.checkpoint_sha256 = options.load(assigned_device(), storage_options)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for rows in iter_chunks(batch):
            yield label_clips(self.classifier, rows, self.options.labeler, self.checkpoint_sha256)


def label_clips(classifier: Any, rows: Mapping[str, np.ndarray], model: str, checkpoint: str) -> dict[str, np.ndarray]:
    """Rows of one chunk with ``frames`` N×T×H×W×3 and ``audio`` N×S → rows with the clip columns."""
    labels = classifier(np.asarray(rows["frames"]), np.asarray(rows["audio"]))
    out = {name: column for name, column in rows.items() if name not in INPUT_COLUMNS}
    n = len(out["clip"])
    out.update(
        {
            "classes": labels.classes.ids,
            "class_names": labels.classes.names,
            "class_probs": labels.classes.probs,
            "video_mse": labels.video_mse,
            "audio_mse": labels.audio_mse,
            "model": np.full(n, model, object),
            "checkpoint": np.full(n, checkpoint, object),
        }
    )
    return out


def write_clip_chunk(
    rows: Mapping[str, np.ndarray], sink: SinkOptions, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One chunk of labeled clips → ``<partitions>/<chunk>.parquet`` below ``sink.out`` (the clip
    sink, :func:`clip_sink_of`); a summary row."""

    def parquet() -> bytes:
        buffer = io.BytesIO()
        pq.write_table(clip_table(rows, sink.excluded_columns), buffer, compression=sink.compression)
        return buffer.getvalue()

    written = write_files(rows, sink, {"parquet": parquet}, storage_options)
    return {
        "video_id": str(rows["video_id"][0]),
        "source": str(rows["source"][0]),
        "corpus": str(rows["corpus"][0]),
        "chunk": str(rows["chunk"][0]),
        "clips": len(rows["clip"]),
        "bytes_written": written,
    }


def clip_sink_of(sink: SinkOptions) -> SinkOptions:
    """The clip table's sink: laid out like the pair data, one folder down (``<out>/_clips``), Parquet."""
    return replace(sink, out=join(sink.out, CLIPS_DIR), formats=("parquet",))
