"""Decoding: video files (PyAV) and image sequences (OpenCV) → frames → frame pairs.

Every frame is decoded once; pairs (k, k + stride) are formed from a sliding window.
Frames are RGB uint8 H×W×3 in display orientation (rotation metadata applied).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter


@dataclass(frozen=True)
class DecodeOptions:
    """How frames are sampled and sized.

    stride: pair frame k with frame k + stride (in sampled frames).
    fps: resample to this rate (first frame at or after each tick); None keeps every frame.
    max_side: downscale so that max(H, W) ≤ max_side, keeping the aspect ratio; flow is then
        in the pixels of the resized frame.
    max_pairs: at most this many pairs per video (the first ones).
    max_pixels: frames with more pixels than this (after max_side) are downscaled to fit
        (``oversize="downscale"``) or make the source fail (``oversize="reject"``).
    deinterlace: frames flagged interlaced go through yadif (one frame out per frame in);
        combing would otherwise show up as vertical motion in the flow.
    """

    stride: int = 1
    fps: float | None = None
    max_side: int | None = None
    max_pairs: int | None = None
    max_pixels: int | None = None
    oversize: str = "downscale"
    deinterlace: bool = True

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride: expected an integer ≥ 1, got {self.stride}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps: expected a positive rate, got {self.fps}")
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"max_side: expected ≥ 8 pixels, got {self.max_side}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs: expected ≥ 1, got {self.max_pairs}")
        if self.max_pixels is not None and self.max_pixels < 64:
            raise ValueError(f"max_pixels: expected ≥ 64, got {self.max_pixels}")
        if self.oversize not in ("downscale", "reject"):
            raise ValueError(f"oversize: expected 'downscale' or 'reject', got {self.oversize!r}")

    def fit(self, image: np.ndarray) -> np.ndarray:
        """Apply ``max_side`` then ``max_pixels`` to one H×W×3 frame."""
        image = resize_to_max_side(image, self.max_side)
        h, w = image.shape[:2]
        if self.max_pixels is None or h * w <= self.max_pixels:
            return image
        if self.oversize == "reject":
            raise FrameTooLargeError(
                f"frame of {w}×{h} = {w * h} pixels, expected at most {self.max_pixels} "
                "(--max-pixels; use --oversize downscale to resize instead)"
            )
        side = max(8, int(max(h, w) * (self.max_pixels / (h * w)) ** 0.5))
        while side > 8 and math.prod(_size_at(h, w, side)) > self.max_pixels:
            side -= 1  # the short side is rounded: a step or two at most
        return resize_to_max_side(image, side)


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``index``: 0-based presentation-order index in the source;
    ``time``: presentation time in seconds (None for image sequences);
    ``source_size``: (H, W) before any downscaling."""

    index: int
    time: float | None
    image: np.ndarray
    source_size: tuple[int, int]


@dataclass(frozen=True)
class Pair:
    """Frames (frame0, frame1) and ``ordinal``, the pair's position among the video's pairs."""

    ordinal: int
    frame0: Frame
    frame1: Frame


@dataclass
class DecodeReport:
    """What went wrong while decoding one source, without stopping it."""

    frames: int = 0
    decode_errors: int = 0
    first_error: str = ""
    size_changes: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    announced_frames: int = 0  # frame count from the container header (0: unknown)
    decoded_frames: int = 0
    reached_end: bool = False  # decoding ran to the end of the stream (not stopped early)

    @property
    def truncated(self) -> bool:
        """The header announced more frames than could be decoded or accounted for as errors.

        One frame of slack: containers often count a frame that never displays (dolbyVision-hdr.MOV
        in the shared corpus announces 5 and decodes 4)."""
        return (
            self.reached_end
            and self.announced_frames > 0
            and self.decoded_frames + self.decode_errors < self.announced_frames - 1
        )

    def add_error(self, exc: Exception) -> None:
        self.decode_errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"


class NoFramesError(ValueError):
    """A source yielded no decodable frame (truncated upload, corrupt bitstream, empty file)."""


