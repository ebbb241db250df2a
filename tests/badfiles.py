"""Generators for the bad inputs a corpus-scale run meets (no network; everything made here).

Each function writes one file or folder under ``folder`` and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from jobs.synthetic import Motion, texture, translating_frames, write_image_sequence, write_video


def zero_byte(folder: Path) -> Path:
    path = folder / "empty.mp4"
    path.write_bytes(b"")
    return path


def truncated_mp4(folder: Path) -> Path:
    """moov first (faststart), then the media data cut short: an interrupted upload."""
    whole = write_video(
        folder / "whole_faststart.mp4",
        translating_frames(96, 128, 40, Motion(1, 0)),
        container_options={"movflags": "faststart"},
    )
    path = folder / "truncated.mp4"
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    whole.unlink()
    return path


def moov_missing_mp4(folder: Path) -> Path:
    """moov at the end (no faststart) and the file cut before it: nothing describes the data."""
    whole = write_video(folder / "whole.mp4", translating_frames(64, 80, 20, Motion(1, 0)))
    data = whole.read_bytes()
    path = folder / "moov_missing.mp4"
    path.write_bytes(data[: data.rfind(b"moov") - 4])
    whole.unlink()
    return path


def text_named_mp4(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("this is a text file with a video extension\n")
    return path


def image_named_mp4(folder: Path) -> Path:
    path = folder / "still.mp4"
    path.write_bytes(cv2.imencode(".png", texture(48, 64))[1].tobytes())
    return path


def audio_only(folder: Path) -> Path:
    """A valid container with no video stream at all."""
    path = folder / "audio_only.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corrupt_frame_mjpeg(folder: Path, corrupt: int = 4, frames: int = 10) -> Path:
    """MJPEG in AVI with frame ``corrupt`` overwritten by noise: every other frame decodes."""
    path = write_video(folder / "corrupt_mid.avi", translating_frames(48, 64, frames, Motion(1, 0)))
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG SOI markers
    begin, end = starts[corrupt], starts[corrupt + 1]
    data[begin : end - 16] = np.random.default_rng(0).integers(0, 256, end - 16 - begin, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def resolution_change_ts(folder: Path) -> Path:
    """Two MPEG-TS streams of different frame sizes, concatenated (as a live encoder switching)."""
    a = write_video(folder / "part_a.ts", translating_frames(48, 64, 5, Motion(1, 0)))
    b = write_video(folder / "part_b.ts", translating_frames(64, 96, 6, Motion(1, 0)))
    path = folder / "resolution_change.ts"
    path.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    return path


def mixed_sequence(folder: Path) -> Path:
    """An image sequence with a gray, an RGBA and a 16-bit frame, then a frame of another size."""
    seq = folder / "mixed_sequence"
    frames = translating_frames(40, 56, 5, Motion(1, 0))
    write_image_sequence(seq, frames[:2])
    gray = cv2.cvtColor(frames[2], cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(seq / "frame_0003.png"), gray)
    cv2.imwrite(str(seq / "frame_0004.png"), cv2.cvtColor(frames[3], cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(seq / "frame_0005.png"), cv2.cvtColor(frames[4], cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    cv2.imwrite(str(seq / "frame_0006.png"), texture(30, 30))
    return seq
