"""Command-line options shared by several subcommands, and what they build (a leaf: imports no other job).

Importing this module is cheap: the pipeline's config classes are imported by the functions that build them,
so that ``flowlabel --help`` does not load torch or Ray.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.label.labeler import LabelerConfig

    from .cluster import ClusterOptions

EXIT_FAILED = 1


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
    parser.add_argument(
        "--storage-options",
        type=_json_object,
        default={},
        help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:8333"}\'; '
        "by default credentials come from the AWS_* environment variables",
    )


def add_model_options(parser: argparse.ArgumentParser, default_model: str | None = "dis") -> None:
    """--model, --checkpoint, --set, --precision, --batch-size: what :func:`labeler_config` reads."""
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"registry name (default {default_model}; see `flowlabel models`), or an import path "
        "package.module:Name of a FlowModel subclass or factory (--set values are its arguments)",
    )
    parser.add_argument("--checkpoint", help="checkpoint path or URI (s3://, https://, …)")
    parser.add_argument("--checkpoint-sha256", help="expected sha256 of the checkpoint file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model config override, e.g. --set iters=12 (repeatable)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast dtype on GPU (CPU always runs fp32)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass (default 4)")
    parser.add_argument(
        "--confidence",
        choices=("consistency", "model"),
        default="consistency",
        help="the confidence column: forward-backward consistency (default), or the model's own "
        "uncertainty (models that predict one, e.g. searaft_*)",
    )


def labeler_config(args: argparse.Namespace) -> LabelerConfig:
    """The model options of :func:`add_model_options` as the config every labeling or scoring job takes."""
    from pipeline.label.labeler import LabelerConfig

    return LabelerConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        checkpoint_sha256=args.checkpoint_sha256,
        overrides=parse_overrides(args.overrides),
        batch_size=args.batch_size,
        precision=args.precision,
        confidence=getattr(args, "confidence", "consistency"),
    )


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="Ray address (auto, host:6379); default: $RAY_ADDRESS "
        "when set (ray job submit sets it), else a local Ray on 127.0.0.1",
    )
    parser.add_argument("--actors", type=int, help="max labeler actors (default: one per GPU)")
    parser.add_argument("--min-actors", type=int, default=1, help="labeler actors started up front (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per labeler actor, e.g. 0.5 (default 1 if any)")
    parser.add_argument(
        "--tasks-per-actor",
        type=int,
        default=3,
        help="chunks queued on each labeler actor (default 3: two labeled, one in transit)",
    )
    parser.add_argument(
        "--calls-per-actor",
        type=int,
        default=2,
        help="chunks each labeler actor labels at once (default 2: one's host work overlaps the other's device work)",
    )
    parser.add_argument(
        "--object-store-mb",
        type=float,
        help="cap on the object store memory the job's blocks use (default: Ray Data's share)",
    )
    parser.add_argument(
        "--runtime-env",
        metavar="JSON_OR_YAML",
        help="Ray runtime env for the job (file or inline JSON), e.g. py_modules or working_dir "
        "to ship a --model package.module:Name to the workers (also put on this sys.path)",
    )


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """The options of :func:`add_cluster_options` as :class:`jobs.cluster.ClusterOptions`."""
    from .cluster import ClusterOptions, local_code_paths, read_runtime_env

    object_store = None if args.object_store_mb is None else int(args.object_store_mb * 2**20)
    runtime_env = read_runtime_env(args.runtime_env) if args.runtime_env else None
    # The driver loads the model too (its start-up check): the code shipped to the workers must import here.
    sys.path[:0] = [p for p in local_code_paths(runtime_env) if p not in sys.path]
    return ClusterOptions(
        address=args.address,
        actors=args.actors,
        min_actors=args.min_actors,
        gpus_per_actor=args.gpus_per_actor,
        tasks_per_actor=args.tasks_per_actor,
        calls_per_actor=args.calls_per_actor,
        object_store_bytes=object_store,
        runtime_env=runtime_env,
    )


def run_command(args: argparse.Namespace, prog: str = "flowlabel") -> int:
    """Run the parsed subcommand (``args.func``); an error in the user's input is one line and exit code 1."""
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
