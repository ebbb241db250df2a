"""``flowlabel label``: sources → Ray Data (read → label actors → write) → labeled Parquet/npz.

``run_label(LabelJob(...))`` is the Python API; the CLI only builds a ``LabelJob``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipeline.keyset import KeySet
from pipeline.label.clip_labels import CLIPS_DIR, ClipLabelOptions
from pipeline.label.frame_labels import FrameLabelOptions
from pipeline.label.labeler import Labeler, LabelerConfig
from pipeline.read.datasource import FramePairDatasource, ReadOptions
from pipeline.read.decode import DecodeOptions
from pipeline.read.manifest import ManifestOptions
from pipeline.read.plan import PlanOptions, ReadUnit, iter_units
from pipeline.read.sources import ListingError, Source, iter_sources
from pipeline.storage import join, redact
from pipeline.write.clip_summary import (
    CLIP_SUMMARY_DIR,
    clip_summary_is_stale,
    clip_summary_rows,
    mark_clip_summary_stale,
    write_clip_summary,
)
from pipeline.write.compact import compact_packs
from pipeline.write.exactly_once import (
    Books,
    OutputConflictError,
    check_same_settings,
    count_settled,
    unit_outcomes,
)
from pipeline.write.records import ERRORS_DIR, SKIPPED_DIR, UnitRecord, clear_records, write_record
from pipeline.write.run_manifest import RunProgress, versions
from pipeline.write.sinks import SinkOptions, write_batch

from .cluster import ClusterOptions, RemoteExecutor, connect, map_whole_blocks, plan_stages
from .label_clips import clip_unit, run_clip_labels
from .options import (
    add_cluster_options,
    add_model_options,
    add_storage_options,
    cluster_options,
    labeler_config,
    run_command,
)
from .stats import (
    MAX_VIDEOS,
    RunTally,
    format_stats,
    merge_stages,
    run_stats,
    stage_stats,
    stamp_actor_seconds,
)

__all__ = [
    "LabelJob",
    "LabelResult",
    "OutputConflictError",
    "run_label",
    "prepare",
    "plan_windows",
    "execute",
    "finish",
]

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2
MAX_RECORDS = 50  # failures (and skips) the CLI summary lists one by one; <out>/_errors/ has every one
WINDOW_OPTIONS = ("window_units", "first_window_units")  # PlanOptions fields that change no row


@dataclass(frozen=True)
class LabelJob:
    """Everything one labeling run needs; see ``flowlabel label --help`` for each option."""

    inputs: tuple[str, ...]
    sink: SinkOptions
    labeler: LabelerConfig = LabelerConfig()
    read: ReadOptions = ReadOptions()
    plan: PlanOptions = PlanOptions()
    cluster: ClusterOptions = ClusterOptions()
    corpus: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    frame_labels: FrameLabelOptions | None = None  # --frame-labels: image classes of frame0 in the pair rows
    clip_labels: ClipLabelOptions | None = None  # --clip-labels: the clip table under <out>/_clips/
    manifest: ManifestOptions | None = None  # --manifest: inputs listed in a file (with spans, carried columns)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs and self.manifest is None:
            raise ValueError("expected input URIs or a manifest (--manifest), got neither")
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        carried = self.manifest.carry if self.manifest else ()
        if self.sink.carried != carried:  # the files' schema follows the manifest's carried columns
            object.__setattr__(self, "sink", replace(self.sink, carried=carried))


@dataclass
class LabelResult:
    """What a run did. ``exit_code``: 0 all labeled, 2 some inputs failed."""

    sources: int
    units: int
    pairs: int
    chunks: int
    bytes_written: int
    seconds: float
    per_video: list[dict[str, Any]]  # the first stats.MAX_VIDEOS videos of this run, by source
    errors: list[UnitRecord]
    skipped: list[UnitRecord]
    files: int = 0  # data files written: a chunk's per format, or a pack's (short clips)
    clips: int = 0  # rows written to <out>/_clips/ (--clip-labels)
    clip_summaries: int = 0  # rows of <out>/_clips_summary/: one per source labeled on out, this run or before
    settled_before: int = 0  # units already done by an earlier run on the same out (a resume)
    more_videos: bool = False  # per_video lists only the first stats.MAX_VIDEOS videos of this run
    stats: dict[str, Any] = field(default_factory=dict)  # throughput per stage, actors, bytes (jobs/stats.py)

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.errors else EXIT_OK

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class RunStart:
    """A run before any input is listed: its manifest (settings checked against ``out``) and what
    earlier runs left in ``out``."""

    manifest: dict[str, Any]
    books: Books


@dataclass
class Window:
    """A slice of a run's inputs, planned and then labeled together: the driver holds one at a time, so
    neither its memory nor the time to the first labeled pair grows with the corpus."""

    pending: list[ReadUnit] = field(default_factory=list)  # not settled by an earlier run
    settled: list[str] = field(default_factory=list)  # the keys of the units an earlier run settled
    sources: list[Source] = field(default_factory=list)  # the sources whose first unit is in this window
    listing_errors: list[ListingError] = field(default_factory=list)

    @property
    def units(self) -> int:
        """Units planned, settled ones included."""
        return len(self.pending) + len(self.settled)

    @property
    def settled_before(self) -> int:
        return len(self.settled)

    @property
    def run_keys(self) -> list[str]:
        """Record keys of what the window runs: its pending units and its listing failures (their records are
        cleared before it runs)."""
        return [u.key for u in self.pending] + [_listing_key(e.uri) for e in self.listing_errors]

    @property
    def keys(self) -> list[str]:
        """Record keys of everything the window covers: settled units too, whose records (a failure an
        earlier run settled) are this run's outcome as well."""
        return self.run_keys + self.settled


