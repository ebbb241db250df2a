"""Metrics on constructed fields whose answers are known by hand, and on real ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.evaluate import flowio, metrics
from pipeline.evaluate.metrics import PairStats, ScoreAccumulator, pair_stats

from .conftest import BENCHMARKS as BENCH


def constant(h: int, w: int, u: float, v: float) -> np.ndarray:
    return np.broadcast_to(np.float32([u, v]), (h, w, 2)).copy()


def test_endpoint_error_is_the_euclidean_distance():
    gt = constant(2, 3, 1.0, -2.0)
    flow = gt + np.float32([3.0, 4.0])
    np.testing.assert_allclose(metrics.endpoint_error(flow, gt), np.full((2, 3), 5.0))
    with pytest.raises(
        ValueError, match=r"expected flow and gt of the same shape H×W×2, got \(2, 3, 2\) and \(3, 2, 2\)"
    ):
        metrics.endpoint_error(flow, gt.reshape(3, 2, 2))


def test_fl_all_counts_kitti_outliers_exactly():
    # 10×10 field, |gt| = 10 px: 5 % of it is 0.5 px, so the 3 px rule decides.
    gt = constant(10, 10, 6.0, 8.0)
    flow = gt.copy()
    flow.reshape(-1, 2)[:7] += np.float32([4.0, 0.0])  # 7 outliers: 4 px > 3 px and > 0.5 px
    flow.reshape(-1, 2)[7:12] += np.float32([0.0, 2.9])  # 5 pixels of 2.9 px: not outliers
    # |gt| = 100 px: 4 px of error is under 5 % (5 px), so not an outlier either.
    gt.reshape(-1, 2)[12:15] = (60.0, 80.0)
    flow.reshape(-1, 2)[12:15] = (64.0, 80.0)
    stats = pair_stats(flow, gt)
    assert stats.n_outliers == 7 and stats.n_valid == 100
    assert stats.fl_all_pct == pytest.approx(7.0)
    # Invalid pixels are not counted at all.
    valid = np.ones((10, 10), bool)
    valid.reshape(-1)[:2] = False
    stats = pair_stats(flow, gt, valid)
    assert stats.n_outliers == 5 and stats.n_valid == 98
    assert stats.fl_all_pct == pytest.approx(100 * 5 / 98)


def test_pixel_accuracy_thresholds_are_strict():
    gt = np.zeros((1, 5, 2), np.float32)
    flow = np.zeros_like(gt)
    flow[0, :, 0] = [0.5, 1.0, 2.99, 3.0, 7.0]
    stats = pair_stats(flow, gt)
    assert stats.n_within == (1, 3, 4)  # EPE < 1, < 3, < 5 (as RAFT counts)
    assert stats.epe == pytest.approx((0.5 + 1 + 2.99 + 3 + 7) / 5)


def test_epe_on_occluded_and_non_occluded_pixels():
    gt = np.zeros((2, 2, 2), np.float32)
    flow = np.zeros_like(gt)
    flow[..., 0] = [[1.0, 2.0], [10.0, 4.0]]
    occluded = np.array([[False, False], [True, True]])
    valid = np.array([[True, True], [True, False]])
    acc = ScoreAccumulator()
    acc.add("p", pair_stats(flow, gt, valid, occluded=occluded))
    summary = acc.summary()
    assert summary["epe_noc"] == pytest.approx(1.5)
    assert summary["epe_occ"] == pytest.approx(10.0)  # the invalid occluded pixel (4 px) is left out
    assert summary["fl_occ_pct"] == pytest.approx(100.0) and summary["fl_noc_pct"] == 0
    assert summary["epe"] == pytest.approx(13 / 3)


def test_occlusion_precision_recall_f1():
    truth = np.array([[1, 1, 1, 0, 0, 0, 0, 0]], bool)
    guess = np.array([[1, 1, 0, 1, 1, 1, 0, 0]], bool)  # tp 2, fp 3, fn 1
    zero = np.zeros((1, 8, 2), np.float32)
    stats = pair_stats(zero, zero, occluded=truth, predicted_occlusion=guess)
    assert (stats.occ_tp, stats.occ_fp, stats.occ_fn) == (2, 3, 1)
    precision, recall, f1 = metrics.precision_recall_f1(2, 3, 1)
    assert (precision, recall) == pytest.approx((2 / 5, 2 / 3))
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall))
    acc = ScoreAccumulator()
    acc.add("a", stats)
    acc.add("b", pair_stats(zero, zero, occluded=truth, predicted_occlusion=truth))  # tp 3
    summary = acc.summary()
    assert summary["occ_precision"] == pytest.approx(5 / 8) and summary["occ_recall"] == pytest.approx(5 / 6)


def test_sparsification_by_hand():
    epe = np.array([1.0, 2.0, 3.0, 4.0])
    fractions = (0.0, 0.25, 0.5, 0.75)
    # Confidence that grows with the error is the worst order: the smallest errors go first.
    curve, oracle = metrics.sparsification_curves(epe, confidence=epe, fractions=fractions)
    np.testing.assert_allclose(oracle, [2.5, 2.0, 1.5, 1.0])
    np.testing.assert_allclose(curve, [2.5, 3.0, 3.5, 4.0])
    # Trapezoids of (curve − oracle) = 0, 1, 2, 3 at a spacing of 0.25.
    assert metrics.ause(curve, oracle, fractions) == pytest.approx(0.25 * (0.5 + 1.5 + 2.5))


def test_ause_is_zero_when_confidence_ranks_exactly_like_the_error():
    rng = np.random.default_rng(0)
    gt = rng.normal(scale=5, size=(40, 50, 2)).astype(np.float32)
    flow = gt + rng.normal(scale=2, size=gt.shape).astype(np.float32)
    epe = metrics.endpoint_error(flow, gt)
    perfect = pair_stats(flow, gt, confidence=-epe)
    assert perfect.ause == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(perfect.sparsification, perfect.oracle, rtol=1e-12)
    monotone = pair_stats(flow, gt, confidence=np.exp(-3 * epe))  # any decreasing function ranks the same
    assert monotone.ause == pytest.approx(0.0, abs=1e-9)
    random = pair_stats(flow, gt, confidence=rng.random(epe.shape))
    worst = pair_stats(flow, gt, confidence=epe)
    assert 0 < random.ause < worst.ause
    # A random ranking keeps the mean: its curve stays near the full-image EPE.
    assert np.allclose(random.sparsification[:25], perfect.epe, rtol=0.05)
    assert random.sparsification[0] == pytest.approx(perfect.epe)


def test_accumulator_reports_pixel_weighted_and_per_image_means():
    # Pair a: 3 pixels with EPE 1; pair b: 1 pixel with EPE 5 (an outlier against zero gt).
    a = pair_stats(constant(1, 3, 1.0, 0.0), constant(1, 3, 0.0, 0.0))
    b = pair_stats(constant(1, 1, 0.0, 5.0), constant(1, 1, 0.0, 0.0))
    acc = ScoreAccumulator()
    acc.extend([("b", b), ("a", a)])
    summary = acc.summary()
    assert summary["pairs"] == 2 and summary["pixels"] == 4
    assert summary["epe"] == pytest.approx(2.0)  # (3·1 + 5) / 4: Sintel server, KITTI devkit
    assert summary["epe_image_mean"] == pytest.approx(3.0)  # (1 + 5) / 2: RAFT's validate_kitti
    assert summary["fl_all_pct"] == pytest.approx(25.0)
    assert summary["acc1px_pct"] == 0 and summary["acc3px_pct"] == pytest.approx(75.0)
    assert "epe_occ" not in summary and "ause" not in summary
    assert list(acc.per_pair()) == ["a", "b"]
    assert acc.per_pair()["b"] == {"pixels": 1, "epe": 5.0, "fl_all_pct": 100.0}


def test_accumulator_merges_partials_rejects_duplicates_and_survives_json():
    rng = np.random.default_rng(1)
    parts = []
    for i in range(2):
        gt = rng.normal(size=(6, 7, 2)).astype(np.float32)
        flow = gt + rng.normal(size=gt.shape).astype(np.float32)
        occluded = rng.random((6, 7)) > 0.7
        stats = pair_stats(
            flow, gt, occluded=occluded, predicted_occlusion=rng.random((6, 7)) > 0.5, confidence=rng.random((6, 7))
        )
        part = ScoreAccumulator()
        part.add(f"pair{i}", stats)
        parts.append(part)
    total = ScoreAccumulator()
    for part in parts:
        total.merge(part)
    with pytest.raises(ValueError, match="'pair0' was already added"):
        total.merge(parts[0])
    restored = ScoreAccumulator()
    for pair_id, stats in total.pairs.items():
        restored.add(pair_id, PairStats.from_dict(json.loads(json.dumps(stats.to_dict()))))
    assert restored.pairs == total.pairs
    summary = restored.summary()
    json.dumps(summary)  # plain types only
    # AUSE of the averaged curves equals the mean of the per-pair AUSE (both are linear).
    per_pair = restored.per_pair()
    assert summary["ause"] == pytest.approx(np.mean([row["ause"] for row in per_pair.values()]))
    assert len(summary["sparsification"]["curve"]) == len(metrics.SPARSIFICATION_FRACTIONS)


def test_shape_mismatches_are_rejected():
    zero = np.zeros((4, 5, 2), np.float32)
    with pytest.raises(ValueError, match=r"valid: expected shape \(4, 5\), got \(5, 4\)"):
        pair_stats(zero, zero, np.ones((5, 4), bool))
    with pytest.raises(ValueError, match="predicted_occlusion: expected the ground-truth `occluded` mask"):
        pair_stats(zero, zero, predicted_occlusion=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="fractions: expected a 1-D grid in"):
        metrics.sparsification_curves(np.ones(3), np.ones(3), fractions=(0.0, 1.0))


@pytest.mark.usefixtures("shared_data")
def test_zero_prediction_on_real_ground_truth():
    acc = ScoreAccumulator()
    for frame in (1, 2, 3):
        gt, valid = flowio.read_flow(str(BENCH / "Sintel" / "training" / "flow" / "alley_1" / f"frame_{frame:04d}.flo"))
        acc.add(f"alley_1/{frame}", pair_stats(np.zeros_like(gt), gt, valid))
    gt, valid = flowio.read_flow(str(BENCH / "KITTI" / "training" / "flow_occ" / "000000_10.png"))
    kitti = pair_stats(np.zeros_like(gt), gt, valid)
    per_pair = acc.per_pair()
    assert [round(per_pair[f"alley_1/{f}"]["epe"], 3) for f in (1, 2, 3)] == [2.803, 2.983, 3.120]
    # Equal-sized images: pixel-weighted and per-image means agree.
    assert acc.summary()["epe"] == pytest.approx((2.8025317 + 2.9831045 + 3.1195154) / 3, abs=1e-6)
    assert acc.summary()["epe_image_mean"] == pytest.approx(acc.summary()["epe"])
    assert kitti.epe == pytest.approx(51.010, abs=5e-4)
    # A zero prediction's error is ‖gt‖ > 5 % of ‖gt‖, so Fl-all is the share of |gt| > 3 px.
    magnitude = np.hypot(gt[..., 0], gt[..., 1])[valid]
    assert kitti.n_outliers == int((magnitude > 3).sum())
