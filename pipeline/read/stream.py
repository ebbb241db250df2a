"""A manifest streamed through Ray Data: the driver never lists or plans the corpus.

Read tasks read the manifest and yield its pending rows (:func:`pending_rows`: the first row of a
video wins, units settled by an earlier run are left out), the first of them after a few thousand
rows (:class:`ManifestDatasource`). Ray Data cuts them into blocks of
``units_per_task`` rows, and each block is one decode task (:func:`decode_rows`, the work of a read task
of :mod:`pipeline.read.datasource`). So neither the driver's memory nor the wait for the first pairs
grows with the manifest.

A manifest row is never probed: it is one read unit (see :func:`pipeline.read.plan.iter_units`), whose
key follows from the row alone, so the driver can count what a run covered with a second pass over the
manifest (:func:`manifest_coverage`) instead of keeping the units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.read.datasource import ReadOptions, read_group
from pipeline.read.manifest import ManifestOptions
from pipeline.read.plan import ReadUnit
from pipeline.read.sources import ListingError, Source, iter_manifest_sources, listing_record
from pipeline.storage import filesystem
from pipeline.write.exactly_once import Coverage
from pipeline.write.records import ERRORS_DIR, SKIPPED_DIR, read_records, settled_units, write_record

ROW_BATCH = 1024  # manifest rows per block the manifest task yields (Ray Data joins them)


@dataclass(frozen=True)
class ManifestStream:
    """What a manifest task needs from the driver: the manifest and its corpus, and the books of earlier runs
    on ``out``: ``settled`` unit keys, ``committed`` chunks of videos not settled, and ``stale`` record paths
    (unit key → paths) of units not settled, deleted before the unit runs again."""

    manifest: ManifestOptions
    corpus: str | None
    out: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    settled: frozenset[str] = frozenset()
    committed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    stale: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class SeenIds:
    """The video ids (16 hex digits) met so far, in 8 bytes each: a sorted array, and a set of the recent
    ones merged into it every ``buffer`` ids."""

    def __init__(self, buffer: int = 8192):
        self._sorted = np.empty(0, np.uint64)
        self._recent: set[int] = set()
        self._buffer = buffer

    def add(self, video_id: str) -> bool:
        """Add ``video_id``; False when it was met before."""
        value = int(video_id, 16)
        if value in self._recent:
            return False
        i = int(np.searchsorted(self._sorted, np.uint64(value)))
        if i < len(self._sorted) and int(self._sorted[i]) == value:
            return False
        self._recent.add(value)
        if len(self._recent) >= self._buffer:
            # The recent ids are all new: a concatenation sorted in place is the union, with one copy.
            merged = np.concatenate([self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent))])
            merged.sort()
            self._sorted = merged
            self._recent.clear()
        return True


def unique_rows(stream: ManifestStream) -> Iterator[Source | ListingError]:
    """The manifest's rows, each video once (its first row wins), and its bad rows."""
    seen = SeenIds()
    for item in iter_manifest_sources(stream.manifest, stream.storage_options, stream.corpus):
        if isinstance(item, ListingError) or seen.add(item.video_id):
            yield item


def unit_key(source: Source) -> str:
    """The key of a manifest row's one read unit."""
    return ReadUnit(source).key