@dataclass
class RunCounts:
    """What the driver keeps of every window: counts, and each unit's key in 8 bytes (:class:`KeySet`), so
    that the run can tell its own records and markers from those of other runs into the same ``out``."""

    sources: int = 0
    units: int = 0
    settled_before: int = 0
    source_bytes: int = 0
    clips: int = 0
    windows: int = 0
    keys: KeySet = field(default_factory=KeySet)  # every unit and listing failure of the run (+ clip passes)
    stages: list[list[dict[str, Any]]] = field(default_factory=list)  # Ray Data's stage stats, per window
    plan: dict[str, Any] | None = None  # the stage plan of the largest window
    plan_units: int = 0  # that window's pending units
    actors: int = 0  # the most labeler actors any window had
    last_source: str | None = None  # the URI of the last pending unit of the windows so far

    def add(self, window: Window) -> None:
        self.windows += 1
        self.sources += len(window.sources)
        self.units += window.units
        self.settled_before += window.settled_before
        sizes = {u.source.uri: u.source.size or 0 for u in window.pending}
        sizes.pop(self.last_source, None)  # a long video's segments in two windows: its bytes count once
        self.source_bytes += sum(sizes.values())
        self.last_source = window.pending[-1].source.uri if window.pending else self.last_source
        self.keys.update(window.keys)


def run_label(job: LabelJob) -> LabelResult:
    """Label every frame pair of ``job.inputs`` into ``job.sink.out``, exactly once.

    Re-running the same job resumes: settled units are not read again, committed chunks are
    not labeled again. A different model, checkpoint or labeling option on the same ``out``
    raises :class:`OutputConflictError`.
    """
    started = time.time()
    start = prepare(job, started)
    so = dict(job.storage_options)
    # Ray is started (or joined) once, when first needed: a run with nothing left to do never starts it, and a
    # runtime env can only be applied then.
    ray_up = functools.cache(lambda: connect(job.cluster))
    # A bad manifest fails here, before _flowlabel.json is written; long videos are probed by Ray tasks.
    windows = plan_windows(job, start.books, RemoteExecutor(ray_up))
    progress = RunProgress(job.sink.out, start.manifest, so)
    progress.write("running")
    tally, counts = RunTally(start.books.tracker(so)), RunCounts()
    for window in windows:
        counts.add(window)
        progress.planned(window.units, window.settled_before)
        execute(job, window, tally, counts, progress, ray_up)
        del window  # not held while the next one is planned
    return finish(job, tally, counts, progress, started)


