"""raft_small through ``flowlabel score`` reproduces the official RAFT code's EPE on the shared excerpts
(../shared/data/README.md: raft-small.pth, CPU, 12 iterations, Sintel-mode padding)."""

from __future__ import annotations

import json

import pytest

from jobs.cli import main

from .conftest import BENCHMARKS, RAFT_SMALL

REFERENCE = {  # official code, per pair
    "sintel/training/clean/alley_1/1": 0.242,
    "sintel/training/clean/alley_1/2": 0.271,
    "sintel/training/clean/alley_1/3": 0.276,
    "middlebury/training/RubberWhale/10": 0.320,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["sintel", "--root", str(BENCHMARKS / "Sintel"), "--pass", "clean", "--pairs", "alley_1/*"],
        ["middlebury", "--root", str(BENCHMARKS / "middlebury"), "--pairs", "RubberWhale/*"],
    ],
    ids=["sintel-clean-alley_1", "middlebury-RubberWhale"],
)
@pytest.mark.usefixtures("shared_data")
def test_raft_small_reproduces_the_official_epe(ray_local, tmp_path, args):
    code = main(
        [
            "score",
            *args,
            "--model",
            "raft_small",
            "--checkpoint",
            str(RAFT_SMALL),
            "--set",
            "iters=12",
            "--set",
            "pad_mode=sintel",
            "--batch-size",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    (score,) = json.loads((tmp_path / "scores.json").read_text())["scores"]
    assert score["checkpoint_sha256"] == "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332"
    assert score["settings"]["model_config"]["iters"] == 12
    assert score["settings"]["model_config"]["pad_mode"] == "sintel"
    per_pair = {pair: row["epe"] for pair, row in score["per_pair"].items()}
    assert per_pair.keys() <= REFERENCE.keys() and per_pair
    for pair, epe in per_pair.items():
        assert abs(epe - REFERENCE[pair]) < 0.005, (pair, epe)  # two decimals, as the README asks
        assert abs(epe - REFERENCE[pair]) < 0.001, (pair, epe)  # in fact the printed three
