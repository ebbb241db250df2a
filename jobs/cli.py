"""``flowlabel``: the command line. Each subcommand only parses options into a job and runs it."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import bench, score, scores, viz
from .cluster import ClusterOptions, local_code_paths, read_runtime_env
from .stats import format_stats

EXIT_FAILED = 1

# Other jobs add their subcommands here: each entry is register(subparsers), which adds a
# parser and sets ``func`` (args → exit code) as its default.
SUBCOMMANDS: tuple = (score.register, scores.register, viz.register, bench.register)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["iters=12", "corr=on_demand"]`` → ``{"iters": 12, "corr": "on_demand"}`` (values as Python literals)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise argparse.ArgumentTypeError(f"--set: expected NAME=VALUE, got {item!r}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", type=_json_object, default={},
                        help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:8333"}\'; '
                             "by default credentials come from the AWS_* environment variables")


def add_model_options(parser: argparse.ArgumentParser, default_model: str = "dis") -> None:
    parser.add_argument("--model", default=default_model,
                        help=f"registry name (default {default_model}; see `flowlabel models`), or an import path "
                             "package.module:Name of a FlowModel subclass or factory (--set values are its arguments)")
    parser.add_argument("--checkpoint", help="checkpoint path or URI (s3://, https://, …)")
    parser.add_argument("--checkpoint-sha256", help="expected sha256 of the checkpoint file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="model config override, e.g. --set iters=12 (repeatable)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast dtype on GPU (CPU always runs fp32)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass (default 4)")


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray address (auto, host:6379); default: $RAY_ADDRESS "
                                          "when set (ray job submit sets it), else a local Ray on 127.0.0.1")
    parser.add_argument("--actors", type=int, help="max labeler actors (default: one per GPU)")
    parser.add_argument("--min-actors", type=int, default=1, help="labeler actors started up front (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per labeler actor, e.g. 0.5 (default 1 if any)")
    parser.add_argument("--tasks-per-actor", type=int, default=2,
                        help="chunks queued on each labeler actor (default 2: one running, one in transit)")
    parser.add_argument("--object-store-mb", type=float,
                        help="cap on the object store memory the job's blocks use (default: Ray Data's share)")
    parser.add_argument("--runtime-env", metavar="JSON_OR_YAML",
                        help="Ray runtime env for the job (file or inline JSON), e.g. py_modules or working_dir "
                             "to ship a --model package.module:Name to the workers (also put on this sys.path)")


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    object_store = None if args.object_store_mb is None else int(args.object_store_mb * 2**20)
    runtime_env = read_runtime_env(args.runtime_env) if args.runtime_env else None
    # The driver loads the model too (its start-up check): the code shipped to the workers must import here.
    sys.path[:0] = [p for p in local_code_paths(runtime_env) if p not in sys.path]
    return ClusterOptions(address=args.address, actors=args.actors, min_actors=args.min_actors,
                          gpus_per_actor=args.gpus_per_actor, tasks_per_actor=args.tasks_per_actor,
                          object_store_bytes=object_store, runtime_env=runtime_env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowlabel", description="Optical-flow labeling of video at scale on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    label = sub.add_parser("label", help="label every frame pair of videos / image sequences")
    label.add_argument("inputs", nargs="+", metavar="SRC", help="video files, folders, globs or image-sequence folders")
    label.add_argument("--out", required=True, help="output URI (local path, s3://bucket/prefix, …)")
    add_model_options(label)
    label.add_argument("--stride", type=int, default=1, help="pair frame k with k+stride (default 1)")
    label.add_argument("--fps", type=float, help="resample videos to this frame rate first")
    label.add_argument("--max-side", type=int, help="downscale so that max(H, W) ≤ this (flow in resized pixels)")
    label.add_argument("--max-pairs-per-video", type=int, help="label at most this many pairs per video")
    label.add_argument("--max-pixels", type=int, help="frames above this many pixels are downscaled or rejected")
    label.add_argument("--oversize", choices=("downscale", "reject"), default="downscale",
                       help="what --max-pixels does with a larger frame (default downscale)")
    label.add_argument("--chunk-mb", type=float, default=48.0,
                       help="frame megabytes per chunk of pairs: the unit of labeling and of output files")
    label.add_argument("--format", choices=("parquet", "npz", "both"), default="parquet")
    label.add_argument("--flow-encoding", choices=("int16", "float16"), default="int16",
                       help="int16: flow in 1/64 px steps (KITTI precision) and confidence in 1/255, about "
                            "half the bytes (default); float16: as the model's float16 output")
    label.add_argument("--partition", default="corpus,video",
                       help="hive partition keys, comma-separated, from {corpus, video}; 'none' for flat")
    label.add_argument("--corpus", help="corpus name (default: last path element of each input's root)")
    label.add_argument("--segment-frames", type=int, default=1800,
                       help="split videos larger than --split-mb into read tasks of about this many frames")
    label.add_argument("--split-mb", type=float, default=256.0, help="videos above this size are split (default 256)")
    label.add_argument("--frame-labels", metavar="NAME", choices=("perceiver_image_classifier",),
                       help="add the top-k image classes of frame0 to each pair row: perceiver_image_classifier")
    label.add_argument("--frame-labels-checkpoint", metavar="URI", help="its HuggingFace model directory")
    label.add_argument("--frame-labels-top-k", type=int, default=5, help="classes per frame (default 5)")
    label.add_argument("--frame-labels-every", type=int, default=1, metavar="N",
                       help="classify frame0 of every N-th pair of a video; the others get nulls (default 1)")
    label.add_argument("--clip-labels", metavar="NAME", choices=("perceiver_multimodal",),
                       help="write a clip table to <out>/_clips/ (Kinetics-700 classes and reconstruction errors "
                            "of 16-frame clips with audio): perceiver_multimodal")
    label.add_argument("--clip-labels-checkpoint", metavar="URI", help="its HuggingFace model directory")
    label.add_argument("--clip-labels-top-k", type=int, default=5, help="classes per clip (default 5)")
    add_storage_options(label)
    add_cluster_options(label)
    label.set_defaults(func=cmd_label)

    models = sub.add_parser("models", help="list the models (built-in and installed plugins), where each comes "
                                           "from, and their checkpoints")
    models.add_argument("names", nargs="*", metavar="NAME",
                        help="show only these: registry names or import paths package.module:Name")
    models.set_defaults(func=cmd_models)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def cmd_label(args: argparse.Namespace) -> int:
    from pipeline.clips import ClipLabelOptions
    from pipeline.datasource import ReadOptions
    from pipeline.decode import DecodeOptions
    from pipeline.frame_labels import FrameLabelOptions
    from pipeline.labeler import LabelerConfig
    from pipeline.plan import PlanOptions
    from pipeline.sinks import SinkOptions

    from .label import LabelJob, run_label

    formats = ("parquet", "npz") if args.format == "both" else (args.format,)
    partition = () if args.partition == "none" else tuple(p.strip() for p in args.partition.split(",") if p.strip())
    job = LabelJob(
        inputs=tuple(args.inputs),
        sink=SinkOptions(args.out, formats=formats, partition=partition, flow_encoding=args.flow_encoding),
        labeler=LabelerConfig(model=args.model, checkpoint=args.checkpoint, checkpoint_sha256=args.checkpoint_sha256,
                              overrides=parse_overrides(args.overrides), batch_size=args.batch_size,
                              precision=args.precision),
        read=ReadOptions(decode=DecodeOptions(stride=args.stride, fps=args.fps, max_side=args.max_side,
                                              max_pairs=args.max_pairs_per_video, max_pixels=args.max_pixels,
                                              oversize=args.oversize),
                         chunk_bytes=int(args.chunk_mb * 2**20)),
        plan=PlanOptions(segment_frames=args.segment_frames, split_bytes=int(args.split_mb * 2**20)),
        cluster=cluster_options(args),
        corpus=args.corpus,
        storage_options=args.storage_options,
        frame_labels=FrameLabelOptions(args.frame_labels, args.frame_labels_checkpoint or "",
                                       top_k=args.frame_labels_top_k, every=args.frame_labels_every)
        if args.frame_labels else None,
        clip_labels=ClipLabelOptions(args.clip_labels, args.clip_labels_checkpoint or "", top_k=args.clip_labels_top_k)
        if args.clip_labels else None,
    )
    result = run_label(job)
    print(format_label_summary(result))
    return result.exit_code


def format_label_summary(result) -> str:
    lines = [f"labeled {result.pairs} pairs from {result.sources} sources in {result.seconds:.1f} s "
             f"({result.pairs_per_second:.2f} pairs/s), {result.chunks} files, {result.bytes_written / 2**20:.1f} MiB"]
    if result.per_video:
        lines.append(f"{'pairs':>7}  {'mean |flow| px':>14}  {'occluded':>8}  source")
        for v in result.per_video:
            lines.append(f"{v['pairs']:>7}  {v['mean_flow_magnitude']:>14.3f}  {v['occluded_fraction']:>7.1%}  {v['source']}")
    if result.clips:
        lines.append(f"labeled {result.clips} clips (<out>/_clips/)")
    for r in result.skipped:
        lines.append(f"skipped  {r.source}: {r.message}")
    for r in result.errors:
        lines.append(f"FAILED   {r.source} [{r.stage}] {r.error_type}: {r.message}")
    lines += format_stats(result.stats)
    if result.errors:
        lines.append(f"{len(result.errors)} input(s) failed; details in <out>/_errors/ (exit code 2)")
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from models import MODELS

    for name in getattr(args, "names", None) or sorted(MODELS):
        spec = MODELS[name]
        print(f"{name:<22} [{MODELS.origin(name)}] {spec.description}")
        for ckpt in spec.checkpoints:
            print(f"{'':<24}{ckpt.filename}  ({ckpt.trained_on or 'unknown data'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as exc:
        print(f"flowlabel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