def prepare(job: LabelJob, started: float) -> RunStart:
    """Check the settings against ``out`` and read its books. Fails fast, before any input is listed,
    on a bad model, checkpoint or setting."""
    so = dict(job.storage_options)
    checkpoint_sha256 = job.labeler.load("cpu", so).checkpoint_sha256
    manifest = _manifest(job, checkpoint_sha256, started)
    manifest["options"].update(_extra_labels(job, so))  # fails fast on their checkpoints too
    check_same_settings(job.sink.out, manifest, so)
    books = Books.read(job.sink, so)
    books.clear_unsettled_packs(so)
    return RunStart(manifest, books)


def plan_windows(job: LabelJob, books: Books, probes: Executor | None = None) -> Iterator[Window]:
    """The run's inputs listed and planned as they come, cut into windows of at most ``window_units`` units:
    the first is small (its pairs come soon), and each next one four times the last. A unit settled by an
    earlier run counts towards its window but keeps only its key. Raises ValueError on a manifest without its
    URI column (or a carried one) at once, not at the first window. Long videos are probed on ``probes``
    (default: threads of the driver; see :func:`pipeline.read.plan.iter_units`)."""
    so = dict(job.storage_options)
    items = iter_sources(job.inputs, so, job.corpus, job.manifest)
    head = list(itertools.islice(items, 1))  # opens the manifest and checks its columns
    return _windows(job, books, itertools.chain(head, items), so, probes)


def _windows(
    job: LabelJob,
    books: Books,
    items: Iterator[Source | ListingError],
    storage_options: Mapping[str, Any],
    probes: Executor | None,
) -> Iterator[Window]:
    size = min(job.plan.first_window_units, job.plan.window_units)
    window = Window()
    for item in iter_units(items, job.read.decode, job.plan, storage_options, probes):
        if isinstance(item, ListingError):
            window.listing_errors.append(item)
            continue
        if item.first:
            window.sources.append(item.source)
        if item.key in books.settled:
            window.settled.append(item.key)
        else:
            # A unit object is copied only when it has committed chunks: a fresh run holds each unit once.
            done = books.committed.get(item.source.video_id)
            window.pending.append(replace(item, done_chunks=done) if done else item)
        if window.units >= size:
            yield window
            window, size = Window(), min(4 * size, job.plan.window_units)
    if window.units or window.listing_errors:
        yield window


def execute(
    job: LabelJob,
    window: Window,
    tally: RunTally,
    counts: RunCounts,
    progress: RunProgress,
    ray_up: Callable[[], object],
) -> None:
    """Label one window: clear the records of its units, record its listing failures, run its pending units
    through Ray Data and settle each unit as its last chunk is committed, then its clip labels. ``ray_up``
    connects to Ray before its first use; it must do so once per run (a runtime env applies only then)."""
    so = dict(job.storage_options)
    clear_records(job.sink.out, window.run_keys, so)
    for err in window.listing_errors:
        record = UnitRecord(err.uri, "", _listing_key(err.uri), "list", err.error_type, err.message)
        write_record(job.sink.out, ERRORS_DIR, record, so)
    execution: dict[str, Any] = {}
    actors_before = len(tally.actors)
    if window.pending:
        mark_clip_summary_stale(job.sink, so)
        ray_up()
        for summary in _stream(job, window.pending, execution):
            tally.add(summary)
            progress.update(int(summary["pairs"]), tally.tracker.settled)
    actors = len(tally.actors) - actors_before  # each window starts labeler actors of its own
    counts.actors = max(counts.actors, actors)
    counts.stages.append(stamp_actor_seconds(execution.get("stages", []), actors))
    if execution.get("plan") and len(window.pending) >= counts.plan_units:
        counts.plan, counts.plan_units = execution["plan"], len(window.pending)
    if job.clip_labels and window.sources:
        ray_up()
        counts.clips += run_clip_labels(window.sources, job.clip_labels, job.sink, job.cluster, so).clips
        for source in window.sources:
            counts.keys.add(clip_unit(source))


