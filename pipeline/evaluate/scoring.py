"""Scoring a flow model on benchmark pairs: the per-pair work of ``flowlabel score``.

The stages mirror labeling: pair records (driver) → :func:`sample_to_row` (read tasks, one per
pair, through :func:`pipeline.evaluate.datasets.load_pair`) → :class:`Scorer` (actors; the model is
loaded once and run forward + backward by :func:`pipeline.label.labeler.label_pairs` in float32) →
per-pair :class:`~pipeline.evaluate.metrics.PairStats` back to the driver, which reduces them with
:class:`~pipeline.evaluate.metrics.ScoreAccumulator`. Every stage is a plain function first; the Ray
wrappers only move rows.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from models import Checkpoint, FlowModel
from pipeline.evaluate.datasets import PairRecord, Sample, list_pairs, load_pair
from pipeline.evaluate.flowio import encode_flo, encode_kitti_flow
from pipeline.evaluate.metrics import PairStats, ScoreAccumulator, pair_stats
from pipeline.label.consistency import ConsistencyParams
from pipeline.label.labeler import LabelerConfig, assigned_device, label_pairs


@dataclass(frozen=True)
class BenchmarkInfo:
    """How ``flowlabel score NAME`` reads a benchmark and which official settings apply to it.

    lister: key of :data:`pipeline.evaluate.datasets.BENCHMARKS`; config_keys: keys of a checkpoint's
    ``benchmark_config`` to look up, first match wins; passes: render passes ("" when the
    benchmark has none); default_split: the split with public ground truth that evaluations use;
    server_splits: splits without public ground truth, scored only by the benchmark's server.
    """

    name: str
    lister: str
    config_keys: tuple[str, ...]
    passes: tuple[str, ...]
    default_split: str
    title: str
    server_splits: tuple[str, ...] = ()


BENCHMARK_INFO: Mapping[str, BenchmarkInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            BenchmarkInfo("sintel", "sintel", ("sintel",), ("clean", "final"), "training", "MPI-Sintel", ("test",)),
            BenchmarkInfo("kitti", "kitti2015", ("kitti",), ("",), "training", "KITTI-2015", ("testing",)),
            # The official evaluations treat KITTI-2012 like 2015 (same padding); a record may still name it.
            BenchmarkInfo(
                "kitti2012", "kitti2012", ("kitti2012", "kitti"), ("",), "training", "KITTI-2012", ("testing",)
            ),
            # "val" is the official validation split (FlyingChairs_train_val.txt); "all" needs no split file.
            BenchmarkInfo("chairs", "flyingchairs", ("chairs",), ("",), "val", "FlyingChairs"),
            # RAFT's and GMFlow's validate_things read the full dataset's TEST split; the subset calls it "val".
            BenchmarkInfo("things", "flyingthings3d", ("things",), ("clean", "final"), "test", "FlyingThings3D"),
            BenchmarkInfo("middlebury", "middlebury", ("middlebury",), ("",), "training", "Middlebury", ("test",)),
            BenchmarkInfo("hd1k", "hd1k", ("hd1k",), ("",), "training", "HD1K"),
        )
    }
)


def benchmark_info(name: str) -> BenchmarkInfo:
    if name not in BENCHMARK_INFO:
        raise ValueError(f"benchmark: expected one of {sorted(BENCHMARK_INFO)}, got {name!r}")
    return BENCHMARK_INFO[name]


# ----------------------------------------------------------------------------- listing


def pair_key(record: PairRecord) -> str:
    """The pair's name inside its split and pass, e.g. ``alley_1/1``, ``000000/10`` or ``4`` (chairs)."""
    return "/".join(p for p in (record.sequence, str(record.frame)) if p)


def select_pairs(records: Sequence[PairRecord], patterns: Sequence[str]) -> list[PairRecord]:
    """Records whose :func:`pair_key` or full ``pair_id`` matches any fnmatch pattern (all without patterns)."""
    if not patterns:
        return list(records)
    return [
        r
        for r in records
        if any(fnmatch.fnmatchcase(pair_key(r), p) or fnmatch.fnmatchcase(r.pair_id, p) for p in patterns)
    ]