class NotAVideoError(ValueError):
    """The file is not a video (text, a still image, …) whatever its name says."""


class FrameTooLargeError(ValueError):
    """A frame exceeds ``max_pixels`` and the options say to reject it."""


def resize_to_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale H×W×3 so that max(H, W) ≤ max_side (area interpolation); never upscales."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    height, width = _size_at(h, w, max_side)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _size_at(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(H, W) of an H×W frame scaled so that its longer side is ``max_side``, each side rounded."""
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def display_orientation(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV's ``frame.rotation``)."""
    k = (int(round(rotation / 90))) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


# ---------------------------------------------------------------- video (PyAV)


def open_video(fileobj: IO[bytes], threads: int = 0) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a container from a (possibly remote, seekable) file object; pick the best video stream.

    ``streams.best('video')`` is what ffmpeg itself would choose: it can differ from stream 0
    when a file holds several video streams (e.g. two renditions). ``threads``: decoder
    threads (frame + slice); 0 lets FFmpeg pick one per core.
    """
    container = av.open(fileobj, mode="r")
    if container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe, …: a still image, not a video
        name = container.format.name
        container.close()
        raise NotAVideoError(f"expected a video container, got a single image ({name})")
    stream = container.streams.best("video")
    if stream is None:
        container.close()
        raise NoFramesError("no video stream in the container")
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return container, stream


def video_frame_times(fileobj: IO[bytes]) -> tuple[list[float], list[int]]:
    """Demux (without decoding) the best video stream → (sorted frame times in s, keyframe positions).

    Used to plan long videos as several keyframe-aligned read tasks with exact frame indices.
    """
    container, stream = open_video(fileobj)
    try:
        time_base = stream.time_base  # a closed container's stream reads freed memory: keep it first
        entries = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            entries.append((packet.pts, packet.is_keyframe))
    finally:
        container.close()
    entries.sort()
    return (
        [pts_seconds(pts, time_base) for pts, _ in entries],
        [i for i, (_, key) in enumerate(entries) if key],
    )


def pts_seconds(pts: int, time_base) -> float:
    """Presentation time in seconds, computed exactly (Fraction) then rounded once, so that
    planning (packets) and decoding (frames) get bit-identical times for one timestamp."""
    return float(pts * time_base)


def iter_video_frames(
    fileobj: IO[bytes],
    report: DecodeReport,
    *,
    start_time: float | None = None,
    end_time: float | None = None,
    time_to_index: Callable[[float], int | None] | None = None,
    fit: Callable[[np.ndarray], np.ndarray] = lambda image: image,
    deinterlace: bool = True,
    threads: int = 0,
    to_rgb: VideoReformatter | None = None,
) -> Iterator[Frame]:
    """Decode the best video stream in presentation order, frames with start_time ≤ time < end_time.

    Without ``start_time``: from the beginning, frame index = count of decoded frames plus
    packets that failed to decode (one frame each: exact for intra-only codecs, the best
    estimate otherwise), so a corrupt frame leaves a gap instead of shifting later indices.
    With it: seek to the keyframe at or before ``start_time`` and drop earlier frames. Indices
    then come from ``time_to_index`` (a planned segment: built from the demuxed timestamps) or,
    without it, are counted from the keyframe's own index (:func:`seek_keyframe`), so they are
    the video's indices either way. Decoding stops at the first frame at or after ``end_time``.
    Corrupt packets are counted in ``report`` and skipped; decoding goes on. ``fit`` sizes each
    frame (see :meth:`DecodeOptions.fit`); ``threads`` as in :func:`open_video`. ``to_rgb``: the converter to
    RGB, shared by the videos of a read task (default: one for this video).
    """
    container, stream = open_video(fileobj, threads)
    # One converter at least for the whole video: it keeps its swscale context from frame to frame (and from
    # clip to clip of one size), where VideoFrame.to_ndarray(format=…) sets one up for every frame (most of a
    # small frame's decode cost).
    to_rgb = to_rgb or VideoReformatter()
    try:
        tb = stream.time_base
        first_index, keyframe_pts, packets = _start(container, stream, start_time, time_to_index is None)
        if not (start_time and start_time > 0):
            report.announced_frames = stream.frames
        count = 0
        frames = _decode_tolerant(packets, report)
        for frame, pts, rotation in _deinterlaced(frames, stream) if deinterlace else _as_is(frames):
            if keyframe_pts is not None and pts is not None and pts < keyframe_pts:
                continue  # a leading frame of an open GOP: it belongs before the keyframe
            time = pts_seconds(pts, tb) if pts is not None else None
            index = (
                time_to_index(time)
                if time_to_index and time is not None
                else first_index + count + report.decode_errors
            )
            count += 1
            report.decoded_frames = count
            if end_time is not None and time is not None and time >= end_time - 1e-6:
                return  # not reached_end: the frames after the span are not checked for truncation
            if start_time is not None and time is not None and time < start_time - 1e-6:
                continue
            if index is None:
                continue
            image = display_orientation(to_rgb.reformat(frame, format="rgb24").to_ndarray(), rotation)
            source_size = image.shape[:2]
            yield Frame(index, time, fit(image), source_size)
        report.reached_end = True
    finally:
        container.close()


def _start(
    container, stream, start_time: float | None, count_frames: bool
) -> tuple[int, int | None, Iterator[av.Packet]]:
    """(index of the first frame, pts of the keyframe decoding starts at, the packets from there):
    the whole stream without ``start_time``; else from the keyframe at or before it, its index
    counted (:func:`seek_keyframe`) when ``count_frames``, else left to the caller's time lookup."""
    if start_time is None or start_time <= 0:
        return 0, None, container.demux(stream)
    if count_frames:
        return seek_keyframe(container, stream, start_time)
    return 0, None, _packets_from_keyframe(container, stream, start_time)


def _packets_from_keyframe(container, stream, start_time: float) -> Iterator[av.Packet]:
    """The packets from the last keyframe shown at or before ``start_time``, for a planned segment (its
    frame indices come from the plan: nothing is counted). MPEG-TS seeks by byte position and can land on
    a frame between keyframes; then the seek goes further back until it lands on one, and the packets are
    read on (not decoded) to the last keyframe at or before ``start_time``."""
    back = 0.0
    while start_time - back > 0:
        first, packets = _seek_packets(container, stream, start_time - back)
        if first is None or first.is_keyframe:
            packets = itertools.chain([first] if first is not None else [], packets)
            break
        back = max(1.0, 2 * back)
    else:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
    return _gop_at(packets, start_time, stream.time_base)[2]


def seek_keyframe(container, stream, start_time: float) -> tuple[int, int | None, Iterator[av.Packet]]:
    """The packets from the last keyframe shown at or before ``start_time`` → (that keyframe's frame
    index, its pts, the packets). The frames before a keyframe are the packets before it, plus its
    leading frames in an open GOP (decoded after it, shown before it).

    A complete sample index (MP4, MOV: it lists every frame, by decode time) lets the demuxer seek
    straight to the keyframe and gives its index without reading the frames before it. Other
    containers (Matroska, WebM, MPEG-TS) index keyframes at best and seek by byte guesses: their
    packets before the keyframe are demuxed (read, not decoded) to count them.
    """
    entries = stream.index_entries
    if stream.frames > 0 and len(entries) == stream.frames:
        timestamps = sorted(entry.timestamp for entry in entries)
        first, packets = _seek_packets(container, stream, start_time)
        if first is None:
            return 0, None, iter(())
        if first.is_keyframe:
            decode_time = first.dts if first.dts is not None else first.pts
            leading, packets = _leading_frames([first], packets)
            return bisect.bisect_left(timestamps, decode_time) + leading, first.pts, packets
        container.seek(0, stream=stream, backward=True, any_frame=False)
    return _gop_at(container.demux(stream), start_time, stream.time_base)


def _counted(packet: av.Packet) -> bool:
    """A packet that is a frame (as :func:`video_frame_times` counts them)."""
    return packet.pts is not None and packet.size > 0


def _gop_at(packets: Iterator[av.Packet], start_time: float, tb) -> tuple[int, int | None, Iterator[av.Packet]]:
    """Read packets (without decoding) until the last keyframe shown at or before ``start_time`` is
    known; keep its GOP. Keyframes are shown in decode order, so it is known at the next keyframe,
    or earlier at a frame of its GOP (not a leading frame) shown at or after ``start_time``."""
    gop: list[av.Packet] = []
    pending: list[av.Packet] = []  # a packet read past the GOP
    before = 0  # frames before the GOP
    for packet in packets:
        if _counted(packet) and packet.is_keyframe:
            if gop and gop[0].is_keyframe and pts_seconds(packet.pts, tb) > start_time + 1e-6:
                pending = [packet]
                break
            before += sum(1 for p in gop if _counted(p))
            gop = []
        gop.append(packet)
        if (
            _counted(packet)
            and gop[0].is_keyframe
            and packet.pts >= gop[0].pts
            and pts_seconds(packet.pts, tb) >= start_time - 1e-6
        ):
            break
    rest = itertools.chain(pending, packets)
    if not gop or not gop[0].is_keyframe:
        return before, None, itertools.chain(gop, rest)
    leading, chained = _leading_frames(gop, rest)
    return before + leading, gop[0].pts, chained


def _leading_frames(gop: list[av.Packet], packets: Iterator[av.Packet]) -> tuple[int, Iterator[av.Packet]]:
    """How many packets after the keyframe ``gop[0]`` are shown before it (an open GOP's leading
    frames, right after it in decode order), and all the packets again, from the keyframe on."""
    keyframe = gop[0].pts
    gop = list(gop)
    while not any(_counted(p) and p.pts > keyframe for p in gop[1:]):
        following = next(packets, None)
        if following is None:
            break
        gop.append(following)
    leading = sum(1 for p in gop[1:] if _counted(p) and p.pts < keyframe)
    return leading, itertools.chain(gop, packets)


def _seek_packets(container, stream, start_time: float) -> tuple[av.Packet | None, Iterator[av.Packet]]:
    """Seek to the last keyframe shown at or before ``start_time`` → (its packet, the packets after it).

    The demuxer seeks by decode time, and with B-frames a keyframe decoded before ``start_time`` may
    be shown after it: then the keyframe before that one is taken."""
    tb = stream.time_base
    target, previous = int(round(start_time / tb)), None
    while True:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        first = next(packets, None)
        if first is None or first.pts is None or pts_seconds(first.pts, tb) <= start_time + 1e-6:
            return first, packets
        decode_time = first.dts if first.dts is not None else first.pts
        if decode_time == previous:  # no earlier keyframe
            return first, packets
        target, previous = decode_time - 1, decode_time


def _as_is(frames: Iterable[av.VideoFrame]) -> Iterator[tuple[av.VideoFrame, int | None, int]]:
    for frame in frames:
        yield frame, frame.pts, frame.rotation


def _deinterlaced(frames: Iterable[av.VideoFrame], stream) -> Iterator[tuple[av.VideoFrame, int | None, int]]:
    """(frame, pts, rotation), frames flagged interlaced deinterlaced by yadif.

    yadif in send_frame mode gives one frame per input frame, in order, one frame late; the
    graph is built at the first interlaced frame. Timestamps and rotation are taken from the
    input frames: yadif's output uses its own time base and drops the display matrix.
    """
    graph = None
    waiting: deque[tuple[int | None, int]] = deque()

    def drain():
        while True:
            try:
                out = graph.pull()
            except (BlockingIOError, av.error.EOFError):
                return
            pts, rotation = waiting.popleft()
            yield out, pts, rotation

    for frame in frames:
        if graph is None and not frame.interlaced_frame:
            yield frame, frame.pts, frame.rotation
            continue
        if graph is None:
            graph = av.filter.Graph()
            source = graph.add_buffer(template=stream)
            yadif = graph.add("yadif", "mode=send_frame:parity=auto:deint=interlaced")
            sink = graph.add("buffersink")
            source.link_to(yadif)
            yadif.link_to(sink)
            graph.configure()
        waiting.append((frame.pts, frame.rotation))
        graph.push(frame)
        yield from drain()
    if graph is not None:
        graph.push(None)
        yield from drain()


def _decode_tolerant(packets: Iterable[av.Packet], report: DecodeReport) -> Iterator[av.VideoFrame]:
    """Decode packet by packet so one corrupt packet costs one frame, not the video."""
    for packet in packets:
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            report.add_error(exc)
            continue
        yield from frames


# ---------------------------------------------------------------- image sequences (OpenCV)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes → H×W×3 uint8 RGB. Gray is replicated, alpha dropped, 16-bit scaled to 8."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a decodable image (expected PNG, JPEG, PPM, BMP, TIFF or WebP)")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"expected 8- or 16-bit image data, got {array.dtype}")
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def iter_sequence_frames(
    read: Callable[[str], bytes],
    paths: Iterable[str],
    *,
    first_index: int = 0,
    fit: Callable[[np.ndarray], np.ndarray] = lambda image: image,
) -> Iterator[Frame]:
    """Decode image files in the given (already sorted) order; index = position in the sequence."""
    for index, path in enumerate(paths, start=first_index):
        image = decode_image(read(path))
        yield Frame(index, None, fit(image), image.shape[:2])


# ---------------------------------------------------------------- sampling and pairing


def on_tick(time: float, previous_time: float | None, origin: float, fps: float) -> bool:
    """True when the frame at ``time`` is the first at or after some tick origin + n / fps,
    i.e. a tick falls in (previous_time, time]. The 1e-9 absorbs timestamps like 0.1 that
    land a rounding error below their tick."""
    if previous_time is None:
        return True
    return math.floor((time - origin) * fps + 1e-9) > math.floor((previous_time - origin) * fps + 1e-9)


def resample(
    frames: Iterable[Frame], fps: float | None, origin: float | None = None, previous_time: float | None = None
) -> Iterator[Frame]:
    """Keep the first frame at or after each tick origin + n / fps (all frames when fps is None).

    ``origin`` is the time of the video's first frame (default: the first frame seen);
    ``previous_time`` the time of the frame before the first one seen (for segments).
    """
    if fps is None:
        yield from frames
        return
    for frame in frames:
        if frame.time is None:
            raise ValueError("fps resampling needs timestamps; image sequences have none")
        if origin is None:
            origin = frame.time
        keep = on_tick(frame.time, previous_time, origin, fps)
        previous_time = frame.time
        if keep:
            yield frame


def make_pairs(
    frames: Iterable[Frame],
    stride: int,
    first_ordinal: int = 0,
    report: DecodeReport | None = None,
    contiguous: bool = False,
) -> Iterator[Pair]:
    """Pairs (k, k + stride) over the sampled frames, each frame decoded once.

    A change of frame size ends the window: no pair spans two sizes (recorded in ``report``).
    With ``contiguous`` (every frame kept, no fps resampling), a jump in frame indices (a
    frame that failed to decode) ends it too: no pair spans a missing frame.
    """
    window: deque[Frame] = deque(maxlen=stride + 1)
    ordinal = first_ordinal
    report = DecodeReport() if report is None else report
    for frame in frames:
        report.frames += 1
        if window and window[-1].image.shape != frame.image.shape:
            report.size_changes.append(
                f"frame size changed at frame {frame.index}: {window[-1].image.shape[:2]} → {frame.image.shape[:2]}"
            )
            window.clear()
        elif contiguous and window and frame.index != window[-1].index + 1:
            report.gaps.append(f"frames {window[-1].index + 1}–{frame.index - 1} missing")
            window.clear()
        window.append(frame)
        if len(window) == stride + 1:
            yield Pair(ordinal, window[0], window[-1])
            ordinal += 1