def finish(job: LabelJob, tally: RunTally, counts: RunCounts, progress: RunProgress, started: float) -> LabelResult:
    """The run's records and statistics, the joined summary packs, the clip summary and the final manifest."""
    so = dict(job.storage_options)
    errors, skipped = unit_outcomes(job.sink.out, counts.keys, so)
    result = LabelResult(
        sources=counts.sources,
        units=counts.units,
        pairs=tally.pairs,
        chunks=tally.chunks,
        bytes_written=tally.bytes_written,
        files=tally.files,
        seconds=time.time() - started,
        per_video=tally.per_video(),
        more_videos=tally.truncated,
        errors=errors,
        skipped=skipped,
        settled_before=counts.settled_before,
        clips=counts.clips,
    )
    result.stats = run_stats(
        merge_stages(counts.stages),
        tally.placements(),
        pairs=result.pairs,
        seconds=result.seconds,
        errors=len(errors),
        bytes_written=result.bytes_written,
        source_bytes=counts.source_bytes,
        actors_at_once=counts.actors,
    )
    result.stats["windows"] = counts.windows
    # A run (this one, or one killed before its end) committed rows: join the small summary packs into files
    # of tens of MB, and rewrite the clip table, which covers all of out.
    committed = tally.chunks > 0 or clip_summary_is_stale(job.sink, so)
    if committed:
        compact_packs(job.sink, so)
    existing = None if committed else clip_summary_rows(job.sink, so)
    result.clip_summaries = write_clip_summary(job.sink, so) if existing is None else existing
    progress.write(
        "finished",
        stats=result.stats,
        plan=counts.plan,
        counts=_final_counts(result, counts, count_settled(job.sink.out, counts.keys, ("done", "skipped"), so)),
    )
    return result


def _final_counts(result: LabelResult, counts: RunCounts, done: int) -> dict[str, int]:
    return {
        "sources": result.sources,
        "pairs": result.pairs,
        "chunks": result.chunks,
        "bytes_written": result.bytes_written,
        "errors": len(result.errors),
        "skipped": len(result.skipped),
        "clips": result.clips,
        "units_total": counts.units,
        "units_skipped_as_done": result.settled_before,
        "units_done": done,
        "units_failed": counts.units - done,
    }


def _extra_labels(job: LabelJob, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """Manifest options of --frame-labels / --clip-labels with their weights' sha256 (loading them
    on the driver also fails the job early on a bad checkpoint)."""
    out: dict[str, Any] = {}
    if job.frame_labels:
        out["frame_labels"] = {
            **asdict(job.frame_labels),
            "weights_sha256": job.frame_labels.load("cpu", storage_options).checkpoint_sha256,
        }
    if job.clip_labels:
        out["clip_labels"] = {
            **asdict(job.clip_labels),
            "weights_sha256": job.clip_labels.load("cpu", storage_options)[1],
        }
    return out


def _labeler_kwargs(job: LabelJob, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "config": job.labeler,
        "storage_options": storage_options,
        "frame_labels": job.frame_labels,
        "flow_encoding": job.sink.flow_encoding,
        "store": job.sink.store,
        "yield_bytes": job.read.chunk_bytes,
    }


def _listing_key(uri: str) -> str:
    return f"list-{_short_hash(uri)}"


def _stream(job: LabelJob, units: list[ReadUnit], execution: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Write summaries as the chunks are committed; fills ``execution`` with the stage plan and,
    once the stream is consumed, Ray Data's per-stage stats."""
    import ray

    so = dict(job.storage_options)
    stages = plan_stages(job.cluster, job.read.chunk_bytes, len(units))  # resources and limits: jobs/cluster.py
    # Short clips share read tasks, spread over the concurrent readers; then the stages are sized again
    # for the tasks there are.
    source = FramePairDatasource(units, job.read, job.sink.out, so, readers=stages.read["concurrency"])
    stages = plan_stages(job.cluster, job.read.chunk_bytes, source.num_tasks)
    execution["plan"] = stages.describe()
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_tasks, **stages.read)
    # Ray Data restarts a killed labeler actor and redoes its batch (max_restarts=-1 by default).
    ds = map_whole_blocks(ds, Labeler, fn_constructor_kwargs=_labeler_kwargs(job, so), **stages.label)
    ds = ds.map_batches(
        write_batch, fn_kwargs={"options": job.sink, "storage_options": so}, batch_size=None, **stages.write
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from _rows(batch)
    execution["stages"] = stage_stats(ds)


def _rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()} for i in range(n)]


