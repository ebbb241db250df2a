"""Scoring stages as plain functions (no Ray): settings, pair selection, row transport, float32 flow,
submission layouts, and per-pair statistics against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.score_model import ScoreJob, resolve_settings
from models import get_spec, load_model
from pipeline.evaluate import flowio
from pipeline.evaluate.datasets import PairRecord, load_pair
from pipeline.evaluate.metrics import endpoint_error
from pipeline.evaluate.scoring import (
    benchmark_overrides,
    list_benchmark,
    row_to_sample,
    sample_to_row,
    score_samples,
    select_pairs,
    submission_path,
)
from pipeline.label.labeler import LabelerConfig, label_pairs

from .conftest import BENCHMARKS, RAFT_SMALL

SINTEL = str(BENCHMARKS / "Sintel")
KITTI = str(BENCHMARKS / "KITTI")
MIDDLEBURY = str(BENCHMARKS / "middlebury")


def test_benchmark_config_applies_under_user_overrides():
    record = get_spec("raft_small").find_checkpoint("raft-small.pth")
    # RAFT's evaluate.py: KITTI with 24 iterations and bottom padding; the user's choice wins.
    assert benchmark_overrides(record, "kitti", {}) == {"iters": 24, "pad_mode": "kitti"}
    assert benchmark_overrides(record, "kitti", {"iters": 12}) == {"iters": 12, "pad_mode": "kitti"}
    assert benchmark_overrides(record, "kitti2012", {}) == {"iters": 24, "pad_mode": "kitti"}  # falls back to "kitti"
    assert benchmark_overrides(record, "middlebury", {"iters": 12}) == {"iters": 12}
    assert benchmark_overrides(None, "kitti", {"preset": "fast"}) == {"preset": "fast"}


@pytest.mark.usefixtures("shared_data")
def test_resolve_settings_records_where_each_setting_comes_from():
    job = ScoreJob(
        "kitti", KITTI, labeler=LabelerConfig("raft_small", checkpoint=str(RAFT_SMALL), overrides={"iters": 12})
    )
    labeler, settings = resolve_settings(job)
    assert labeler.overrides == {"iters": 12, "pad_mode": "kitti"}
    assert settings["benchmark_config"] == {"pad_mode": "kitti"}
    assert settings["overrides"] == {"iters": 12}
    assert settings["checkpoint_record"] == "raft-small"
    assert settings["flow_dtype"] == "float32"


@pytest.mark.usefixtures("shared_data")
def test_list_benchmark_passes_patterns_and_errors():
    both = list_benchmark("sintel", SINTEL)
    assert sorted(both) == ["clean", "final"] and [len(v) for v in both.values()] == [5, 5]
    alley = list_benchmark("sintel", SINTEL, passes=("final",), patterns=("alley_1/*",))
    assert [r.pair_id for r in alley["final"]] == [f"sintel/training/final/alley_1/{n}" for n in (1, 2, 3)]
    # The full pair id works as a pattern too.
    assert len(select_pairs(both["clean"], ["sintel/training/clean/cave_2/2"])) == 1
    with pytest.raises(ValueError, match="no render passes"):
        list_benchmark("kitti", KITTI, passes=("clean",))
    with pytest.raises(ValueError, match="no pair .* matches"):
        list_benchmark("middlebury", MIDDLEBURY, patterns=("Rubberwhale/*",))  # case matters
    with pytest.raises(ValueError, match="expected one of"):
        list_benchmark("sintel2", SINTEL)


@pytest.mark.usefixtures("shared_data")
def test_rows_carry_a_pair_between_stages_unchanged():
    record = list_benchmark("sintel", SINTEL, passes=("clean",), patterns=("alley_1/*",))["clean"]
    with_masks, without = load_pair(record[1]), load_pair(record[0])
    for sample in (with_masks, without):
        back = row_to_sample(sample_to_row(sample))
        assert back.record == sample.record
        for name in ("image0", "image1", "flow", "valid"):
            np.testing.assert_array_equal(getattr(back, name), getattr(sample, name))
    assert row_to_sample(sample_to_row(without)).occlusion is None
    np.testing.assert_array_equal(row_to_sample(sample_to_row(with_masks)).occlusion, with_masks.occlusion)


@pytest.mark.usefixtures("shared_data")
def test_label_pairs_float32_option_keeps_the_model_flow_and_default_stays_float16():
    sample = load_pair(list_benchmark("middlebury", MIDDLEBURY, patterns=("RubberWhale/*",))[""][0])
    model = load_model("dis")
    a, b = sample.image0[None], sample.image1[None]
    default = label_pairs(model, a, b)
    exact = label_pairs(model, a, b, out_dtype=np.float32)
    assert default["flow"].dtype == np.float16 and default["confidence"].dtype == np.float16
    assert exact["flow"].dtype == np.float32 and exact["confidence"].dtype == np.float32
    forward = model(*(torch.from_numpy(x).permute(0, 3, 1, 2).float() for x in (a, b)))
    np.testing.assert_array_equal(exact["flow"][0], forward[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(default["flow"], exact["flow"].astype(np.float16))
    with pytest.raises(ValueError, match="float16 or float32"):
        label_pairs(model, a, b, out_dtype=np.float64)


@pytest.mark.usefixtures("shared_data")
def test_score_samples_equals_a_direct_epe_and_counts_occlusion():
    records = list_benchmark("sintel", SINTEL, passes=("clean",), patterns=("alley_1/1", "alley_1/2"))["clean"]
    samples = [load_pair(r) for r in records]
    model = load_model("dis")
    scores = score_samples(model, samples, batch_size=2, keep_flow=True)
    assert [s.record for s in scores] == records
    for sample, score in zip(samples, scores):
        direct = model(*(torch.from_numpy(x[None]).permute(0, 3, 1, 2).float() for x in (sample.image0, sample.image1)))
        flow = direct[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(score.flow, flow)
        epe = np.sqrt(((flow - sample.flow) ** 2).sum(-1))[sample.valid]
        assert score.stats.n_valid == sample.valid.sum() == 1024 * 436
        assert score.stats.epe == pytest.approx(epe.mean(), rel=1e-6)
        assert score.stats.sparsification is not None  # confidence from the forward-backward check
    # Frame 2 of alley_1 has a ground-truth occlusion mask (2.2 % of pixels): occ/noc split and F1 counts.
    with_mask = scores[1].stats
    assert with_mask.n_occ == samples[1].occlusion.sum()
    assert with_mask.n_occ / with_mask.n_valid == pytest.approx(0.022, abs=0.001)
    assert with_mask.occ_tp + with_mask.occ_fn == with_mask.n_occ
    assert scores[0].stats.n_occ is None


@pytest.mark.parametrize(
    "record, expected",
    [
        (PairRecord("sintel", "training", "final", "alley_1", 3, "a", "b"), "final/alley_1/frame_0003.flo"),
        (PairRecord("kitti2015", "training", "", "000012", 10, "a", "b"), "000012_10.png"),
        (PairRecord("kitti2012", "testing", "", "000001", 10, "a", "b"), "000001_10.png"),
        (PairRecord("flyingchairs", "val", "", "", 4, "a", "b"), "00004_flow.flo"),
        (PairRecord("middlebury", "training", "", "Urban3", 10, "a", "b"), "Urban3/flow10.flo"),
        (PairRecord("hd1k", "training", "", "000003", 7, "a", "b"), "000003_0007.flo"),
        (
            PairRecord("flyingthings3d", "test", "clean", "A/0001", 6, "a", "b", direction="backward"),
            "clean/A/0001/into_past/0006.flo",
        ),
    ],
)
def test_submission_paths_follow_each_benchmarks_layout(record, expected):
    assert submission_path(record) == expected


def test_kitti_submission_png_round_trips_within_its_quantisation():
    from pipeline.evaluate.scoring import encode_submission

    record = PairRecord("kitti2015", "training", "", "000000", 10, "a", "b")
    flow = np.random.default_rng(0).uniform(-200, 200, (5, 7, 2)).astype(np.float32)
    decoded, valid = flowio.decode_kitti_flow(encode_submission(record, flow))
    assert valid.all()
    assert np.abs(decoded - flow).max() <= 0.5 / 64 + 1e-6
    assert endpoint_error(decoded, flow).max() < 0.012
