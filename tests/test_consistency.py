"""Forward-backward consistency on constructed flow fields with known answers."""

import math

import pytest
import torch

from pipeline.label.consistency import ConsistencyParams, consistency, warp


def constant(u, v, h=20, w=30, b=1):
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = u, v
    return flow


def test_warp_samples_at_x_plus_flow():
    h, w = 6, 8
    field = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    warped, inside = warp(field, constant(1.0, 2.0, h, w))
    assert torch.equal(warped[0, 0, 0, 0], field[0, 0, 2, 1])
    half, _ = warp(field, constant(0.5, 0.0, h, w))
    assert half[0, 0, 3, 2].item() == pytest.approx((field[0, 0, 3, 2] + field[0, 0, 3, 3]).item() / 2)
    # the last column plus 1 px right lands outside; the last two rows plus 2 px down too
    assert (~inside[0, :, -1]).all() and (~inside[0, -2:, :]).all() and inside[0, :-2, :-1].all()


def test_consistent_translation_is_visible_except_where_it_leaves_the_frame():
    occlusion, confidence = consistency(constant(3.0, -2.0), constant(-3.0, 2.0))
    left_in_view = torch.ones(20, 30, dtype=torch.bool)
    left_in_view[:, -3:] = False  # x + 3 > W − 1
    left_in_view[:2, :] = False  # y − 2 < 0
    assert torch.equal(occlusion[0], ~left_in_view)
    assert torch.allclose(confidence[0][left_in_view], torch.ones(()))


def test_inconsistent_region_is_occluded_with_the_unflow_threshold():
    params = ConsistencyParams()
    forward = constant(4.0, 0.0)
    backward = constant(-4.0, 0.0)
    backward[:, :, 5:10, 10:15] = 0.0  # the backward flow disagrees in this block
    occlusion, confidence = consistency(forward, backward, params)
    # ρ = |F|² / (α|F|² + β) = 16 / (0.16 + 0.5) ≈ 24 > 1 where F + B̃ = F
    rho = 16 / (params.alpha * 16 + params.beta)
    inside_block = occlusion[0, 5:10, 6:11]  # B̃(x) = B(x + 4): sampled from the block for x in 6..10
    assert inside_block.all()
    assert confidence[0, 7, 8].item() == pytest.approx(math.exp(-rho), rel=1e-5)
    assert not occlusion[0, 12:, :20].any()


def test_small_disagreement_scales_with_flow_magnitude():
    """A 0.5 px disagreement is tolerated on a 30 px motion, not on a still pixel (α term)."""
    fast = consistency(constant(30.0, 0.0, w=100), constant(-29.5, 0.0, w=100))[0][0, :, :50]
    assert not fast.any()
    still = consistency(constant(0.0, 0.0), constant(0.0, 1.0))[0]
    assert still.all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="expected forward and backward flow"):
        consistency(constant(0, 0, 4, 4), constant(0, 0, 4, 5))
