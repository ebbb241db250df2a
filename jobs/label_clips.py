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

from pipeline.label.clip_labels import (ClipLabeler, ClipLabelOptions, ClipShape, committed_clip_chunks, iter_clip_chunks,
                            write_clip_batch)
from pipeline.write.records import (ERRORS_DIR, SKIPPED_DIR, UnitRecord, clear_records, read_records, record_exception,
                              write_record)
from pipeline.write.sinks import SinkOptions
from pipeline.read.sources import Source

from .cluster import ClusterOptions, actor_pool, connect


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


def run_clip_labels(sources: list[Source], options: ClipLabelOptions, sink: SinkOptions,
                    cluster: ClusterOptions = ClusterOptions(),
                    storage_options: Mapping[str, Any] | None = None) -> ClipResult:
    """Label the clips of every video in ``sources`` into ``<sink.out>/_clips/``.

    Image sequences are skipped with a record (no audio, no timestamps to take 25 frames/s from).
    A video that fails is recorded under ``_errors`` and does not stop the others.
    """
    so = dict(storage_options or {})
    # Fail fast on a bad checkpoint; the clip shape (frames, size, rates) comes from the model's config.
    classifier, checkpoint_sha256 = options.load("cpu", so)
    shape = ClipShape.of(classifier)
    del classifier
    units = {clip_unit(s) for s in sources}
    clear_records(sink.out, sorted(units), so)
    for source in sources:
        if source.kind != "video":
            write_record(sink.out, SKIPPED_DIR, UnitRecord(
                source.uri, source.video_id, clip_unit(source), "clips", "NotAVideo",
                "clip labels need a video (frame times and an audio track); image sequences have neither"), so)
    videos = [s for s in sources if s.kind == "video"]
    done = committed_clip_chunks(sink, so)
    summaries = {}
    for summary in (_execute(videos, shape, options, sink, cluster, so, done) if videos else []):
        summaries[summary["video_id"], summary["chunk"]] = summary  # a retried task rewrites the same file
    return ClipResult(
        clips=sum(s["clips"] for s in summaries.values()), chunks=len(summaries),
        bytes_written=sum(s["bytes_written"] for s in summaries.values()), checkpoint_sha256=checkpoint_sha256,
        errors=[r for r in read_records(sink.out, ERRORS_DIR, so) if r.unit in units],
        skipped=[r for r in read_records(sink.out, SKIPPED_DIR, so) if r.unit in units])


def read_video_clips(source: Source, shape: ClipShape, options: ClipLabelOptions, out: str,
                     done: Mapping[str, frozenset[str]], storage_options: Mapping[str, Any]
                     ) -> Iterator[dict[str, np.ndarray]]:
    """Read task: one video's clip chunks; a failure becomes an ``_errors`` record, never an exception."""
    try:
        yield from iter_clip_chunks(source, shape, options, done.get(source.video_id, frozenset()), storage_options)
    except Exception as exc:  # bad input must not stop the job: record it against the video
        write_record(out, ERRORS_DIR, record_exception(source.uri, source.video_id, clip_unit(source), "clips", exc,
                                                       storage_options), storage_options)


def _execute(videos: list[Source], shape: ClipShape, options: ClipLabelOptions, sink: SinkOptions,
             cluster: ClusterOptions, so: dict[str, Any], done: Mapping[str, frozenset[str]]
             ) -> Iterator[dict[str, Any]]:
    import ray

    connect(cluster)
    pool, resources = actor_pool(cluster)
    ds = ray.data.from_items([{"source": json.dumps(asdict(v))} for v in videos], override_num_blocks=len(videos))

    def read(batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for text in batch["source"]:
            fields = json.loads(str(text))
            source = Source(**{**fields, "frames": tuple(fields["frames"])})
            yield from read_video_clips(source, shape, options, sink.out, done, so)

    ds = ds.map_batches(read, batch_size=1, num_cpus=cluster.reader_cpus)
    # Whole blocks (batch_size=None): a chunk of clips is one output file and must not be cut.
    # map_batches refuses batch_size=None with GPUs; map_batches_internal is the same call without
    # that check (the label job's labeler stage does the same).
    ds = ds.map_batches_internal(ClipLabeler, fn_constructor_kwargs={"options": options, "storage_options": so},
                                 batch_size=None, compute=pool, **resources)
    ds = ds.map_batches(write_clip_batch, fn_kwargs={"sink": sink, "storage_options": so}, batch_size=None,
                        num_cpus=cluster.writer_cpus)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["chunk"])):
            yield {k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()}
