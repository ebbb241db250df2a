"""``flowlabel score``: a model on a benchmark's pairs → ``scores.json`` + ``scores.md`` (+ submission flows).

Ray Data, as labeling: pair records → read tasks (images and ground truth, CPU) → scorer actors
(the model loaded once; forward + backward flow in float32, occlusion and confidence, per-pair
statistics) → the driver reduces the statistics per pass. Only statistics travel back, and the
flow when ``save_flow`` is set. ``run_score(ScoreJob(...))`` is the Python API; the CLI only
builds a ``ScoreJob``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from models import get_spec
from pipeline.evaluate.datasets import PairRecord
from pipeline.evaluate.metrics import PairStats, ScoreAccumulator
from pipeline.evaluate.scoring import (
    BENCHMARK_INFO,
    Scorer,
    benchmark_info,
    benchmark_overrides,
    encode_submission,
    list_benchmark,
    load_row,
    record_from_json,
    record_to_json,
    submission_path,
    summarize,
)
from pipeline.label.labeler import LabelerConfig
from pipeline.storage import filesystem, join, scrub, write_atomic
from pipeline.write.run_manifest import versions

from .cluster import ClusterOptions, actor_pool, connect
from .options import add_cluster_options, add_model_options, add_storage_options, cluster_options, labeler_config

EXIT_OK, EXIT_FAILED = 0, 1
SCORES_JSON = "scores.json"
SCORES_MD = "scores.md"
FLOW_DIR = "flow"
# Two 8-bit frames and float32 flow of a 2560×1080 HD1K pair take 40 MiB; the rest is decode headroom.
READ_MEMORY_BYTES = 64 * 2**20
UNITS = {
    "epe": "px",
    "epe_image_mean": "px",
    "fl_all": "% of valid pixels",
    "px1": "% of valid pixels",
    "px3": "% of valid pixels",
    "px5": "% of valid pixels",
}


@dataclass(frozen=True)
class ScoreJob:
    """One scoring run; see ``flowlabel score --help``.

    passes: render passes to score (empty: every pass, e.g. Sintel clean and final);
    pairs: fnmatch patterns on ``sequence/frame`` or the pair id (empty: every pair with ground truth);
    out: where scores.json, scores.md and (with ``save_flow``) ``flow/`` go; None writes nothing.
    """

    benchmark: str
    root: str
    labeler: LabelerConfig = LabelerConfig()
    split: str | None = None
    passes: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    out: str | None = None
    save_flow: bool = False
    cluster: ClusterOptions = ClusterOptions()
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        benchmark_info(self.benchmark)
        if self.save_flow and not self.out:
            raise ValueError("save_flow: expected an output location (--out) for the flow files, got none")
        object.__setattr__(self, "storage_options", dict(self.storage_options))


@dataclass
class ScoreResult:
    """``scores``: one object per benchmark pass (the entries of scores.json); ``pairs``: pass →
    (record, statistics) of every scored pair, sorted by pair id, to aggregate subsets later."""

    scores: list[dict[str, Any]]
    seconds: float
    flows_written: int = 0
    pairs: dict[str, list[tuple[PairRecord, PairStats]]] = field(default_factory=dict)

    def by_pass(self, pass_name: str = "") -> dict[str, Any]:
        for score in self.scores:
            if score["pass"] == pass_name:
                return score
        raise KeyError(f"no score for pass {pass_name!r}; expected one of {[s['pass'] for s in self.scores]}")


def resolve_settings(job: ScoreJob) -> tuple[LabelerConfig, dict[str, Any]]:
    """The labeler config with the checkpoint's official settings for this benchmark under the user's
    overrides, and the record of where each setting came from."""
    spec = get_spec(job.labeler.model)
    checkpoint = (
        spec.find_checkpoint(job.labeler.checkpoint, job.labeler.checkpoint_sha256) if job.labeler.checkpoint else None
    )
    overrides = benchmark_overrides(checkpoint, job.benchmark, job.labeler.overrides)
    official = {k: v for k, v in overrides.items() if k not in job.labeler.overrides}
    settings = {
        "default_config": dict(spec.default_config),
        "checkpoint_record": checkpoint.name if checkpoint else None,
        "eval_config": dict(checkpoint.eval_config) if checkpoint else {},
        "benchmark_config": official,
        "overrides": dict(job.labeler.overrides),
        "batch_size": job.labeler.batch_size,
        "precision": job.labeler.precision,
        "consistency": asdict(job.labeler.consistency),
        "confidence": job.labeler.confidence,
        "flow_dtype": "float32",
    }
    return replace(job.labeler, overrides=overrides), settings


def run_score(job: ScoreJob) -> ScoreResult:
    """Score ``job.labeler``'s model on every selected pair of ``job.benchmark`` under ``job.root``."""
    started = time.time()
    so = dict(job.storage_options)
    info = benchmark_info(job.benchmark)
    split = job.split or info.default_split
    labeler, settings = resolve_settings(job)
    # Fail fast on a bad model, checkpoint or setting before any data is read; also gives the
    # checkpoint's digest and the complete config the actors will run with.
    model = labeler.load("cpu", so)
    settings["model_config"] = dict(model.config)
    checkpoint_sha256 = model.checkpoint_sha256
    del model
    by_pass = list_benchmark(
        job.benchmark, job.root, split=split, passes=job.passes, patterns=job.pairs, storage_options=so
    )
    records = [r for rs in by_pass.values() for r in rs]

    write_flow = _flow_writer(job.out, so) if job.save_flow else None
    collected: dict[str, list[tuple[PairRecord, PairStats]]] = {name: [] for name in by_pass}
    flows_written = 0
    for record, stats, flow in _execute(job, labeler, records):
        collected[record.pass_name].append((record, stats))
        if write_flow is not None:
            write_flow(record, flow)
            flows_written += 1

    common = {
        "benchmark": job.benchmark,
        "title": info.title,
        "split": split,
        "root": job.root,
        "model": labeler.model,
        "checkpoint": labeler.checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "pairs_selected": list(job.pairs),
        "settings": settings,
        "versions": versions(),
        "units": UNITS,
    }
    scores = []
    for pass_name, items in collected.items():
        items.sort(key=lambda item: item[0].pair_id)  # a fixed order: identical sums whatever order Ray used
        accumulator = ScoreAccumulator()
        accumulator.extend((record.pair_id, stats) for record, stats in items)
        if len(accumulator.pairs) != len(by_pass[pass_name]):
            raise RuntimeError(
                f"expected {len(by_pass[pass_name])} scored pairs for pass {pass_name!r}, got {len(accumulator.pairs)}"
            )
        scores.append({**common, "pass": pass_name, **summarize(accumulator)})
    result = ScoreResult(scores, time.time() - started, flows_written, collected)
    if job.out:
        write_outputs(result, job.out, so)
    return result