def _manifest(job: LabelJob, checkpoint_sha256: str, started: float) -> dict[str, Any]:
    labeler = asdict(job.labeler)
    return {
        "tool": "flowlabel",
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "inputs": list(job.inputs),
        "manifest": asdict(job.manifest) if job.manifest else None,
        "out": job.sink.out,
        "model": job.labeler.model,
        "checkpoint": job.labeler.checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "options": {
            "labeler": labeler,
            "decode": asdict(job.read.decode),
            "read": asdict(job.read),
            # Windows are recorded apart from the plan: a run's plan is what the previous versions compare.
            "plan": {k: v for k, v in asdict(job.plan).items() if k not in WINDOW_OPTIONS},
            "windows": {k: getattr(job.plan, k) for k in WINDOW_OPTIONS},
            "sink": asdict(job.sink),
            "corpus": job.corpus,
        },
        "storage_options": redact(job.storage_options),
        "versions": versions(),
    }


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- CLI


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``flowlabel label``."""
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="SRC",
        help="video files, folders, globs, image-sequence folders or http(s):// URLs (optional with --manifest)",
    )
    parser.add_argument(
        "--manifest",
        metavar="URI",
        help="a list of input videos: .parquet, .csv, .jsonl/.ndjson, or plain text (one URI a line)",
    )
    parser.add_argument(
        "--manifest-column", default="uri", metavar="NAME", help="the manifest column of input URIs (default uri)"
    )
    parser.add_argument(
        "--carry",
        default="",
        metavar="COL,COL",
        help="manifest columns copied into every output row of their input, as text (null stays "
        "null); optional start/end columns (seconds) label only that span of a video",
    )
    parser.add_argument("--out", required=True, help="output URI (local path, s3://bucket/prefix, …)")
    add_model_options(parser)
    parser.add_argument("--stride", type=int, default=1, help="pair frame k with k+stride (default 1)")
    parser.add_argument("--fps", type=float, help="resample videos to this frame rate first")
    parser.add_argument("--max-side", type=int, help="downscale so that max(H, W) ≤ this (flow in resized pixels)")
    parser.add_argument("--max-pairs-per-video", type=int, help="label at most this many pairs per video")
    parser.add_argument("--max-pixels", type=int, help="frames above this many pixels are downscaled or rejected")
    parser.add_argument(
        "--oversize",
        choices=("downscale", "reject"),
        default="downscale",
        help="what --max-pixels does with a larger frame (default downscale)",
    )
    parser.add_argument(
        "--chunk-mb",
        type=float,
        default=48.0,
        help="frame megabytes per chunk of pairs: the unit of labeling and of output files",
    )
    parser.add_argument("--format", choices=("parquet", "npz", "both"), default="parquet")
    parser.add_argument(
        "--flow-encoding",
        choices=("int16", "float16"),
        default="int16",
        help="int16: flow in 1/64 px steps (KITTI precision) and confidence in 1/255, about "
        "half the bytes (default); float16: as the model's float16 output",
    )
    parser.add_argument(
        "--store",
        choices=("dense", "summary"),
        default="dense",
        help="dense: label arrays and per-pair motion summaries (default); summary: the motion "
        "summaries only, no arrays (curation; Parquet only). Both write <out>/_clips_summary/",
    )
    parser.add_argument(
        "--partition",
        default="corpus,video",
        help="hive partition keys, comma-separated, from {corpus, video}; 'none' for flat",
    )
    parser.add_argument("--corpus", help="corpus name (default: last path element of each input's root)")
    parser.add_argument(
        "--segment-frames",
        type=int,
        default=1800,
        help="split videos larger than --split-mb into read tasks of about this many frames",
    )
    parser.add_argument("--split-mb", type=float, default=256.0, help="videos above this size are split (default 256)")
    parser.add_argument(
        "--window-units",
        type=int,
        default=PlanOptions.window_units,
        metavar="N",
        help="plan and label the inputs in windows of at most N units (clips or segments); the "
        "driver holds one window at a time (default 262144)",
    )
    parser.add_argument(
        "--frame-labels",
        metavar="NAME",
        choices=("perceiver_image_classifier",),
        help="add the top-k image classes of frame0 to each pair row: perceiver_image_classifier",
    )
    parser.add_argument("--frame-labels-checkpoint", metavar="URI", help="its HuggingFace model directory")
    parser.add_argument("--frame-labels-top-k", type=int, default=5, help="classes per frame (default 5)")
    parser.add_argument(
        "--frame-labels-every",
        type=int,
        default=1,
        metavar="N",
        help="classify frame0 of every N-th pair of a video; the others get nulls (default 1)",
    )
    parser.add_argument(
        "--clip-labels",
        metavar="NAME",
        choices=("perceiver_multimodal",),
        help="write a clip table to <out>/_clips/ (Kinetics-700 classes and reconstruction errors "
        "of 16-frame clips with audio): perceiver_multimodal",
    )
    parser.add_argument("--clip-labels-checkpoint", metavar="URI", help="its HuggingFace model directory")
    parser.add_argument("--clip-labels-top-k", type=int, default=5, help="classes per clip (default 5)")
    add_storage_options(parser)
    add_cluster_options(parser)


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel label`` (called by jobs.cli)."""
    parser = subparsers.add_parser("label", help=help)
    add_label_arguments(parser)
    parser.set_defaults(func=cmd_label)


