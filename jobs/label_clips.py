"""Clip labels of a ``flowlabel label`` run (``--clip-labels``): videos → clips → ``<out>/_clips/``.

Ray Data, as the pair labeling: one read task per video (decode clips and audio, CPU) → classifier
actors (the model loaded once; GPU when the cluster has them) → write tasks (one Parquet file per
chunk of clips). Clip chunks already written are not labeled again when a run resumes. See
:mod:`pipeline.label.clip_labels` for the stages themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.label.clip_labels import (
    CLIP_SUMMARY_KEYS,
    ClipLabeler,
    ClipLabelOptions,
    ClipShape,
    clip_sink_of,
    iter_clip_chunks,
    write_clip_chunk,
)
from pipeline.read.sources import Source
from pipeline.write.exactly_once import Books, unit_outcomes
from pipeline.write.records import (
    ERRORS_DIR,
    SKIPPED_DIR,
    UnitRecord,
    clear_records,
    record_exception,
    write_record,
    write_unit_marker,
)
from pipeline.write.sinks import SinkOptions, write_batch

from .cluster import ClusterOptions, actor_pool, map_whole_blocks


@dataclass
class ClipResult:
    """What the clip pass did; ``errors``/``skipped`` are its records (stage "clips")."""

    clips: int = 0
    chunks: int = 0
    bytes_written: int = 0
    checkpoint_sha256: str = ""
    errors: list[UnitRecord] = field(default_factory=list)
    skipped: list[UnitRecord] = field(default_factory=list)


def clip_unit(source: Source) -> str:
    """The record key of a source's clip pass (distinct from its pair units)."""
    return f"clips-{source.video_id}"


def run_clip_labels(
    sources: list[Source],
    options: ClipLabelOptions,
    sink: SinkOptions,
    cluster: ClusterOptions = ClusterOptions(),
    storage_options: Mapping[str, Any] | None = None,
) -> ClipResult:
    """Label the clips of every video in ``sources`` into ``<sink.out>/_clips/``.

    Image sequences are skipped with a record (no audio, no timestamps to take 25 frames/s from).
    A video that fails is recorded under ``_errors`` and does not stop the others. Runs on the Ray the caller
    connected (:func:`jobs.cluster.connect`; ``run_label`` connects once per run).
    """
    so = dict(storage_options or {})
    # Fail fast on a bad checkpoint; the clip shape (frames, size, rates) comes from the model's config.
    classifier, checkpoint_sha256 = options.load("cpu", so)
    shape = ClipShape.of(classifier)
    del classifier
    clip_sink = clip_sink_of(sink)
    books = Books.read(clip_sink, so)  # a video's clip pass is settled once all its chunks are written
    units = books.pending(clip_unit(s) for s in sources)
    clear_records(sink.out, units, so)
    pending = [s for s in sources if clip_unit(s) in units]
    for source in pending:
        if source.kind != "video":
            write_record(
                sink.out,
                SKIPPED_DIR,
                UnitRecord(
                    source.uri,
                    source.video_id,
                    clip_unit(source),
                    "clips",
                    "NotAVideo",
                    "clip labels need a video (frame times and an audio track); image sequences have neither",
                ),
                so,
            )
    videos = [s for s in pending if s.kind == "video"]
    summaries = {}
    for summary in _execute(videos, shape, options, sink, cluster, so, books.committed) if videos else []:
        summaries[summary["video_id"], summary["chunk"]] = summary  # a retried task rewrites the same file
    errors, skipped = unit_outcomes(sink.out, {clip_unit(s) for s in sources}, so)
    _settle(videos, errors, summaries, books, clip_sink, so)
    return ClipResult(
        clips=sum(s["clips"] for s in summaries.values()),
        chunks=len(summaries),
        bytes_written=sum(s["bytes_written"] for s in summaries.values()),
        checkpoint_sha256=checkpoint_sha256,
        errors=errors,
        skipped=skipped,
    )


def _settle(
    videos: list[Source],
    errors: list[UnitRecord],
    summaries: Mapping[tuple[str, str], Mapping[str, Any]],
    books: Books,
    clip_sink: SinkOptions,
    storage_options: Mapping[str, Any],
) -> None:
    """Mark the clip pass of each video that ran without an error record done, with its chunks:
    the stream has ended, so every chunk it read is written."""
    failed = {r.unit for r in errors}
    for video in videos:
        if clip_unit(video) in failed:
            continue
        chunks = set(books.committed.get(video.video_id, ())) | {c for v, c in summaries if v == video.video_id}
        write_unit_marker(clip_sink.out, clip_unit(video), "done", sorted(chunks), storage_options)


def read_video_clips(
    source: Source,
    shape: ClipShape,
    options: ClipLabelOptions,
    out: str,
    done: Mapping[str, frozenset[str]],
    storage_options: Mapping[str, Any],
) -> Iterator[dict[str, np.ndarray]]:
    """Read task: one video's clip chunks; a failure becomes an ``_errors`` record, never an exception."""
    try:
        yield from iter_clip_chunks(source, shape, options, done.get(source.video_id, frozenset()), storage_options)
    except Exception as exc:  # bad input must not stop the job: record it against the video
        write_record(
            out,
            ERRORS_DIR,
            record_exception(source.uri, source.video_id, clip_unit(source), "clips", exc, storage_options),
            storage_options,
        )


def _execute(
    videos: list[Source],
    shape: ClipShape,
    options: ClipLabelOptions,
    sink: SinkOptions,
    cluster: ClusterOptions,
    so: dict[str, Any],
    done: Mapping[str, frozenset[str]],
) -> Iterator[dict[str, Any]]:
    import ray

    pool, resources = actor_pool(cluster)
    ds = ray.data.from_items([{"source": json.dumps(asdict(v))} for v in videos], override_num_blocks=len(videos))

    def read(batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for text in batch["source"]:
            fields = json.loads(str(text))
            source = Source(**{**fields, "frames": tuple(fields["frames"])})
            yield from read_video_clips(source, shape, options, sink.out, done, so)

    ds = ds.map_batches(read, batch_size=1, num_cpus=cluster.reader_cpus)
    ds = map_whole_blocks(
        ds, ClipLabeler, fn_constructor_kwargs={"options": options, "storage_options": so}, compute=pool, **resources
    )
    ds = ds.map_batches(
        write_batch,
        fn_kwargs={
            "options": clip_sink_of(sink),
            "storage_options": so,
            "write": write_clip_chunk,
            "keys": CLIP_SUMMARY_KEYS,
        },
        batch_size=None,
        num_cpus=cluster.writer_cpus,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["chunk"])):
            yield {k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()}