def _execute(
    job: ScoreJob, labeler: LabelerConfig, records: Sequence[PairRecord]
) -> Iterator[tuple[PairRecord, PairStats, Any]]:
    import ray

    connect(job.cluster)
    so = dict(job.storage_options)
    pool, resources = actor_pool(job.cluster)
    items = [{"record": record_to_json(r)} for r in records]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # A read task holds one pair's frames and ground truth: telling Ray its memory keeps many
    # large reads off one node, and the differing resources keep Ray from fusing the read into
    # the scorer actors, so loading runs in CPU tasks beside them (as in the label job).
    ds = ds.map(load_row, fn_kwargs={"storage_options": so}, num_cpus=job.cluster.reader_cpus, memory=READ_MEMORY_BYTES)
    # Ray's actor pools restart a killed actor and redo its batch by default (max_restarts=-1).
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"config": labeler, "keep_flow": job.save_flow, "storage_options": so},
        batch_size=labeler.batch_size,
        compute=pool,
        **resources,
    )
    for row in ds.iter_rows():
        stats = PairStats.from_dict(json.loads(row["stats"]))
        yield record_from_json(row["record"]), stats, row.get("flow")


def _flow_writer(out: str, storage_options: Mapping[str, Any]) -> Callable[[PairRecord, Any], None]:
    fs, root = filesystem(out, storage_options)

    def write(record: PairRecord, flow) -> None:
        write_atomic(fs, join(root, FLOW_DIR, submission_path(record)), encode_submission(record, flow))

    return write


