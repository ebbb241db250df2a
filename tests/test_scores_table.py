"""``flowlabel scores``: the versioned config, and SCORES.md regenerated from a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import main
from jobs.score_model import ScoreJob, run_score
from jobs.score_table import load_config, parse_config
from models import REGISTRY
from pipeline.label.labeler import LabelerConfig

from .conftest import BENCHMARKS, WEIGHTS

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "scores.yaml"

TINY = """
version: 1
benchmarks:
  chairs: {folder: FlyingChairs_release, full_pairs: {val: 640, all: 22872}}
  sintel: {folder: Sintel, full_pairs: {training: 1041}}
tables:
  - title: DIS on two chairs
    kind: measure
    metrics: [epe, fl_all, px3]
    defaults: {model: dis}
    rows:
      - {benchmark: chairs, split: all, pairs: ["0", "1"]}
  - title: Against references
    kind: compare
    rows:
      - {model: dis, benchmark: chairs, split: all, pairs: ["1"], metric: epe, reference: 1.0, tolerance: 5.0,
         source: a test reference}
      - {model: raft_large, checkpoint: raft-things.pth, benchmark: sintel, pass: clean, metric: epe,
         reference: 1.43, scope: full, source: RAFT paper Table 1}
      - {model: raft_small, checkpoint: raft-small.pth, benchmark: sintel, pass: final, metric: epe,
         reference: 3.35, scope: full, source: RAFT paper Table 1}
      - {model: raft_small, checkpoint: raft-small.pth, benchmark: sintel, split: test, pass: clean, metric: epe,
         reference: 2.5, scope: full, source: made up for the test}
"""


def table_line(text: str, *needles: str) -> str:
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, (needles, lines)
    return lines[0]


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_scores_regenerates_the_table_on_a_tiny_config(ray_local, tmp_path):
    config = tmp_path / "scores.yaml"
    config.write_text(TINY)
    output = tmp_path / "SCORES.md"
    code = main(
        [
            "scores",
            "--config",
            str(config),
            "--data-root",
            str(BENCHMARKS),
            "--weights-dir",
            str(WEIGHTS),
            "--output",
            str(output),
        ]
    )
    assert code == 0
    text = output.read_text()

    # Measured rows carry our numbers: the same as a direct run of the score job on those pairs.
    direct = run_score(
        ScoreJob(
            "chairs",
            str(BENCHMARKS / "FlyingChairs_release"),
            split="all",
            pairs=("0", "1"),
            labeler=LabelerConfig("dis", batch_size=1),
        )
    ).scores[0]
    dis = table_line(text, "| dis | FlyingChairs all, 0 1 |")
    assert f"| {direct['epe']:.3f} | {direct['fl_all']:.2f} | {direct['px3']:.2f} |" in dis
    assert "2 of 22872 (excerpt)" in dis
    one = table_line(text, "| dis | – | FlyingChairs all, 1 |")
    assert "| 1 |" in one and "reproduced (|Δ| ≤ 5)".replace("|", "\\|") in one

    # Missing weights: "not run", the reason, and the published number with its source; no number of ours.
    large = table_line(text, "| raft_large | raft-things.pth |")
    assert "| not run | 1.43 | – |" in large
    assert f"weights not available here (raft-things.pth not in {WEIGHTS})" in large
    assert "RAFT paper Table 1" in large
    # Weights present but only an excerpt of the split: not run against the full-split number.
    small = table_line(text, "| raft_small | raft-small.pth | MPI-Sintel training final |")
    assert "| not run | 3.35 |" in small
    assert "only an excerpt of the benchmark is available: 5 of 1041 pairs" in small
    test_split = table_line(text, "| raft_small | raft-small.pth | MPI-Sintel test clean |")
    assert "no public ground truth" in test_split and "| not run | 2.5 |" in test_split
    assert "2 of 5 rows were scored here" in text


def test_scores_config_lists_every_published_number_of_the_registry():
    config = load_config(str(CONFIG))
    rows = [row for table in config.tables for row in table.rows]
    listed = {(r.model, r.checkpoint, r.reference) for r in rows if r.scope == "full"}
    published = {
        (name, ckpt.filename, float(value))
        for name, spec in REGISTRY.items()
        for ckpt in spec.checkpoints
        for value in ckpt.published.values()
    }
    assert published - listed == set(), "registry numbers missing from jobs/scores.yaml"
    assert listed - published == set(), "jobs/scores.yaml numbers not in the registry"
    assert all(r.source for r in rows if r.reference is not None)
    # The raft_small rows reproduce the official code on the excerpts with its settings (README).
    raft = [r for r in rows if r.model == "raft_small" and r.scope == "pairs"]
    assert {r.benchmark for r in raft} == {"sintel", "middlebury", "kitti", "chairs"}
    assert all(r.settings == {"iters": 12, "pad_mode": "sintel"} and r.tolerance for r in raft)
    dis = [r for r in rows if r.model == "dis"]
    assert {(r.benchmark, r.pass_name) for r in dis} == {
        ("sintel", "clean"),
        ("sintel", "final"),
        ("kitti", ""),
        ("middlebury", ""),
        ("chairs", ""),
    }


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("version: 1", "version: 2", "version: 1"),
        ("defaults: {model: dis}", "defaults: {model: dys}", "expected a registered model, got 'dys'"),
        ("metric: epe, reference: 1.0", "metric: EPE, reference: 1.0", "metric: expected one of"),
        ("reference: 1.43, scope: full", "reference: 1.43, scope: all", "scope: expected one of"),
        ("checkpoint: raft-things.pth, ", "", "raft_large needs checkpoint"),
        ("split: test, pass: clean", "split: test, pass: clear", "expected pass among"),
    ],
)
def test_scores_config_errors_name_the_bad_entry(old, new, message):
    import yaml

    assert old in TINY
    with pytest.raises(ValueError, match=message):
        parse_config(yaml.safe_load(TINY.replace(old, new, 1)))
