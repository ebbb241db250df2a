"""Videos with known motion, for the demo, the tests and the benchmarks.

A smooth random texture translates by a constant (u, v) pixels per frame, so the true
flow of every pair is (u·stride, v·stride) wherever the content stays in view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

# (container format, codec, pixel format, encoder options) per file suffix.
CODECS = {
    ".mp4": ("mp4", "libx264", "yuv420p", {"crf": "12", "preset": "veryfast"}),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    ".avi": ("avi", "mjpeg", "yuvj420p", {"q:v": "2"}),
    ".mkv": ("matroska", "libx264", "yuv420p", {"crf": "12", "preset": "veryfast"}),
    ".ts": ("mpegts", "libx264", "yuv420p", {"crf": "12", "preset": "veryfast"}),
}


@dataclass(frozen=True)
class Motion:
    """Constant translation of the content, pixels per frame (u right, v down)."""

    u: float = 2.0
    v: float = 1.0


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, well-textured RGB uint8 image (blurred noise at two scales)."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(
        rng.random((height // 16 + 2, width // 16 + 2, 3), np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    fine = cv2.GaussianBlur(rng.random((height, width, 3), np.float32), (0, 0), 1.5)
    image = 0.6 * coarse + 0.4 * (fine - fine.mean()) * 4 + 0.2
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def translating_frames(height: int, width: int, frames: int, motion: Motion, seed: int = 0) -> list[np.ndarray]:
    """Frames whose content moves by ``motion`` per frame (sub-pixel shifts by bilinear warping)."""
    margin = int(np.ceil(max(abs(motion.u), abs(motion.v)) * frames)) + 4
    canvas = texture(height + 2 * margin, width + 2 * margin, seed)
    out = []
    for k in range(frames):
        # Content at canvas (x, y) appears at frame (x − margin + k·u, y − margin + k·v).
        shift = np.float32([[1, 0, -margin + k * motion.u], [0, 1, -margin + k * motion.v]])
        out.append(cv2.warpAffine(canvas, shift, (width, height), flags=cv2.INTER_LINEAR))
    return out


def write_video(
    path: str | Path,
    frames: list[np.ndarray],
    fps: int = 30,
    gop: int | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB uint8 frames with the codec chosen by the file suffix (see ``CODECS``);
    ``gop``: a keyframe every ``gop`` frames (H.264/VP9), to exercise keyframe-aligned splits;
    ``container_options``: muxer options, e.g. {"movflags": "faststart"} for MP4."""
    path = Path(path)
    fmt, codec, pix_fmt, options = CODECS[path.suffix.lower()]
    if gop is not None:
        options = {**options, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tone(seconds: float, rate: int = 48000, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A mono sine, float32 samples in [−1, 1]."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_video_with_audio(
    path: str | Path, frames: list[np.ndarray], audio: np.ndarray, fps: int = 25, rate: int = 48000
) -> Path:
    """Like :func:`write_video` (H.264 in MP4/MKV/TS), plus ``audio`` (mono float32 in [−1, 1] at ``rate``)
    as an AAC track starting at time 0."""
    path = Path(path)
    fmt, codec, pix_fmt, options = CODECS[path.suffix.lower()]
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=fmt) as container:
        video = container.add_stream(codec, rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        sound = container.add_stream("aac", rate=rate, layout="mono")
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        step = 1024  # AAC frame size
        for start in range(0, len(audio), step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[None, start : start + step]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path


def write_translating_video(
    path: str | Path,
    height: int,
    width: int,
    frames: int,
    motion: Motion = Motion(),
    fps: int = 30,
    seed: int = 0,
    gop: int | None = None,
) -> Path:
    return write_video(path, translating_frames(height, width, frames, motion, seed), fps, gop)


def write_image_sequence(
    folder: str | Path, frames: list[np.ndarray], pattern: str = "frame_{:04d}.png", first: int = 1
) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(frames, start=first):
        path = folder / pattern.format(i)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