def write_outputs(result: ScoreResult, out: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """``out/scores.json`` and ``out/scores.md``, each replaced atomically."""
    fs, root = filesystem(out, storage_options)
    document = {
        "tool": "flowlabel score",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(result.seconds, 3),
        "scores": result.scores,
    }
    write_atomic(fs, join(root, SCORES_JSON), json.dumps(_json_safe(document), indent=2, sort_keys=True).encode())
    write_atomic(fs, join(root, SCORES_MD), score_table(result.scores).encode())


def _json_safe(value: Any) -> Any:
    """NaN/inf (no pixels of a kind, e.g. no occlusion ground truth) → null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: fixed decimals, '–' when missing or undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def score_table(scores: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one line per pass with the split-level scores, then the per-pair EPE and Fl-all."""
    if not scores:
        return "no scores\n"
    first = scores[0]
    sha = first["checkpoint_sha256"]
    lines = [
        f"# {first['model']} on {first['title']} ({first['split']})",
        "",
        f"checkpoint: {first['checkpoint'] or '(none)'}" + (f", sha256 `{sha}`" if sha else ""),
        "",
        "settings: " + ", ".join(f"{k}={v}" for k, v in sorted(first["settings"]["model_config"].items())),
        "",
        "| pass | pairs | EPE | EPE (image mean) | Fl-all % | <1 px % | <3 px % | <5 px % | EPE occ | EPE noc "
        "| occ. F1 | AUSE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s['pass'] or '–'} | {s['num_pairs']} | {fmt(s['epe'])} | {fmt(s['epe_image_mean'])} "
            f"| {fmt(s['fl_all'], 2)} | {fmt(s['px1'], 2)} | {fmt(s['px3'], 2)} | {fmt(s['px5'], 2)} "
            f"| {fmt(s.get('epe_occ'))} | {fmt(s.get('epe_noc'))} | {fmt(s.get('occ_f1'))} | {fmt(s.get('ause'))} |"
        )
    lines += [
        "",
        "EPE: pixel-weighted over the valid pixels of all pairs (Sintel server, KITTI devkit); "
        "EPE (image mean): mean of per-pair EPEs (RAFT's validate_kitti). Fl-all: % of valid pixels "
        "with EPE > 3 px and > 5 % of |gt|. Occlusion (F1) comes from the forward-backward check, "
        + (
            "confidence (AUSE) from the model's own uncertainty (--confidence model)."
            if first["settings"].get("confidence") == "model"
            else "and so does confidence (AUSE)."
        ),
        "",
        "| pair | EPE | Fl-all % |",
        "|---|---:|---:|",
    ]
    for s in scores:
        for pair_id, row in s["per_pair"].items():
            lines.append(f"| {pair_id} | {fmt(row['epe'])} | {fmt(row['fl_all_pct'], 2)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel score`` (called by jobs.cli)."""
    p = subparsers.add_parser(
        "score",
        help=help,
        description="Score a flow model on a benchmark in its official layout; writes "
        "scores.json and scores.md to --out, and prints the table.",
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARK_INFO), help="kitti is KITTI-2015")
    p.add_argument("--root", required=True, help="dataset root in its official layout (local path or URI)")
    p.add_argument("--split", help="default: the benchmark's evaluation split (training; chairs: val; things: test)")
    p.add_argument(
        "--pass", dest="pass_name", choices=("clean", "final"), help="Sintel / Things render pass (default: both)"
    )
    p.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="score only pairs matching this pattern on sequence/frame, e.g. 'alley_1/*' (repeatable)",
    )
    p.add_argument("--out", help="output folder or URI for scores.json, scores.md and flow/")
    p.add_argument(
        "--save-flow", action="store_true", help="write predictions to OUT/flow/ in the benchmark's submission format"
    )
    add_model_options(p)
    add_storage_options(p)
    add_cluster_options(p)
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    job = ScoreJob(
        benchmark=args.benchmark,
        root=args.root,
        split=args.split,
        passes=(args.pass_name,) if args.pass_name else (),
        pairs=tuple(args.pairs),
        labeler=labeler_config(args),
        out=args.out,
        save_flow=args.save_flow,
        cluster=cluster_options(args),
        storage_options=args.storage_options,
    )
    try:
        result = run_score(job)
    except Exception as exc:  # a failed score is a failed job: one line, exit code 1
        print(f"flowlabel score: error: {type(exc).__name__}: {scrub(str(exc), job.storage_options)}", file=sys.stderr)
        return EXIT_FAILED
    print(score_table(result.scores))
    if args.out:
        print(
            f"wrote {join(args.out, SCORES_JSON)}, {join(args.out, SCORES_MD)}"
            + (f" and {result.flows_written} flow files under {join(args.out, FLOW_DIR)}" if args.save_flow else "")
        )
    return EXIT_OK
