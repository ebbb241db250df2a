"""The command line's structure: cheap to start, one place for shared options, no import circle in jobs/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from jobs.cli import SUBCOMMANDS, build_parser
from jobs.options import labeler_config

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def test_help_lists_every_subcommand_without_importing_torch_ray_or_the_models():
    code = (
        "import sys\nfrom jobs.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'models', 'pipeline'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=JOBS.parent)
    assert done.returncode == 0, done.stderr
    help_text, loaded = done.stdout.rsplit("\n", 2)[0], done.stdout.rsplit("\n", 2)[1]
    assert loaded == "[]"
    assert all(name in help_text for name in SUBCOMMANDS)


def test_no_job_module_imports_the_cli():
    importers = []
    for path in sorted(JOBS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{'.' * node.level}{node.module or ''}"]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n in ("jobs.cli", ".cli") for n in names):
                importers.append(path.name)
    assert importers == []


def test_every_model_option_reaches_the_labeler_config_in_viz_pair_and_score():
    argv = [
        "--model",
        "raft_small",
        "--checkpoint",
        "w.pth",
        "--set",
        "iters=12",
        "--precision",
        "bf16",
        "--batch-size",
        "2",
    ]
    pair = build_parser(["viz"]).parse_args(
        ["viz", "pair", "sintel", "--root", "r", "--pair", "a/1", "--out", "o", *argv]
    )
    score = build_parser(["score"]).parse_args(["score", "sintel", "--root", "r", *argv])
    for args in (pair, score):
        config = labeler_config(args)
        assert (config.model, config.checkpoint, dict(config.overrides), config.precision, config.batch_size) == (
            "raft_small",
            "w.pth",
            {"iters": 12},
            "bf16",
            2,
        )
