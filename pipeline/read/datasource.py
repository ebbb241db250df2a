"""Ray Data reader: read units → blocks of frames, whole chunks of pairs per block, each frame once.

``read_unit`` is the plain function (tests call it without Ray); ``FramePairDatasource``
turns the planned units into Ray read tasks: a large unit is a task of its own, small ones
(short clips) share a task, :func:`task_groups`. A unit's pairs are cut into chunks of at
most ``chunk_bytes`` of frames; a chunk is the unit of labeling and of output files, so its
boundaries are deterministic (they depend only on the source and the options). The chunks
of a task's small units travel together in blocks of up to ``chunk_bytes``, :func:`coalesce`:
every Ray task and actor call costs milliseconds, which a six-frame clip cannot amortise. Each
such block is a pack (:func:`pack_name`), which the writer stores as one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from av.video.reformatter import VideoReformatter
from fsspec.core import strip_protocol
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.chunks import CHUNK_PAIRS, PACK_COLUMNS, chunk_id
from pipeline.read.decode import (
    DecodeOptions,
    DecodeReport,
    NoFramesError,
    Pair,
    iter_sequence_frames,
    iter_video_frames,
    make_pairs,
    resample,
)
from pipeline.read.plan import ReadUnit
from pipeline.storage import filesystem, is_transient, with_http_status
from pipeline.write.records import (
    ERRORS_DIR,
    SKIPPED_DIR,
    UnitRecord,
    record_exception,
    write_record,
    write_unit_marker,
)


@dataclass(frozen=True)
class ReadOptions:
    """chunk_bytes: frame bytes (both frames of every pair) per chunk; max_chunk_pairs caps it.
    io_attempts: tries per unit when the storage fails transiently (waits 2, 4, 8, … s between).
    units_per_task: at most this many small units (a source or span of at most ``small_unit_bytes``,
      or of unknown size, such as a manifest row) share one read task.
    decode_threads: FFmpeg decoder threads per read task; 1 (default) matches the one CPU a read
      task asks Ray for: the parallelism comes from read tasks side by side, and FFmpeg's own
      threads (0: one per core) would contend with them and the labelers for the same cores."""

    decode: DecodeOptions = DecodeOptions()
    chunk_bytes: int = 48 * 2**20
    max_chunk_pairs: int = 64
    io_attempts: int = 5
    io_first_delay_s: float = 2.0
    decode_threads: int = 1
    units_per_task: int = 32
    small_unit_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads: expected ≥ 0 (0 = one per core), got {self.decode_threads}")
        if self.units_per_task < 1:
            raise ValueError(f"units_per_task: expected ≥ 1, got {self.units_per_task}")

    def chunk_pairs(self, height: int, width: int) -> int:
        """Pairs per chunk for frames of this size (≥ 1)."""
        return int(max(1, min(self.max_chunk_pairs, self.chunk_bytes // (2 * height * width * 3))))


def iter_unit_pairs(
    unit: ReadUnit,
    options: DecodeOptions,
    report: DecodeReport,
    storage_options: Mapping[str, Any] | None = None,
    decode_threads: int = 1,
    whole_bytes: int = 0,
    to_rgb: VideoReformatter | None = None,
) -> Iterator[Pair]:
    """The pairs of ``unit`` in order: frame0 index in [start, stop), at most ``max_pairs`` per video.
    A whole video of at most ``whole_bytes`` is fetched with one request (see :func:`open_video`);
    ``to_rgb`` as in :func:`pipeline.read.decode.iter_video_frames`."""
    source = unit.source
    if source.kind == "sequence":
        fs, _ = filesystem(source.uri, storage_options)
        last = len(source.frames) if unit.stop is None else min(len(source.frames), unit.stop + options.stride)
        frames = iter_sequence_frames(
            fs.cat_file, _strip(source.frames[unit.start : last]), first_index=unit.start, fit=options.fit
        )
        if options.fps is not None:
            raise ValueError("--fps needs timestamps; image sequences have none")
        yield from _limit(
            make_pairs(frames, options.stride, unit.first_ordinal, report, contiguous=True), unit, options
        )
        return
    if source.size == 0:
        raise NoFramesError("empty file (0 bytes)")
    fs, path = filesystem(source.uri, storage_options)
    time_to_index = None
    if unit.times is not None:
        lookup = {t: unit.start + i for i, t in enumerate(unit.times)}
        time_to_index = lookup.get
    # A span (manifest start/end) narrows the video: a planned segment seeks to its own start,
    # a whole-span unit to the span's start.
    start_time = unit.seek_time if unit.seek_time is not None else source.start
    end_time = source.end
    if unit.times is not None and unit.stop is not None:
        # A planned segment decodes no further than the last frame its pairs need (the last of its times).
        last = unit.times[-1] + 2e-6  # the decoder stops at a frame ≥ end_time − 1e-6
        end_time = last if end_time is None else min(end_time, last)
    with open_video(fs, path, unit, whole_bytes) as f:
        frames = iter_video_frames(
            f,
            report,
            start_time=start_time,
            end_time=end_time,
            time_to_index=time_to_index,
            fit=options.fit,
            deinterlace=options.deinterlace,
            threads=decode_threads,
            to_rgb=to_rgb,
        )
        sampled = resample(frames, options.fps, unit.origin, unit.previous_time)
        pairs = make_pairs(sampled, options.stride, unit.first_ordinal, report, contiguous=options.fps is None)
        yield from _limit(pairs, unit, options)


def open_video(fs: Any, path: str, unit: ReadUnit, whole_bytes: int) -> Any:
    """A binary file object of the video at ``path``. A short clip read whole (no span, and a size of at
    most ``whole_bytes`` or unknown, as for manifest rows) comes in one GET of its first ``whole_bytes``,
    instead of a HEAD for its size and then ranged reads: two round trips per clip become one. A file
    that turns out longer is opened for ranged reads after all (its first bytes are fetched twice).
    http(s) inputs are always opened: fsspec's whole-file fetch reports a 404 without its status, which
    the error records keep."""
    source = unit.source
    whole = unit.first and unit.stop is None and source.start is None and source.end is None
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    http = bool({"http", "https"} & set(protocols))
    if whole and not http and whole_bytes > 0 and (source.size is None or source.size <= whole_bytes):
        data = fs.cat_file(path, start=0, end=whole_bytes)
        if len(data) < whole_bytes or (source.size is not None and len(data) == source.size):
            return io.BytesIO(data)
    return fs.open(path, "rb")


def _strip(uris: tuple[str, ...]) -> list[str]:
    """The paths of ``uris`` as their filesystem's methods take them (fsspec's public helper)."""
    return [strip_protocol(u) for u in uris]


def _limit(pairs: Iterator[Pair], unit: ReadUnit, options: DecodeOptions) -> Iterator[Pair]:
    for pair in pairs:
        if unit.stop is not None and pair.frame0.index >= unit.stop:
            return
        if options.max_pairs is not None and pair.ordinal >= options.max_pairs:
            return
        yield pair


def chunk_batch(pairs: list[Pair], unit: ReadUnit) -> dict[str, np.ndarray]:
    """One chunk as a numpy batch of its frames, each frame once (rows in frame order).

    Per frame: ``frame`` (index), ``time`` (seconds, NaN for image sequences), ``image`` (H×W×3
    uint8). The pairs ride on the rows of their frame0: ``pair_with`` is the row of frame1 (−1 for
    a frame that starts no pair of this chunk) and ``ordinal`` the pair's ordinal (−1 likewise).
    At stride 1 a chunk of N pairs carries N + 1 frames, not 2N. The chunk's own columns repeat
    on every row; the labeler turns the rows into one row per pair (:func:`pipeline.chunks.pair_rows`).
    """
    source = unit.source
    frames = sorted({id(f): f for p in pairs for f in (p.frame0, p.frame1)}.values(), key=lambda f: f.index)
    row = {f.index: i for i, f in enumerate(frames)}
    m = len(frames)
    pair_with = np.full(m, -1, np.int32)
    ordinal = np.full(m, -1, np.int64)
    for p in pairs:
        pair_with[row[p.frame0.index]] = row[p.frame1.index]
        ordinal[row[p.frame0.index]] = p.ordinal
    h, w = frames[0].image.shape[:2]
    return {
        "video_id": np.full(m, source.video_id, object),
        "source": np.full(m, source.uri, object),
        "corpus": np.full(m, source.corpus, object),
        "chunk": np.full(m, chunk_name(pairs), object),
        "frame": np.array([f.index for f in frames], np.int32),
        "time": np.array([np.nan if f.time is None else f.time for f in frames], np.float64),
        "pair_with": pair_with,
        "ordinal": ordinal,
        "height": np.full(m, h, np.int32),
        "width": np.full(m, w, np.int32),
        "source_height": np.full(m, frames[0].source_size[0], np.int32),
        "source_width": np.full(m, frames[0].source_size[1], np.int32),
        "unit": np.full(m, unit.key, object),
        "unit_chunks": np.full(m, "", object),  # the unit's chunk list (JSON), on its last chunk only
        CHUNK_PAIRS: np.full(m, len(pairs), np.int32),
        "image": np.stack([f.image for f in frames]),
        # Carried manifest columns (text or None) ride along to the sink like the other chunk columns.
        **{name: np.full(m, value, object) for name, value in source.carry},
    }


@dataclass
class UnitOutcome:
    """What reading one unit did: its chunk names in order, how many were yielded (the rest
    were already committed), the error/skip records, and whether it ended cleanly
    (``finished``) or on an error that a later run could get past (``retryable``)."""

    chunks: list[str] = field(default_factory=list)
    yielded: int = 0
    records: list[tuple[str, UnitRecord]] = field(default_factory=list)
    finished: bool = False
    retryable: bool = False

    @property
    def status(self) -> str:
        """done (has chunks), failed (an error and no chunks) or skipped (nothing to label)."""
        if self.chunks:
            return "done"
        return "failed" if any(folder == ERRORS_DIR for folder, _ in self.records) else "skipped"


def chunk_name(pairs: list[Pair]) -> str:
    """A chunk of pairs is named by its first and last frame0 index."""
    return chunk_id(pairs[0].frame0.index, pairs[-1].frame0.index)


def iter_unit_chunks(
    unit: ReadUnit,
    options: ReadOptions,
    report: DecodeReport,
    storage_options: Mapping[str, Any] | None = None,
    to_rgb: VideoReformatter | None = None,
) -> Iterator[list[Pair]]:
    """The unit's pairs cut into chunks: a new chunk every ``chunk_pairs`` ordinals counted
    from the unit's first ordinal, and at a change of frame size."""
    chunk: list[Pair] = []
    limit = 1
    pairs = iter_unit_pairs(
        unit, options.decode, report, storage_options, options.decode_threads, options.small_unit_bytes, to_rgb
    )
    for pair in pairs:
        if chunk and (
            chunk[-1].frame0.image.shape != pair.frame0.image.shape or (pair.ordinal - unit.first_ordinal) % limit == 0
        ):
            yield chunk
            chunk = []
        if not chunk:
            limit = options.chunk_pairs(*pair.frame0.image.shape[:2])
        chunk.append(pair)
    if chunk:
        yield chunk


