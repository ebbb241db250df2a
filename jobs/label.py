"""``flowlabel label``: sources → Ray Data (read → label actors → write) → labeled Parquet/npz.

``run_label(LabelJob(...))`` is the Python API; the CLI only builds a ``LabelJob``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipeline.datasource import FramePairDatasource, ReadOptions
from pipeline.decode import DecodeOptions
from pipeline.labeler import Labeler, LabelerConfig
from pipeline.manifest import versions, write_manifest
from pipeline.plan import PlanOptions, plan_units
from pipeline.records import ERRORS_DIR, SKIPPED_DIR, UnitRecord, read_records, write_record
from pipeline.sinks import SinkOptions, write_batch
from pipeline.sources import list_sources
from pipeline.storage import redact

from .cluster import ClusterOptions, actor_pool, connect

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2


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

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("expected at least one input URI, got none")
        object.__setattr__(self, "storage_options", dict(self.storage_options))


@dataclass
class LabelResult:
    """What a run did. ``exit_code``: 0 all labeled, 2 some inputs failed."""

    sources: int
    units: int
    pairs: int
    chunks: int
    bytes_written: int
    seconds: float
    per_video: list[dict[str, Any]]
    errors: list[UnitRecord]
    skipped: list[UnitRecord]

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.errors else EXIT_OK

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else math.nan


def run_label(job: LabelJob) -> LabelResult:
    """Label every frame pair of ``job.inputs`` into ``job.sink.out``."""
    started = time.time()
    so = dict(job.storage_options)
    # Fail fast on a bad checkpoint or model name, before any data is read.
    checkpoint_sha256 = job.labeler.load("cpu", so).checkpoint_sha256
    sources, listing_errors = list_sources(job.inputs, so, job.corpus)
    units = plan_units(sources, job.read.decode, job.plan, so)
    manifest = _manifest(job, checkpoint_sha256, started)
    write_manifest(job.sink.out, {**manifest, "status": "running", "sources": len(sources), "units": len(units)}, so)
    for err in listing_errors:
        record = UnitRecord(err.uri, "", f"list-{_short_hash(err.uri)}", "list", err.error_type, err.message)
        write_record(job.sink.out, ERRORS_DIR, record, so)

    summaries = _execute(job, units) if units else []
    unit_ids = {s.video_id for s in sources} | {f"list-{_short_hash(e.uri)}" for e in listing_errors}
    errors = [r for r in read_records(job.sink.out, ERRORS_DIR, so) if r.video_id in unit_ids or r.unit in unit_ids]
    skipped = [r for r in read_records(job.sink.out, SKIPPED_DIR, so) if r.video_id in unit_ids]
    result = LabelResult(
        sources=len(sources), units=len(units), pairs=int(sum(s["pairs"] for s in summaries)),
        chunks=len(summaries), bytes_written=int(sum(s["bytes_written"] for s in summaries)),
        seconds=time.time() - started, per_video=_per_video(summaries), errors=errors, skipped=skipped)
    write_manifest(job.sink.out, {
        **manifest, "status": "finished", "finished_at": _now(), "seconds": round(result.seconds, 3),
        "counts": {"sources": result.sources, "units": result.units, "pairs": result.pairs,
                   "chunks": result.chunks, "bytes_written": result.bytes_written,
                   "errors": len(errors), "skipped": len(skipped)},
    }, so)
    return result


def _execute(job: LabelJob, units) -> list[dict[str, Any]]:
    import ray

    connect(job.cluster)
    so = dict(job.storage_options)
    source = FramePairDatasource(units, job.read, job.sink.out, so)
    pool, resources = actor_pool(job.cluster)
    # A read task holds a chunk of frames plus the decoder's buffers: telling Ray its memory
    # keeps many 4K decodes off one node, and the differing resources keep Ray from fusing the
    # read into the labeler actors, so decoding runs in CPU tasks beside them, not inside them.
    ds = ray.data.read_datasource(source, override_num_blocks=len(units), num_cpus=job.cluster.reader_cpus,
                                  memory=8 * job.read.chunk_bytes)
    # Ray Data restarts a killed labeler actor and redoes its batch (max_restarts=-1 by default).
    ds = ds.map_batches(Labeler, fn_constructor_kwargs={"config": job.labeler, "storage_options": so},
                        batch_size=None, compute=pool, **resources)
    ds = ds.map_batches(write_batch, fn_kwargs={"options": job.sink, "storage_options": so},
                        batch_size=None, num_cpus=job.cluster.writer_cpus)
    return [row for batch in ds.iter_batches(batch_size=None, batch_format="numpy")
            for row in _rows(batch)]


def _rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()} for i in range(n)]


def _per_video(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    videos: dict[str, dict[str, Any]] = {}
    for s in summaries:
        v = videos.setdefault(s["video_id"], {"video_id": s["video_id"], "source": s["source"], "corpus": s["corpus"],
                                              "pairs": 0, "pixels": 0, "flow_magnitude_sum": 0.0, "occluded_sum": 0})
        for key in ("pairs", "pixels", "flow_magnitude_sum", "occluded_sum"):
            v[key] += s[key]
    out = []
    for v in sorted(videos.values(), key=lambda v: v["source"]):
        pixels = max(v.pop("pixels"), 1)
        v["mean_flow_magnitude"] = v.pop("flow_magnitude_sum") / pixels
        v["occluded_fraction"] = v.pop("occluded_sum") / pixels
        out.append(v)
    return out


def _manifest(job: LabelJob, checkpoint_sha256: str, started: float) -> dict[str, Any]:
    labeler = asdict(job.labeler)
    return {
        "tool": "flowlabel", "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "inputs": list(job.inputs), "out": job.sink.out, "model": job.labeler.model,
        "checkpoint": job.labeler.checkpoint, "checkpoint_sha256": checkpoint_sha256,
        "options": {"labeler": labeler, "decode": asdict(job.read.decode), "read": asdict(job.read),
                    "plan": asdict(job.plan), "sink": asdict(job.sink), "corpus": job.corpus},
        "storage_options": redact(job.storage_options), "versions": versions(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


if __name__ == "__main__":  # python -m jobs.label SRC... --out DST (as on a Ray cluster's working dir)
    import sys

    from .cli import main

    sys.exit(main(["label", *sys.argv[1:]]))