def label_job(args: argparse.Namespace) -> LabelJob:
    """The options of ``flowlabel label`` as a :class:`LabelJob`."""
    formats = ("parquet", "npz") if args.format == "both" else (args.format,)
    partition = () if args.partition == "none" else tuple(p.strip() for p in args.partition.split(",") if p.strip())
    decode = DecodeOptions(
        stride=args.stride,
        fps=args.fps,
        max_side=args.max_side,
        max_pairs=args.max_pairs_per_video,
        max_pixels=args.max_pixels,
        oversize=args.oversize,
    )
    return LabelJob(
        inputs=tuple(args.inputs),
        sink=SinkOptions(
            args.out, formats=formats, partition=partition, flow_encoding=args.flow_encoding, store=args.store
        ),
        labeler=labeler_config(args),
        read=ReadOptions(decode=decode, chunk_bytes=int(args.chunk_mb * 2**20)),
        plan=PlanOptions(
            segment_frames=args.segment_frames, split_bytes=int(args.split_mb * 2**20), window_units=args.window_units
        ),
        cluster=cluster_options(args),
        corpus=args.corpus,
        storage_options=args.storage_options,
        frame_labels=FrameLabelOptions(
            args.frame_labels,
            args.frame_labels_checkpoint or "",
            top_k=args.frame_labels_top_k,
            every=args.frame_labels_every,
        )
        if args.frame_labels
        else None,
        clip_labels=ClipLabelOptions(args.clip_labels, args.clip_labels_checkpoint or "", top_k=args.clip_labels_top_k)
        if args.clip_labels
        else None,
        manifest=manifest_options(args),
    )


