"""``flowlabel``: the command line. Builds the parser and dispatches; each job module owns its subcommand.

A job module has ``register(subparsers, help)``, which adds its parser and sets ``func`` (args → exit code).
Only the module of the subcommand being run is imported: the others are listed from :data:`SUBCOMMANDS`
without loading them, so ``flowlabel --help`` does not import torch, Ray or the models.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .options import run_command

# name → (module that registers it, or None for this one; one-line help). Other jobs add their subcommands here.
SUBCOMMANDS: dict[str, tuple[str | None, str]] = {
    "label": ("jobs.label", "label every frame pair of videos / image sequences"),
    "models": (None, "list the models (built-in and installed plugins), where each comes from, their checkpoints"),
    "score": ("jobs.score_model", "score a model on a benchmark's pairs with ground truth"),
    "scores": ("jobs.score_table", "regenerate SCORES.md from jobs/scores.yaml"),
    "viz": ("jobs.visualize", "pictures (PNG, MP4) of labels, benchmark pairs and flow files"),
    "bench": ("jobs.bench", "speed and storage benchmarks → BENCHMARKS.json, BENCHMARKS.md"),
}


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel models``."""
    models = subparsers.add_parser("models", help=help)
    models.add_argument(
        "names", nargs="*", metavar="NAME", help="show only these: registry names or import paths package.module:Name"
    )
    models.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from models import MODELS

    for name in getattr(args, "names", None) or sorted(MODELS):
        spec = MODELS[name]
        print(f"{name:<22} [{MODELS.origin(name)}] {spec.description}")
        for ckpt in spec.checkpoints:
            print(f"{'':<24}{ckpt.filename}  ({ckpt.trained_on or 'unknown data'})")
    return 0


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand's options, or only those of ``commands`` (the rest listed by name)."""
    parser = argparse.ArgumentParser(prog="flowlabel", description="Optical-flow labeling of video at scale on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help) in SUBCOMMANDS.items():
        if commands is None or name in commands:
            # Not `import jobs.cli` for this module's own commands: run as `python -m jobs.cli` it is __main__.
            (importlib.import_module(module) if module else sys.modules[__name__]).register(sub, help)
        else:
            sub.add_parser(name, help=help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The subcommand is the first word that is not an option (the top level has only -h).
    command = next((a for a in argv if not a.startswith("-")), None)
    return run_command(build_parser([command] if command else []).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
