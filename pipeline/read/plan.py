"""Planning: sources → read units (a whole source, or a keyframe-aligned segment of a long one).

Short sources are one unit. A video larger than ``split_bytes`` is demuxed once (no decode)
to learn its frame times and keyframes, and cut at keyframes into segments of at least
``segment_frames`` frames, so one long file does not serialize the job and each segment
seeks straight to its keyframe: every frame is still decoded exactly once.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.read.decode import DecodeOptions, on_tick, video_frame_times
from pipeline.read.sources import Source
from pipeline.storage import filesystem

T = TypeVar("T")


@dataclass(frozen=True)
class PlanOptions:
    """segment_frames: target frames per read task of a long source;
    split_bytes: videos at most this large are never split (no planning I/O at all);
    window_units / first_window_units: a run plans and labels its inputs in windows of at most this many
    units, the first one this small and each next one four times the last (jobs.label.plan_windows).
    Only segment_frames and split_bytes change what a run writes."""

    segment_frames: int = 1800
    split_bytes: int = 256 * 2**20
    probe_threads: int = 16
    window_units: int = 262144
    first_window_units: int = 1024

    def __post_init__(self) -> None:
        if self.segment_frames < 2:
            raise ValueError(f"segment_frames: expected ≥ 2, got {self.segment_frames}")
        if self.window_units < 1 or self.first_window_units < 1:
            raise ValueError(
                f"window_units, first_window_units: expected ≥ 1, got {self.window_units}, {self.first_window_units}"
            )


@dataclass(frozen=True, slots=True)
class ReadUnit:
    """Pairs of ``source`` whose frame0 index lies in [start, stop).

    For a video segment: ``seek_time`` is its keyframe, ``times`` maps frame index
    ``start + i`` to its time (so indices are exact after a seek), ``origin`` is the
    video's first frame time and ``previous_time`` the time of frame ``start - 1``
    (both for fps ticks), ``first_ordinal`` the number of sampled frames before ``start``.
    ``done_chunks``: chunks of this video already committed by an earlier run (not redone).
    ``first``: the source's first unit (it reports a source that yields no frame or pair).
    A source with a span (``start``/``end``) is planned within it: its first unit starts at the
    span's first frame and ``origin`` is that frame's time.
    """

    source: Source
    start: int = 0
    stop: int | None = None
    seek_time: float | None = None
    times: tuple[float, ...] | None = None
    origin: float | None = None
    previous_time: float | None = None
    first_ordinal: int = 0
    done_chunks: frozenset[str] = frozenset()
    first: bool = True

    @property
    def key(self) -> str:
        """Deterministic name of this unit: video id and first frame index."""
        return f"{self.source.video_id}-{self.start:08d}"


def plan_units(
    sources: Iterable[Source],
    decode: DecodeOptions,
    plan: PlanOptions = PlanOptions(),
    storage_options: Mapping[str, Any] | None = None,
    probes: Executor | None = None,
) -> list[ReadUnit]:
    """One or more read units per source, in source order (:func:`iter_units` collected)."""
    units = iter_units(sources, decode, plan, storage_options, probes)
    return [unit for unit in units if isinstance(unit, ReadUnit)]


def iter_units(
    items: Iterable[T],
    decode: DecodeOptions,
    plan: PlanOptions = PlanOptions(),
    storage_options: Mapping[str, Any] | None = None,
    probes: Executor | None = None,
) -> Iterator[ReadUnit | T]:
    """The read units of each source of ``items`` in order, as the items come; anything that is not a
    :class:`Source` (a listing error) passes through in its place. Long videos are probed on ``probes``
    (default: ``plan.probe_threads`` threads here; jobs.cluster.RemoteExecutor runs them as Ray tasks, off
    the driver), at most ``2 * plan.probe_threads`` sources ahead of the one being yielded."""

    def needs_probe(item: T) -> bool:
        return isinstance(item, Source) and item.kind == "video" and (item.size or 0) > plan.split_bytes

    def units_of(item: T) -> list[ReadUnit | T]:
        if not isinstance(item, Source):
            return [item]
        if item.kind == "sequence":
            return _within_max_pairs(_sequence_units(item, plan.segment_frames), decode)
        return [ReadUnit(item)]

    # Only long videos are probed: a future per short clip or manifest row would cost more than planning it.
    threads = max(1, plan.probe_threads)
    with nullcontext(probes) if probes else ThreadPoolExecutor(threads) as pool:
        ahead: deque[tuple[Future, Source] | list[ReadUnit | T]] = deque()
        for item in items:
            if needs_probe(item):
                ahead.append((pool.submit(probe_units, item, decode, plan.segment_frames, storage_options), item))
            else:
                ahead.append(units_of(item))
            while len(ahead) > 2 * threads or (ahead and _ready(ahead[0])):
                yield from _result(ahead.popleft())
        while ahead:
            yield from _result(ahead.popleft())


def probe_units(
    source: Source, decode: DecodeOptions, segment_frames: int, storage_options: Mapping[str, Any] | None = None
) -> list[ReadUnit]:
    """The units of a long video: its frame times and keyframes read (demuxed, not decoded), then cut at
    keyframes into segments of at least ``segment_frames`` frames; one unit when it cannot be read here
    (its read task records the error)."""
    return _within_max_pairs(_video_units(source, decode, segment_frames, storage_options), decode)


def _within_max_pairs(units: list[ReadUnit], decode: DecodeOptions) -> list[ReadUnit]:
    # Segments past --max-pairs-per-video are never read.
    return [u for u in units if decode.max_pairs is None or u.first_ordinal < decode.max_pairs or u.first]


def _ready(planned: tuple[Future, Source] | list) -> bool:
    return isinstance(planned, list) or planned[0].done()


def _result(planned: tuple[Future, Source] | list) -> list:
    if isinstance(planned, list):
        return planned
    future, source = planned
    try:
        return future.result()
    except Exception:
        # The probe itself failed (a Ray worker lost, say; a bad file is caught inside it): the video is one
        # unit, read whole, and its read task records any error against it.
        return [ReadUnit(source)]


def _sequence_units(source: Source, segment_frames: int) -> list[ReadUnit]:
    n = len(source.frames)
    starts = list(range(0, max(n - 1, 1), segment_frames))
    return [
        ReadUnit(source, start, starts[i + 1] if i + 1 < len(starts) else None, first_ordinal=start, first=i == 0)
        for i, start in enumerate(starts)
    ]


def _video_units(
    source: Source, decode: DecodeOptions, segment_frames: int, storage_options: Mapping[str, Any] | None
) -> list[ReadUnit]:
    fs, path = filesystem(source.uri, storage_options)
    try:
        with fs.open(path, "rb") as f:
            times, keyframes = video_frame_times(f)
    except Exception:
        # Unreadable here: one unit, so the read task records the error against the source.
        return [ReadUnit(source)]
    lo, hi = span_indices(times, source.start, source.end)
    starts = [lo]
    for k in keyframes:
        if lo < k < hi and k - starts[-1] >= segment_frames:
            starts.append(k)
    if len(starts) == 1 or lo >= hi:
        return [ReadUnit(source)]
    kept = _kept_frames(times[lo:hi], decode.fps)  # video indices − lo of the frames resampling keeps
    units = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else None
        # The pairs that start before ``stop`` end past it, ``stride`` kept frames on from the last kept frame
        # before it (many frames at a low --fps): the segment gets the times up to that frame's.
        before_stop = bisect.bisect_left(kept, stop - lo) if stop is not None else len(kept)
        reach = before_stop - 1 + decode.stride
        end = hi if stop is None or reach >= len(kept) else max(stop, lo + kept[reach] + 1)
        units.append(
            ReadUnit(
                source,
                start,
                stop,
                seek_time=times[start] if start else None,
                times=tuple(times[start:end]),
                origin=times[lo],
                previous_time=times[start - 1] if start > lo else None,
                first_ordinal=bisect.bisect_left(kept, start - lo),
                first=i == 0,
            )
        )
    return units


def span_indices(times: Sequence[float], start: float | None, end: float | None) -> tuple[int, int]:
    """[lo, hi): the indices of the sorted frame ``times`` with start ≤ time < end (None: no bound),
    with the decoder's tolerance of 1e-6 s."""
    lo = 0 if start is None else bisect.bisect_left(times, start - 1e-6)
    hi = len(times) if end is None else bisect.bisect_left(times, end - 1e-6)
    return lo, hi


def _kept_frames(times: Sequence[float], fps: float | None) -> list[int]:
    """The positions in ``times`` of the frames that fps resampling keeps, in order."""
    kept, previous = [], None
    for k, t in enumerate(times):
        if fps is None or on_tick(t, previous, times[0], fps):
            kept.append(k)
        previous = t
    return kept