def read_unit(
    unit: ReadUnit,
    options: ReadOptions,
    storage_options: Mapping[str, Any] | None = None,
    outcome: UnitOutcome | None = None,
    to_rgb: VideoReformatter | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode ``unit`` and yield one batch per chunk not in ``unit.done_chunks`` (``to_rgb``: the read
    task's converter to RGB, see :func:`pipeline.read.decode.iter_video_frames`).

    The last chunk is held back one step so that it can carry the unit's full chunk list
    (column ``unit_chunks``): the driver marks the unit done once all of them are committed.
    A transient IO error (object store restarting, throttling) restarts the unit after a
    pause, up to ``options.io_attempts`` times, skipping the chunks already yielded.
    Never raises for bad input: failures go to ``outcome.records`` as (folder, record), with
    folder ``_errors`` (the unit failed, or lost frames) or ``_skipped`` (no pairs).
    """
    outcome = UnitOutcome() if outcome is None else outcome
    source = unit.source
    skip = set(unit.done_chunks)
    for attempt in range(options.io_attempts):
        report = DecodeReport()
        held: list[Pair] = []  # the latest chunk, held back until we know whether it is the last
        pairs_seen = 0
        outcome.chunks = []
        try:
            for pairs in iter_unit_chunks(unit, options, report, storage_options, to_rgb):
                if held and chunk_name(held) not in skip:
                    yield _emit(held, unit, outcome, skip)
                held = pairs
                outcome.chunks.append(chunk_name(pairs))
                pairs_seen += len(pairs)
        except Exception as exc:  # bad input must not stop the job: record it against the unit
            if held and chunk_name(held) not in skip:  # a complete chunk: keep it
                yield _emit(held, unit, outcome, skip)
            if is_transient(exc) and attempt + 1 < options.io_attempts:
                time.sleep(options.io_first_delay_s * 2**attempt)
                continue
            stage = "open" if report.frames == 0 and report.decode_errors == 0 else "decode"
            outcome.records.append(
                (
                    ERRORS_DIR,
                    record_exception(
                        source.uri, source.video_id, unit.key, stage, with_http_status(exc), storage_options
                    ),
                )
            )
            outcome.retryable = is_transient(exc)
            return
        # The last chunk carries the unit's chunk list, so it is sent even when already committed
        # (rewritten identically) unless the unit sends nothing at all: then the read task settles it.
        if held and (chunk_name(held) not in skip or outcome.yielded):
            yield _emit(held, unit, outcome, skip, unit_chunks=json.dumps(outcome.chunks))
        outcome.finished = True
        outcome.records += _report_records(unit, options, report, pairs_seen)
        return


def _emit(
    pairs: list[Pair], unit: ReadUnit, outcome: UnitOutcome, sent: set[str], unit_chunks: str = ""
) -> dict[str, np.ndarray]:
    batch = chunk_batch(pairs, unit)
    batch["unit_chunks"][:] = unit_chunks
    outcome.yielded += 1
    sent.add(chunk_name(pairs))
    return batch


def _report_records(
    unit: ReadUnit, options: ReadOptions, report: DecodeReport, pairs: int
) -> list[tuple[str, UnitRecord]]:
    source = unit.source

    def record(folder: str, stage: str, error_type: str, message: str) -> tuple[str, UnitRecord]:
        return folder, UnitRecord(source.uri, source.video_id, unit.key, stage, error_type, message)

    if report.decode_errors:
        message = f"{report.decode_errors} packet(s) failed to decode and were skipped; first: {report.first_error}"
        if report.gaps:
            message += "; no pair spans them: " + "; ".join(report.gaps)
        if not pairs:
            return [record(ERRORS_DIR, "decode", NoFramesError.__name__, "no pairs: " + message)]
        return [record(ERRORS_DIR, "decode", "DecodeError", message)]
    if report.frames == 0 and unit.first and (source.start is not None or source.end is not None):
        return [record(SKIPPED_DIR, "pair", "NoPairs", f"no frame in the span [{source.start}, {source.end}) s")]
    if report.frames == 0 and unit.first:
        announced = f" (the container announces {report.announced_frames})" if report.announced_frames else ""
        return [record(ERRORS_DIR, "decode", NoFramesError.__name__, f"no decodable frame in the source{announced}")]
    if report.truncated:
        return [
            record(
                ERRORS_DIR,
                "decode",
                "TruncatedError",
                f"the container announces {report.announced_frames} frames, {report.decoded_frames} decoded: "
                "the file ends early (truncated upload?)",
            )
        ]
    if report.size_changes:
        return [record(ERRORS_DIR, "pair", "FrameSizeChanged", "; ".join(report.size_changes))]
    if pairs == 0 and unit.first:
        return [
            record(
                SKIPPED_DIR,
                "pair",
                "NoPairs",
                f"{report.frames} frame(s) decoded, a pair needs {options.decode.stride + 1}",
            )
        ]
    return []


class FramePairDatasource(Datasource):
    """One Ray read task per group of units (:func:`task_groups`, spread over ``readers`` concurrent
    tasks); each task yields blocks of whole chunks and writes its units' error/skip records under
    ``records_out`` itself (so they survive even when a unit yields no rows).

    The groups are fixed here, not from the ``parallelism`` Ray Data passes: a run asks Ray for
    exactly :attr:`num_tasks` blocks (``override_num_blocks``), since Ray splits the blocks of a
    datasource that returns fewer tasks than asked for, which would cut chunks."""

    def __init__(
        self,
        units: list[ReadUnit],
        options: ReadOptions,
        records_out: str,
        storage_options: Mapping[str, Any] | None = None,
        readers: int = 1,
    ):
        super().__init__()
        self._groups = task_groups(units, options, readers)
        self._options = options
        self._records_out = records_out
        self._storage_options = dict(storage_options or {})

    @property
    def num_tasks(self) -> int:
        return len(self._groups)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        for group in self._groups:
            uris = tuple(dict.fromkeys(unit.source.uri for unit in group))
            metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=uris)
            tasks.append(ReadTask(self._read_fn(group), metadata))
        return tasks

    def _read_fn(self, units: list[ReadUnit]):
        options, records_out, storage_options = self._options, self._records_out, self._storage_options
        packed = all(_is_small(unit, options) for unit in units)

        def read() -> Iterator[Any]:
            blocks = coalesce(_read_units(units, options, records_out, storage_options), options.chunk_bytes)
            for number, batch in enumerate(blocks):
                yield BlockAccessor.batch_to_block(stamp_pack(batch, pack_name(units, number) if packed else ""))

        return read


def pack_name(units: list[ReadUnit], block: int) -> str:
    """The name of the pack that block ``block`` of a read task of small ``units`` becomes: a digest of the
    units' keys and the block's number. A retried task makes the same blocks, so it rewrites the same packs;
    another run's task of other units cannot name the same pack."""
    digest = hashlib.sha256("\n".join(unit.key for unit in units).encode()).hexdigest()[:16]
    return f"{digest}-{block:04d}"


def stamp_pack(batch: dict[str, np.ndarray], pack: str) -> dict[str, np.ndarray]:
    """Columns ``pack`` (the name, "" for none) and ``pack_chunks`` (how many chunks the pack holds) on every
    row: the writer writes a pack as one file only when it holds all of them (see pipeline.write.sinks)."""
    m = len(batch["frame"])
    chunks = len(set(zip(batch["video_id"].tolist(), batch["chunk"].tolist())))
    return {**batch, PACK_COLUMNS[0]: np.full(m, pack, object), PACK_COLUMNS[1]: np.full(m, chunks, np.int32)}


def _read_units(
    units: list[ReadUnit], options: ReadOptions, records_out: str, storage_options: Mapping[str, Any]
) -> Iterator[dict[str, np.ndarray]]:
    """The chunks of ``units`` in order; each unit's records (and its marker, when it sends
    nothing to the writers) are written as soon as the unit is read."""
    to_rgb = VideoReformatter()  # one swscale context for clips of one size, not one per clip
    for unit in units:
        outcome = UnitOutcome()
        yield from read_unit(unit, options, storage_options, outcome, to_rgb)
        for folder, record in outcome.records:
            write_record(records_out, folder, record, storage_options)
        if outcome.yielded == 0 and (outcome.finished or not outcome.retryable):
            # Nothing reaches the writers (no pairs, a bad input, or every chunk already
            # committed): the unit is settled here.
            write_unit_marker(records_out, unit.key, outcome.status, outcome.chunks, storage_options)


def task_groups(units: list[ReadUnit], options: ReadOptions, parallelism: int = 1) -> list[list[ReadUnit]]:
    """Read tasks: a large unit alone; consecutive small ones of one corpus together, at most
    ``units_per_task``, and no more per task than spreads them over ``parallelism`` tasks (so short
    runs keep every reader busy)."""
    small = [u for u in units if _is_small(u, options)]
    per_task = max(1, min(options.units_per_task, -(-len(small) // max(1, parallelism))))
    groups: list[list[ReadUnit]] = []
    current: list[ReadUnit] = []
    for unit in units:
        if not _is_small(unit, options):
            groups += [current, [unit]] if current else [[unit]]
            current = []
            continue
        if current and current[-1].source.corpus != unit.source.corpus:  # a pack file is in one corpus= folder
            groups.append(current)
            current = []
        current.append(unit)
        if len(current) == per_task:
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


def _is_small(unit: ReadUnit, options: ReadOptions) -> bool:
    size = unit.source.size
    whole = unit.first and unit.stop is None
    return whole and (size is None or size <= options.small_unit_bytes)


def coalesce(batches: Iterator[dict[str, np.ndarray]], max_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive chunk batches joined into blocks of up to ``max_bytes`` of frames. Only batches
    with the same columns and frame size join (a block column is one array); a chunk is never cut."""
    held: list[dict[str, np.ndarray]] = []
    size = 0
    for batch in batches:
        if held and (size + batch["image"].nbytes > max_bytes or not _joinable(held[0], batch)):
            yield _join(held)
            held, size = [], 0
        held.append(batch)
        size += batch["image"].nbytes
    if held:
        yield _join(held)


def _joinable(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and a["image"].shape[1:] == b["image"].shape[1:]


def _join(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return batches[0]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