def manifest_options(args: argparse.Namespace) -> ManifestOptions | None:
    """--manifest, --manifest-column and --carry as :class:`ManifestOptions` (None without --manifest)."""
    carry = tuple(name.strip() for name in args.carry.split(",") if name.strip())
    if not args.manifest:
        if carry:
            raise ValueError(f"--carry {args.carry}: expected --manifest too (columns are carried from a manifest)")
        return None
    return ManifestOptions(args.manifest, column=args.manifest_column, carry=carry)


def cmd_label(args: argparse.Namespace) -> int:
    job = label_job(args)
    result = run_label(job)
    print(format_label_summary(result, job.sink))
    return result.exit_code


def format_label_summary(result: LabelResult, sink: SinkOptions) -> str:
    """What ``flowlabel label`` prints at the end: totals, one line per video, failures, stage statistics."""
    out = sink.out
    if result.settled_before and result.settled_before == result.units and not result.pairs:
        lines = [
            f"nothing to do: all {result.units} units of these {result.sources} sources were already labeled "
            f"in {out} by an earlier run with the same settings"
        ]
    else:
        lines = [
            f"labeled {result.pairs} pairs from {result.sources} sources in {result.seconds:.1f} s "
            f"({result.pairs_per_second:.2f} pairs/s): {result.chunks} chunks in {result.files} files "
            f"({' + '.join(sink.formats)}), {result.bytes_written / 2**20:.1f} MiB, in {out}"
        ]
        if result.settled_before:
            lines.append(
                f"resumed: {result.settled_before} of {result.units} units were already labeled by an earlier run"
            )
    if result.per_video:
        lines.append(f"{'pairs':>7}  {'mean |flow| px':>14}  {'occluded':>8}  source")
        for v in result.per_video:
            lines.append(
                f"{v['pairs']:>7}  {v['mean_flow_magnitude']:>14.3f}  {v['occluded_fraction']:>7.1%}  {v['source']}"
            )
    if result.more_videos:
        lines.append(f"(the first {MAX_VIDEOS} videos of this run; every source is in {join(out, CLIP_SUMMARY_DIR)}/)")
    if result.clips:
        lines.append(f"labeled {result.clips} clips ({join(out, CLIPS_DIR)}/)")
    if result.clip_summaries:
        lines.append(f"motion summaries of {result.clip_summaries} sources in {join(out, CLIP_SUMMARY_DIR)}/")
    for r in result.skipped[:MAX_RECORDS]:
        lines.append(f"skipped  {r.source}: {r.message}")
    if len(result.skipped) > MAX_RECORDS:
        lines.append(f"… and {len(result.skipped) - MAX_RECORDS} more skipped: {join(out, SKIPPED_DIR)}/")
    for r in result.errors[:MAX_RECORDS]:
        lines.append(f"FAILED   {r.source} [{r.stage}] {r.error_type}: {r.message}")
    if len(result.errors) > MAX_RECORDS:
        lines.append(f"… and {len(result.errors) - MAX_RECORDS} more failed: {join(out, ERRORS_DIR)}/")
    lines += format_stats(result.stats)
    if result.errors:
        lines.append(f"{len(result.errors)} input(s) failed; details in {join(out, ERRORS_DIR)}/ (exit code 2)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m jobs.label SRC... --out DST (as on a Ray cluster's working dir)
    import sys

    _parser = argparse.ArgumentParser(prog="flowlabel label", description=__doc__.splitlines()[0])
    add_label_arguments(_parser)
    _parser.set_defaults(func=cmd_label, command="label")
    sys.exit(run_command(_parser.parse_args()))