def list_benchmark(
    benchmark: str,
    root: str,
    *,
    split: str | None = None,
    passes: Sequence[str] = (),
    patterns: Sequence[str] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, list[PairRecord]]:
    """Pairs with ground truth per pass (key "" for benchmarks without passes), filtered by ``patterns``.

    ``passes`` empty means every pass of the benchmark. Raises ValueError when a pass has no pair
    left, so a typo in a pattern cannot produce an empty score.
    """
    info = benchmark_info(benchmark)
    split = split or info.default_split
    if passes and info.passes == ("",):
        raise ValueError(f"{benchmark} has no render passes; expected no --pass, got {list(passes)}")
    for name in passes:
        if name not in info.passes:
            raise ValueError(f"pass: expected one of {list(info.passes)} for {benchmark}, got {name!r}")
    out = {}
    for name in passes or info.passes:
        options: dict[str, Any] = {"split": split, "storage_options": storage_options}
        if name:
            options["pass_name"] = name
        records = select_pairs(list_pairs(info.lister, root, **options), patterns)
        if not records:
            where = f"{benchmark} {split}" + (f" {name}" if name else "")
            raise ValueError(
                f"no pair of {where} under {root} matches {list(patterns)}; "
                "expected patterns like 'alley_1/*' (sequence/frame) or a full pair id"
            )
        out[name] = records
    return out


# ----------------------------------------------------------------------------- settings


