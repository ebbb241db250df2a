"""``flowlabel score`` end to end on local Ray: DIS on every shared excerpt, checked against a direct
computation without Ray; scores.json / scores.md / submission flows; exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs.cli import main
from jobs.score_model import ScoreJob, run_score
from models import load_model
from pipeline.evaluate import flowio
from pipeline.evaluate.datasets import load_pair
from pipeline.evaluate.scoring import list_benchmark, submission_path
from pipeline.label.labeler import LabelerConfig

from .conftest import BENCHMARKS

# Mean |GT flow| over valid pixels, i.e. the EPE of a zero prediction (../shared/data/README.md).
ZERO_FLOW_EPE = {
    "sintel/training/clean/alley_1/1": 2.803,
    "sintel/training/clean/alley_1/2": 2.983,
    "sintel/training/clean/alley_1/3": 3.120,
    "middlebury/training/RubberWhale/10": 1.256,
    "kitti2015/training/000000/10": 51.010,
    "flyingchairs/all/4": 25.556,
}

EXCERPTS = [  # (benchmark, root folder, split, pairs per pass)
    ("sintel", "Sintel", None, {"clean": 5, "final": 5}),
    ("kitti", "KITTI", None, {"": 1}),
    ("middlebury", "middlebury", None, {"": 8}),
    ("chairs", "FlyingChairs_release", "all", {"": 9}),
]


def direct_epes(benchmark: str, root: str, split: str | None) -> dict[str, tuple[float, float, int]]:
    """Per pair (EPE, zero-flow EPE, valid pixels) from the model's forward pass and numpy, without Ray."""
    model = load_model("dis")
    out = {}
    for records in list_benchmark(benchmark, root, split=split).values():
        for record in records:
            s = load_pair(record)
            a, b = (torch.from_numpy(x[None]).permute(0, 3, 1, 2).float() for x in (s.image0, s.image1))
            with torch.inference_mode():
                flow = model(a, b)[0].permute(1, 2, 0).numpy()
            error = np.sqrt(((flow.astype(np.float64) - s.flow) ** 2).sum(-1))[s.valid]
            out[record.pair_id] = (error.mean(), np.hypot(s.flow[..., 0], s.flow[..., 1])[s.valid].mean(), error.size)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("benchmark, folder, split, counts", EXCERPTS, ids=[e[0] for e in EXCERPTS])
@pytest.mark.usefixtures("shared_data")
def test_dis_on_every_excerpt_matches_a_direct_computation(ray_local, tmp_path, benchmark, folder, split, counts):
    root = str(BENCHMARKS / folder)
    result = run_score(
        ScoreJob(
            benchmark, root, split=split, labeler=LabelerConfig("dis", batch_size=2), out=str(tmp_path), save_flow=True
        )
    )
    direct = direct_epes(benchmark, root, split)
    assert {s["pass"]: s["num_pairs"] for s in result.scores} == counts
    for score in result.scores:
        per_pair = score["per_pair"]
        for pair_id, row in per_pair.items():
            epe, zero_epe, pixels = direct[pair_id]
            assert row["epe"] == pytest.approx(epe, rel=1e-5)
            assert row["pixels"] == pixels
            # Sane: where the README gives the EPE of a zero prediction, our ground truth reproduces it
            # and DIS beats predicting no motion.
            if pair_id in ZERO_FLOW_EPE:
                assert zero_epe == pytest.approx(ZERO_FLOW_EPE[pair_id], abs=5e-4)
                assert 0 < epe < zero_epe
        # Split-level: pixel-weighted EPE and per-image mean, both from the same per-pair numbers.
        pixels = np.array([direct[p][2] for p in per_pair])
        epes = np.array([direct[p][0] for p in per_pair])
        assert score["epe"] == pytest.approx((epes * pixels).sum() / pixels.sum(), rel=1e-5)
        assert score["epe_image_mean"] == pytest.approx(epes.mean(), rel=1e-5)
        assert 0 <= score["fl_all"] <= 100 and score["px1"] <= score["px3"] <= score["px5"] <= 100
        assert score["model"] == "dis" and score["checkpoint_sha256"] == ""
        assert score["settings"]["model_config"] == {"preset": "medium"}
        assert "torch" in score["versions"]

    written = json.loads((tmp_path / "scores.json").read_text())
    assert [s["pass"] for s in written["scores"]] == [s["pass"] for s in result.scores]
    assert written["scores"][0]["epe"] == pytest.approx(result.scores[0]["epe"])
    assert "| pass | pairs | EPE |" in (tmp_path / "scores.md").read_text()
    # Saved predictions: the benchmark's own format, the float32 flow back (KITTI: to 1/64 px).
    records = [r for rs in list_benchmark(benchmark, root, split=split).values() for r in rs]
    assert result.flows_written == len(records)
    files = sorted(p.relative_to(tmp_path / "flow").as_posix() for p in (tmp_path / "flow").rglob("*.*"))
    assert files == sorted(submission_path(r) for r in records)
    first = records[0]
    saved, valid = flowio.read_flow(str(tmp_path / "flow" / submission_path(first)))
    s = load_pair(first)
    a, b = (torch.from_numpy(x[None]).permute(0, 3, 1, 2).float() for x in (s.image0, s.image1))
    expected = load_model("dis")(a, b)[0].permute(1, 2, 0).numpy()
    assert valid.all()
    np.testing.assert_allclose(saved, expected, atol=1 / 128 + 1e-6 if benchmark == "kitti" else 0)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_cli_score_exit_codes(ray_local, tmp_path, capsys):
    root = str(BENCHMARKS / "FlyingChairs_release")
    code = main(
        [
            "score",
            "chairs",
            "--root",
            root,
            "--split",
            "all",
            "--pairs",
            "4",
            "--model",
            "dis",
            "--out",
            str(tmp_path / "ok"),
        ]
    )
    assert code == 0
    scores = json.loads((tmp_path / "ok" / "scores.json").read_text())["scores"]
    assert [s["num_pairs"] for s in scores] == [1] and list(scores[0]["per_pair"]) == ["flyingchairs/all/4"]
    assert "flyingchairs/all/4" in capsys.readouterr().out
    # Failures of the job itself: exit code 1 and one line naming the problem.
    assert main(["score", "chairs", "--root", str(tmp_path / "missing"), "--split", "all"]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["score", "chairs", "--root", root, "--split", "val"]) == 1  # the excerpt has no split file
    assert "FlyingChairs_train_val.txt" in capsys.readouterr().err
    assert main(["score", "kitti", "--root", str(BENCHMARKS / "KITTI"), "--model", "raft_small"]) == 1
    assert "needs a checkpoint" in capsys.readouterr().err