def pending_rows(
    stream: ManifestStream, lo: int = 0, hi: int | None = None, batch_rows: int = ROW_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the rows left to label (:func:`source_rows`) among the manifest's rows ``lo`` to ``hi``
    (0-based, bad rows counted; None: to the end); the stale records of each are deleted first. The rows
    before ``lo`` are read too, so that a video's first row wins across ranges. Bad rows are left to the
    driver, which records them (see :func:`manifest_coverage`)."""
    fs, _ = filesystem(stream.out, stream.storage_options)
    seen = SeenIds()
    held: list[Source] = []
    for position, item in enumerate(iter_manifest_sources(stream.manifest, stream.storage_options, stream.corpus)):
        if hi is not None and position >= hi:
            break
        if isinstance(item, ListingError) or not seen.add(item.video_id) or position < lo:
            continue
        key = unit_key(item)
        if key in stream.settled:
            continue
        if stream.stale.get(key):
            fs.rm(list(stream.stale[key]))
        held.append(item)
        if len(held) == batch_rows:
            yield source_rows(held, stream.committed)
            held = []
    if held:
        yield source_rows(held, stream.committed)


def source_rows(sources: list[Source], committed: Mapping[str, frozenset[str]]) -> dict[str, np.ndarray]:
    """Manifest sources as a batch of rows: uri, video_id, corpus, start and end (seconds, NaN: no bound),
    carry (JSON pairs) and done_chunks (JSON list of the chunks an earlier run committed)."""

    def bound(value: float | None) -> float:
        return math.nan if value is None else value

    return {
        "uri": np.array([s.uri for s in sources], object),
        "video_id": np.array([s.video_id for s in sources], object),
        "corpus": np.array([s.corpus for s in sources], object),
        "start": np.array([bound(s.start) for s in sources], np.float64),
        "end": np.array([bound(s.end) for s in sources], np.float64),
        "carry": np.array([json.dumps(s.carry) for s in sources], object),
        "done_chunks": np.array([json.dumps(sorted(committed.get(s.video_id, ()))) for s in sources], object),
    }


def row_units(batch: Mapping[str, np.ndarray]) -> list[ReadUnit]:
    """The read units of a batch of :func:`source_rows` (its inverse), in order."""

    def bound(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    units = []
    for i in range(len(batch["uri"])):
        source = Source(
            str(batch["uri"][i]),
            "video",
            str(batch["video_id"][i]),
            str(batch["corpus"][i]),
            start=bound(batch["start"][i]),
            end=bound(batch["end"][i]),
            carry=tuple((name, value) for name, value in json.loads(batch["carry"][i])),
        )
        units.append(ReadUnit(source, done_chunks=frozenset(json.loads(batch["done_chunks"][i]))))
    return units


def decode_rows(
    batch: Mapping[str, np.ndarray],
    options: ReadOptions,
    records_out: str,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data's decode stage of a manifest run: one block of manifest rows → blocks of whole chunks,
    as a read task of :class:`pipeline.read.datasource.FramePairDatasource` makes them."""
    yield from read_group(row_units(batch), options, records_out, storage_options)


class ManifestDatasource(Datasource):
    """The manifest's pending rows (:func:`pending_rows`) in read tasks of growing ranges of rows.

    Ray Data releases a task's rows when they fill a block (``target_max_block_size``, a million rows
    or more) or the task ends: one task for the whole manifest would hold back the first pairs until it
    had read a million rows. The first task reads ``bounds[0]`` rows and ends, the next ends at
    ``bounds[1]``, and the last reads on to the end; each reads the rows before its range again (for
    the first-row-wins rule), a small cost beside labeling them."""

    def __init__(self, stream: ManifestStream, bounds: tuple[int, ...] = (4096, 65536)):
        super().__init__()
        self._stream = stream
        self._ranges = list(zip((0, *bounds), (*bounds, None)))

    @property
    def num_tasks(self) -> int:
        return len(self._ranges)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        return [self._task(lo, hi) for lo, hi in self._ranges]

    def _task(self, lo: int, hi: int | None) -> ReadTask:
        stream = self._stream

        def read() -> Iterator[Any]:
            for batch in pending_rows(stream, lo, hi):
                yield BlockAccessor.batch_to_block(batch)

        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(stream.manifest.uri,))
        return ReadTask(read, metadata)


def has_pending(stream: ManifestStream) -> bool:
    """Whether any row of the manifest is left to label: a fresh run knows at its first row, a resume
    reads on to the first row not settled (a run with nothing to do reads the whole manifest)."""
    return any(
        isinstance(item, Source) and unit_key(item) not in stream.settled
        for item in iter_manifest_sources(stream.manifest, stream.storage_options, stream.corpus)
    )


def manifest_coverage(stream: ManifestStream, settled_before: Container[str]) -> Coverage:
    """What a manifest run covered, from a second pass over the manifest once the run is over; the bad
    rows' records are written here. Holds the records and settled units of ``out``, not the manifest's
    rows."""
    so = stream.storage_options
    records = {folder: _by_unit(read_records(stream.out, folder, so)) for folder in (ERRORS_DIR, SKIPPED_DIR)}
    settled = settled_units(stream.out, so)
    coverage = Coverage()
    for item in unique_rows(stream):
        if isinstance(item, ListingError):
            record = listing_record(item)
            write_record(stream.out, ERRORS_DIR, record, so)
            coverage.errors.append(record)
            continue
        key = unit_key(item)
        coverage.sources += 1
        coverage.settled_before += key in settled_before
        coverage.done += settled.get(key) in ("done", "skipped")
        coverage.errors += records[ERRORS_DIR].get(key, [])
        coverage.skipped += records[SKIPPED_DIR].get(key, [])
    coverage.units = coverage.sources
    return coverage


def _by_unit(records: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for record in records:
        out.setdefault(record.unit, []).append(record)
    return out