def benchmark_overrides(checkpoint: Checkpoint | None, benchmark: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's official settings for ``benchmark`` with the user's ``overrides`` on top."""
    official: Mapping[str, Any] = {}
    if checkpoint is not None:
        for key in benchmark_info(benchmark).config_keys:
            if key in checkpoint.benchmark_config:
                official = checkpoint.benchmark_config[key]
                break
    return {**official, **overrides}


# ----------------------------------------------------------------------------- rows between stages


def record_to_json(record: PairRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def record_from_json(text: str) -> PairRecord:
    return PairRecord(**json.loads(text))


def sample_to_row(sample: Sample) -> dict[str, Any]:
    """A loaded pair as one Ray row. A missing occlusion mask travels as all-False plus a flag,
    because a column must hold arrays in every row."""
    if sample.flow is None:
        raise ValueError(f"{sample.record.pair_id}: expected ground-truth flow to score against, got none")
    has_occlusion = sample.occlusion is not None
    return {
        "pair_id": sample.record.pair_id,
        "record": record_to_json(sample.record),
        "image0": sample.image0,
        "image1": sample.image1,
        "gt": sample.flow,
        "valid": sample.valid,
        "occlusion": sample.occlusion if has_occlusion else np.zeros(sample.valid.shape, bool),
        "has_occlusion": has_occlusion,
    }


def row_to_sample(row: Mapping[str, Any]) -> Sample:
    """The inverse of :func:`sample_to_row` (without Sintel's ``invalid`` mask, which scoring ignores)."""
    return Sample(
        record=record_from_json(str(row["record"])),
        image0=np.asarray(row["image0"]),
        image1=np.asarray(row["image1"]),
        flow=np.asarray(row["gt"]),
        valid=np.asarray(row["valid"], bool),
        occlusion=np.asarray(row["occlusion"], bool) if bool(row["has_occlusion"]) else None,
    )


def load_row(item: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read stage: ``{"record": json}`` → the pair's images and ground truth as a row."""
    return sample_to_row(load_pair(record_from_json(item["record"]), storage_options))


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True, eq=False)
class PairScore:
    """One scored pair: its record, statistics, and the predicted flow (H×W×2 float32 px) when kept."""

    record: PairRecord
    stats: PairStats
    flow: np.ndarray | None = None


def score_samples(
    model: FlowModel,
    samples: Sequence[Sample],
    *,
    batch_size: int = 1,
    params: ConsistencyParams = ConsistencyParams(),
    keep_flow: bool = False,
    confidence: str = "consistency",
) -> list[PairScore]:
    """Run ``model`` forward and backward on each pair (float32 throughout) and reduce it to PairStats.

    Consecutive pairs of one size share forward passes of up to ``batch_size`` pairs. The
    consistency check's occlusion is scored against the ground-truth mask where there is one,
    and the confidence (``confidence``: "consistency", or "model" for a model's own uncertainty)
    gives the sparsification curve (AUSE).
    """
    scores: list[PairScore] = []
    for group in _same_size_runs(samples):
        labels = label_pairs(
            model,
            np.stack([s.image0 for s in group]),
            np.stack([s.image1 for s in group]),
            batch_size,
            params,
            out_dtype=np.float32,
            confidence=confidence,
        )
        for i, sample in enumerate(group):
            flow = labels["flow"][i]
            stats = pair_stats(
                flow,
                sample.flow,
                sample.valid,
                occluded=sample.occlusion,
                predicted_occlusion=labels["occlusion"][i].astype(bool) if sample.occlusion is not None else None,
                confidence=labels["confidence"][i],
            )
            scores.append(PairScore(sample.record, stats, flow if keep_flow else None))
    return scores


def _same_size_runs(samples: Iterable[Sample]) -> Iterator[list[Sample]]:
    run: list[Sample] = []
    for sample in samples:
        if run and run[-1].image0.shape != sample.image0.shape:
            yield run
            run = []
        run.append(sample)
    if run:
        yield run


class Scorer:
    """Ray Data UDF (``map_batches(Scorer, fn_constructor_kwargs=…, compute=ActorPoolStrategy(…))``).

    Loads the model once per actor on its assigned device; yields one row per pair with the
    pair id, its record, its statistics as JSON, and its flow only when ``keep_flow``.
    """

    def __init__(
        self, config: LabelerConfig, keep_flow: bool = False, storage_options: Mapping[str, Any] | None = None
    ):
        self.config = config
        self.keep_flow = keep_flow
        self.model = config.load(assigned_device(), storage_options)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        n = len(batch["pair_id"])
        samples = [row_to_sample({k: v[i] for k, v in batch.items()}) for i in range(n)]
        for score in score_samples(
            self.model,
            samples,
            batch_size=self.config.batch_size,
            params=self.config.consistency,
            keep_flow=self.keep_flow,
            confidence=self.config.confidence,
        ):
            row = {
                "pair_id": np.array([score.record.pair_id], object),
                "record": np.array([record_to_json(score.record)], object),
                "stats": np.array([json.dumps(score.stats.to_dict())], object),
            }
            if self.keep_flow:
                row["flow"] = score.flow[None]
            yield row


# ----------------------------------------------------------------------------- results


def summarize(accumulator: ScoreAccumulator) -> dict[str, Any]:
    """Split-level scores under their report names, then every other aggregate and the per-pair values.

    epe: pixel-weighted (Sintel server, KITTI devkit); epe_image_mean: mean of per-pair EPEs
    (RAFT's validate_kitti); fl_all: % of valid pixels with EPE > 3 px and > 5 % of |gt|;
    px1 / px3 / px5: % of valid pixels with EPE below 1 / 3 / 5 px.
    """
    summary = accumulator.summary()
    renamed = {
        "pairs": "num_pairs",
        "fl_all_pct": "fl_all",
        "acc1px_pct": "px1",
        "acc3px_pct": "px3",
        "acc5px_pct": "px5",
    }
    out = {renamed.get(k, k): v for k, v in summary.items()}
    out["per_pair"] = accumulator.per_pair()
    return out


def submission_path(record: PairRecord) -> str:
    """Where a predicted flow goes in the benchmark's own submission layout (relative path).

    Sintel: ``<pass>/<scene>/frame_NNNN.flo`` (the layout the Sintel bundler reads); KITTI:
    ``NNNNNN_10.png`` (16-bit PNG, the devkit's ``flow/`` folder); others ``.flo`` beside names
    taken from the dataset.
    """
    b, seq, n = record.benchmark, record.sequence, record.frame
    if b == "sintel":
        return f"{record.pass_name}/{seq}/frame_{n:04d}.flo"
    if b in ("kitti2015", "kitti2012"):
        return f"{seq}_{n:02d}.png"
    if b == "flyingchairs":
        return f"{n:05d}_flow.flo"
    if b == "middlebury":
        return f"{seq}/flow{n:02d}.flo"
    if b == "hd1k":
        return f"{seq}_{n:04d}.flo"
    if b == "flyingthings3d":
        # Full dataset: sequences "A/0000" with 4-digit frames; the subset: no sequence, 7 digits.
        into = "into_future" if record.direction == "forward" else "into_past"
        name = f"{n:04d}.flo" if seq else f"{n:07d}.flo"
        return "/".join(p for p in (record.pass_name, seq, into, name) if p)
    raise ValueError(f"submission_path: expected a known benchmark, got {b!r}")


def encode_submission(record: PairRecord, flow: np.ndarray) -> bytes:
    """Predicted H×W×2 flow in the format :func:`submission_path` names (every pixel valid)."""
    valid = np.ones(flow.shape[:2], bool)
    if submission_path(record).endswith(".png"):
        return encode_kitti_flow(flow, valid)
    return encode_flo(flow, valid)
