"""Motion summaries on flow fields with known motion: pans, zooms, rotations, moving objects, and real DIS flow."""

import math
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.synthetic import Motion, texture, translating_frames
from models import load_model
from pipeline.label.consistency import consistency
from pipeline.label.motion import (
    CLIP_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    MotionParams,
    aggregate,
    pair_motion,
    sample_stride,
    summary_arrays,
)

H, W = 96, 128  # sample stride 2: a 48×64 grid on rows and columns 1, 3, 5, …
CAMERA = [n for n in SUMMARY_COLUMNS if n.startswith(("camera_", "residual_"))]


def field(u, v, h=H, w=W, p=1):
    flow = torch.zeros(p, 2, h, w)
    flow[:, 0], flow[:, 1] = u, v
    return flow


def affine_field(a, t, h=H, w=W):
    """1×2×H×W flow of x' = A (x − c) + c + t, c the image centre ((W − 1)/2, (H − 1)/2)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) - (h - 1) / 2,
        torch.arange(w, dtype=torch.float64) - (w - 1) / 2,
        indexing="ij",
    )
    u = (a[0][0] - 1) * xs + a[0][1] * ys + t[0]
    v = a[1][0] * xs + (a[1][1] - 1) * ys + t[1]
    return torch.stack([u, v])[None].float()


def clean(flow):
    """All pixels visible and fully confident."""
    p, _, h, w = flow.shape
    return flow, torch.zeros(p, h, w, dtype=torch.bool), torch.ones(p, h, w)


def values(stats, i=0):
    return {name: stats[name][i].item() for name in stats}


def nearest_rank(x, q):
    x = np.sort(np.asarray(x, np.float64).ravel())
    return x[max(1, math.ceil(q * x.size)) - 1]


def test_sample_stride_is_the_smallest_within_the_budget():
    assert sample_stride(64, 128, 8192) == 1
    assert sample_stride(96, 128, 8192) == 2
    assert sample_stride(540, 960, 8192) == 8  # 67 × 120 = 8040 pixels; stride 7 would give 77 × 137
    for h, w, budget in ((540, 960, 8192), (1080, 1920, 8192), (37, 1001, 500), (1, 1, 1), (7, 3, 2)):
        s = sample_stride(h, w, budget)

        def size(k, h=h, w=w):
            return len(range(k // 2, h, k)) * len(range(k // 2, w, k))

        assert size(s) <= budget and (s == 1 or size(s - 1) > budget)


def test_pure_pan_is_the_camera_translation_with_no_residual():
    s = values(pair_motion(*clean(field(3.0, -1.5))))
    assert s["camera_tx"] == pytest.approx(3.0, abs=1e-3) and s["camera_ty"] == pytest.approx(-1.5, abs=1e-3)
    for name, expected in {
        "camera_a11": 1,
        "camera_a12": 0,
        "camera_a21": 0,
        "camera_a22": 1,
        "camera_scale": 1,
        "camera_rotation": 0,
    }.items():
        assert s[name] == pytest.approx(expected, abs=1e-6), name
    speed = math.hypot(3.0, 1.5)
    for name in ("flow_mean", "flow_median", "flow_p95", "camera_flow_mean"):
        assert s[name] == pytest.approx(speed, rel=1e-6), name
    assert s["residual_mean"] < 1e-5 and s["residual_p95"] < 1e-5
    assert s["camera_inlier_fraction"] == 1 and s["occluded_fraction"] == 0 and s["confidence_mean"] == 1


@pytest.mark.parametrize(
    "a, t, scale, rotation",
    [
        ([[1.04, 0.0], [0.0, 1.04]], (1.0, 2.0), 1.04, 0.0),  # zoom in
        ([[math.cos(0.03), -math.sin(0.03)], [math.sin(0.03), math.cos(0.03)]], (0.0, 0.0), 1.0, 0.03),  # rotation
        ([[1.02, 0.03], [-0.01, 0.97]], (-2.0, 0.5), None, None),  # general affine
    ],
)
def test_affine_camera_motion_is_recovered_about_the_image_centre(a, t, scale, rotation):
    flow = affine_field(a, t)
    s = values(pair_motion(*clean(flow)))
    assert s["camera_tx"] == pytest.approx(t[0], abs=1e-3) and s["camera_ty"] == pytest.approx(t[1], abs=1e-3)
    recovered = [[s["camera_a11"], s["camera_a12"]], [s["camera_a21"], s["camera_a22"]]]
    np.testing.assert_allclose(recovered, a, atol=1e-5)
    if scale is not None:
        assert s["camera_scale"] == pytest.approx(scale, abs=1e-5)
        assert s["camera_rotation"] == pytest.approx(rotation, abs=1e-5)
    assert s["residual_mean"] < 1e-4 and s["residual_p95"] < 1e-4 and s["camera_inlier_fraction"] == 1
    grid = flow[0, :, 1::2, 1::2]  # the sample grid of 96×128
    assert s["camera_flow_mean"] == pytest.approx(torch.hypot(grid[0], grid[1]).mean().item(), rel=1e-5)


def test_similarity_angle_is_clockwise_on_screen():
    """A positive rotation turns +x towards +y (down): the pixel right of the centre moves down."""
    flow = affine_field([[math.cos(0.05), -math.sin(0.05)], [math.sin(0.05), math.cos(0.05)]], (0, 0))
    assert flow[0, 1, H // 2, -1] > 0
    assert pair_motion(*clean(flow))["camera_rotation"].item() == pytest.approx(0.05, abs=1e-6)


def moving_square(background=(0.0, 0.0), motion=(5.0, 0.0), top=20, left=50, size=(30, 40)):
    flow = field(*background)
    flow[0, 0, top : top + size[0], left : left + size[1]] = motion[0]
    flow[0, 1, top : top + size[0], left : left + size[1]] = motion[1]
    return flow


def test_object_on_a_static_background_is_residual_motion_not_camera_motion():
    s = values(pair_motion(*clean(moving_square())))
    object_fraction = 30 * 40 / (H * W)  # also on the grid: 15 × 20 of 48 × 64 samples
    assert abs(s["camera_tx"]) < 1e-3 and abs(s["camera_ty"]) < 1e-3 and s["camera_flow_mean"] < 1e-3
    assert s["camera_a11"] == pytest.approx(1, abs=1e-6) and s["camera_a22"] == pytest.approx(1, abs=1e-6)
    assert s["flow_mean"] == pytest.approx(5 * object_fraction, rel=1e-6)
    assert s["flow_median"] == 0 and s["flow_p95"] == 5  # the object is 9.8 % of the frame: above the 95th
    assert s["residual_mean"] == pytest.approx(5 * object_fraction, rel=1e-5)
    assert s["residual_p95"] == pytest.approx(5, abs=1e-4)
    assert s["camera_inlier_fraction"] == pytest.approx(1 - object_fraction, rel=1e-6)


def test_a_small_object_is_below_the_95th_percentile():
    s = values(pair_motion(*clean(moving_square(size=(10, 10)))))  # 25 of 3072 grid samples
    assert s["flow_p95"] == 0 and s["residual_p95"] == pytest.approx(0, abs=1e-4)
    assert s["residual_mean"] == pytest.approx(5 * 25 / 3072, rel=1e-5)
    assert s["flow_mean"] == pytest.approx(5 * 100 / (H * W), rel=1e-6)


def test_pan_with_a_moving_object_gives_the_pan_and_the_object_motion_relative_to_it():
    pan, moving = (3.0, -1.5), (8.0, 0.5)  # the object moves (5, 2) relative to the background
    s = values(pair_motion(*clean(moving_square(pan, moving))))
    assert s["camera_tx"] == pytest.approx(3.0, abs=1e-3) and s["camera_ty"] == pytest.approx(-1.5, abs=1e-3)
    assert s["residual_p95"] == pytest.approx(math.hypot(5, 2), abs=1e-4)
    assert s["residual_mean"] == pytest.approx(math.hypot(5, 2) * 300 / 3072, rel=1e-5)
    assert s["flow_p95"] == pytest.approx(math.hypot(*moving), rel=1e-6)
    assert s["flow_median"] == pytest.approx(math.hypot(*pan), rel=1e-6)


def test_noisy_pan_with_an_object_scales_the_rejection_to_the_noise():
    """Flow noise of 0.5 px per component: σ from the median residual is ≈ 0.87 px, so the fit keeps the whole
    background (|noise| > 4.685σ has probability e⁻³³) and rejects the object 10 px away from it."""
    torch.manual_seed(0)
    flow = moving_square((3.0, -1.5), (13.0, -1.5)) + 0.5 * torch.randn(1, 2, H, W)
    s = values(pair_motion(*clean(flow)))
    assert s["camera_tx"] == pytest.approx(3.0, abs=0.05) and s["camera_ty"] == pytest.approx(-1.5, abs=0.05)
    assert s["camera_inlier_fraction"] == pytest.approx(1 - 300 / 3072, abs=1e-6)
    rayleigh_mean = 0.5 * math.sqrt(math.pi / 2)
    assert s["residual_mean"] == pytest.approx(10 * 300 / 3072 + rayleigh_mean * 2772 / 3072, abs=0.03)
    assert s["residual_p95"] == pytest.approx(10, abs=1.5)


def test_quantiles_are_nearest_rank_over_the_sample_grid():
    flow = torch.zeros(1, 2, H, W)
    flow[0, 0] = torch.arange(W, dtype=torch.float32)  # |flow| = x
    flow[0, 1] = torch.arange(H, dtype=torch.float32)[:, None] / 10
    s = values(pair_motion(*clean(flow)))
    grid = torch.hypot(flow[0, 0], flow[0, 1])[1::2, 1::2].numpy()
    assert s["flow_median"] == pytest.approx(nearest_rank(grid, 0.5), rel=1e-6)
    assert s["flow_p95"] == pytest.approx(nearest_rank(grid, 0.95), rel=1e-6)
    assert s["flow_mean"] == pytest.approx(torch.hypot(flow[0, 0], flow[0, 1]).mean().item(), rel=1e-6)


def test_residual_quantile_counts_only_valid_pixels():
    """95th percentile of the object's residual over visible pixels: every rank of the partial sort."""
    rng = np.random.default_rng(0)
    for count in (1, 2, 19, 20, 21, 150, 3071, 3072):
        flow = field(0.0, 0.0)
        flow[0, 0, 1::2, 1::2] = torch.from_numpy(rng.permutation(3072).astype(np.float32) / 100).view(48, 64)
        occlusion = torch.ones(1, H, W, dtype=torch.bool)
        keep = torch.zeros(3072, dtype=torch.bool)
        keep[torch.from_numpy(rng.choice(3072, count, replace=False))] = True
        occlusion[0, 1::2, 1::2] = ~keep.view(48, 64)
        params = MotionParams(iterations=0, min_sigma_px=1e-9)  # camera = the median start, known exactly
        s = values(pair_motion(flow, occlusion, torch.ones(1, H, W), params))
        visible = flow[0, 0, 1::2, 1::2].reshape(-1)[keep].numpy()
        start = np.sort(visible)[(count - 1) // 2]  # torch's median: the lower middle value
        assert s["camera_tx"] == pytest.approx(start, abs=1e-6)
        assert s["residual_p95"] == pytest.approx(nearest_rank(np.abs(visible - start), 0.95), abs=1e-5), count


def test_occluded_and_unconfident_pixels_are_left_out_of_the_camera_and_residual():
    """Most of the frame carries a wild flow, but it is occluded or unconfident: the fit must ignore it."""
    flow, occlusion, confidence = clean(field(3.0, -1.5))
    flow[0, :, :60] = torch.tensor([-20.0, 7.0])[:, None, None]
    occlusion[0, :35] = True
    confidence[0, 35:60] = 0.49  # just under the threshold
    s = values(pair_motion(flow, occlusion, confidence))
    assert s["camera_tx"] == pytest.approx(3.0, abs=1e-3) and s["camera_ty"] == pytest.approx(-1.5, abs=1e-3)
    assert s["residual_p95"] < 1e-4 and s["camera_inlier_fraction"] == 1
    assert s["occluded_fraction"] == pytest.approx(35 / 96, rel=1e-6)
    assert s["confidence_mean"] == pytest.approx((71 + 25 * 0.49) / 96, rel=1e-6)
    # every pixel counts for the |flow| statistics
    assert s["flow_mean"] == pytest.approx((60 * math.hypot(20, 7) + 36 * math.hypot(3, 1.5)) / 96, rel=1e-5)
    unmasked = values(pair_motion(*clean(flow)))
    assert unmasked["camera_tx"] == pytest.approx(-20, abs=1e-3)  # without the masks the wild flow would win


def test_min_confidence_is_inclusive_and_a_parameter():
    flow, occlusion, confidence = clean(moving_square())
    for level, params, counted in (
        (0.5, MotionParams(), True),
        (0.49, MotionParams(), False),
        (0.3, MotionParams(min_confidence=0.2), True),
    ):
        confidence[0, 20:50, 50:90] = level  # the object's confidence
        s = values(pair_motion(flow, occlusion, confidence, params))
        assert s["residual_p95"] == pytest.approx(5 if counted else 0, abs=1e-4), level
        assert s["camera_inlier_fraction"] == pytest.approx(1 - 300 / 3072 if counted else 1, rel=1e-6), level


def test_no_valid_pixel_gives_nan_camera_and_residual_not_an_error():
    flow, occlusion, confidence = clean(field(3.0, -1.5, p=3))
    occlusion[0] = True
    confidence[1] = 0.1
    stats = pair_motion(flow, occlusion, confidence)
    for i in (0, 1):
        s = values(stats, i)
        assert all(math.isnan(s[name]) for name in CAMERA)
        assert s["flow_mean"] == pytest.approx(math.hypot(3, 1.5), rel=1e-6)
    assert values(stats, 0)["occluded_fraction"] == 1
    assert values(stats, 1)["confidence_mean"] == pytest.approx(0.1)
    assert values(stats, 2)["camera_tx"] == pytest.approx(3.0, abs=1e-3)  # its neighbours in the batch are fine


def test_degenerate_layouts_are_regularised():
    """Valid pixels on one grid row (x alone varies) or a single pixel: the translation still comes out."""
    flow, occlusion, confidence = clean(field(3.0, -1.5, p=2))
    occlusion[:] = True
    occlusion[0, 33] = False  # one grid row
    occlusion[1, 33, 65] = False  # one grid pixel
    stats = pair_motion(flow, occlusion, confidence)
    for i in (0, 1):
        s = values(stats, i)
        assert s["camera_tx"] == pytest.approx(3.0, abs=1e-3) and s["camera_ty"] == pytest.approx(-1.5, abs=1e-3)
        assert s["camera_a12"] == pytest.approx(0, abs=1e-6) and s["camera_a22"] == pytest.approx(1, abs=1e-6)
        assert s["residual_mean"] < 1e-4


def test_batched_equals_one_pair_at_a_time_to_the_bit():
    # Bitwise, not close: a resumed run batches the pairs of its clips differently from an uninterrupted
    # one, and must write the same labels (test_corpus_faults compares the two runs' rows exactly).
    torch.manual_seed(0)
    flows = torch.cat(
        [
            moving_square((3.0, -1.5), (8.0, 0.5)),
            affine_field([[1.03, 0.01], [-0.02, 0.99]], (1.0, -1.0)) + 0.3 * torch.randn(1, 2, H, W),
            3 * torch.randn(1, 2, H, W),
            *(affine_field([[1.01, 0.02], [0.01, 1.0]], (3.5, -1.0)) + 0.3 * torch.randn(9, 2, H, W)).split(1),
        ]
    )
    occlusion = torch.rand(12, H, W) < 0.2
    confidence = torch.rand(12, H, W) * 0.8 + 0.2
    batched = pair_motion(flows, occlusion, confidence)
    for size in (1, 5):
        for start in range(0, 12, size):
            part = slice(start, start + size)
            alone = pair_motion(flows[part], occlusion[part], confidence[part])
            for name in SUMMARY_COLUMNS:
                assert torch.equal(batched[name][part], alone[name]), f"{name}, pairs {start}..{start + size}"


def test_output_contract_and_input_types():
    flow, occlusion, confidence = clean(moving_square((1.0, 0.5), (4.0, 0.5)))
    stats = pair_motion(flow, occlusion, confidence)
    assert list(stats) == list(SUMMARY_COLUMNS)
    assert all(v.dtype == torch.float32 and v.shape == (1,) for v in stats.values())
    # half-precision flow and uint8 occlusion (as the labeler transfers them) give the same numbers
    other = pair_motion(flow.half(), occlusion.to(torch.uint8), confidence.half())
    for name in SUMMARY_COLUMNS:
        torch.testing.assert_close(other[name], stats[name], rtol=1e-3, atol=1e-3, msg=name)


def test_empty_batch_and_strided_inputs():
    empty = pair_motion(torch.zeros(0, 2, H, W), torch.zeros(0, H, W, dtype=torch.bool), torch.ones(0, H, W))
    assert list(empty) == list(SUMMARY_COLUMNS) and all(v.shape == (0,) for v in empty.values())
    flow, occlusion, confidence = clean(moving_square((3.0, -1.5), (8.0, 0.5)))
    occlusion[0, :10] = True
    expected = pair_motion(flow, occlusion, confidence)
    strided = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (flow, occlusion, confidence)]
    assert not strided[1].is_contiguous()
    got = pair_motion(*strided)
    for name in SUMMARY_COLUMNS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6, msg=name)


def test_meta_device_gives_shapes_only():
    p = 5
    stats = pair_motion(
        torch.empty(p, 2, 540, 960, device="meta"),
        torch.empty(p, 540, 960, dtype=torch.bool, device="meta"),
        torch.empty(p, 540, 960, device="meta"),
    )
    assert list(stats) == list(SUMMARY_COLUMNS)
    assert all(v.device.type == "meta" and v.shape == (p,) and v.dtype == torch.float32 for v in stats.values())


def test_no_host_synchronisation():
    """No op reads a tensor value back to Python (aten::item): on a GPU each would stall the stream."""
    flow, occlusion, confidence = clean(moving_square((3.0, -1.5), (8.0, 0.5)))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        pair_motion(flow, occlusion, confidence)
    names = {event.name for event in prof.events()}
    assert "aten::linalg_solve_ex" not in names and "aten::kthvalue" in names  # the profile saw the ops
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero"}


def test_bad_inputs_raise():
    flow, occlusion, confidence = clean(field(1.0, 0.0))
    with pytest.raises(ValueError, match="flow: expected a float tensor P×2×H×W"):
        pair_motion(flow[:, :1], occlusion, confidence)
    with pytest.raises(ValueError, match="flow: expected a float tensor"):
        pair_motion(flow.long(), occlusion, confidence)
    with pytest.raises(ValueError, match=r"occlusion: expected shape P×H×W = \(1, 96, 128\)"):
        pair_motion(flow, occlusion[:, :-1], confidence)
    with pytest.raises(ValueError, match="confidence: expected it on flow's device"):
        pair_motion(flow, occlusion, confidence.to("meta"))
    with pytest.raises(ValueError, match="tukey_c: expected > 0, got 0"):
        MotionParams(tukey_c=0)


def dis_summaries(frames):
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    forward, backward = load_model("dis").bidirectional(images[:-1], images[1:])
    occlusion, confidence = consistency(forward, backward)
    return pair_motion(forward, occlusion, confidence)


def test_dis_flow_of_a_translating_video_gives_the_translation_as_camera_motion():
    stats = dis_summaries(translating_frames(H, W, 4, Motion(2.5, -1.0), seed=3))
    for i in range(3):
        s = values(stats, i)
        assert s["camera_tx"] == pytest.approx(2.5, abs=0.3) and s["camera_ty"] == pytest.approx(-1.0, abs=0.3)
        assert s["camera_scale"] == pytest.approx(1, abs=0.01) and abs(s["camera_rotation"]) < 0.01
        assert s["residual_mean"] < 0.2 and s["residual_p95"] < 0.5 and s["camera_inlier_fraction"] > 0.9
        assert s["camera_flow_mean"] == pytest.approx(math.hypot(2.5, 1.0), abs=0.3)


def test_dis_flow_of_an_object_on_a_static_background_is_residual_motion():
    background, patch = texture(H, W, seed=1), texture(30, 40, seed=2)
    frames = []
    for k in range(3):  # the patch moves 4 px right per frame
        image = background.copy()
        image[30:60, 20 + 4 * k : 60 + 4 * k] = patch
        frames.append(image)
    stats = dis_summaries(frames)
    for i in range(2):
        s = values(stats, i)
        assert abs(s["camera_tx"]) < 0.1 and abs(s["camera_ty"]) < 0.1 and s["camera_flow_mean"] < 0.1
        assert s["residual_p95"] == pytest.approx(4, abs=0.5)  # the patch is ~10 % of the frame
        assert 0.2 < s["residual_mean"] < 0.8 and s["flow_median"] < 0.1


# ---- the per-clip aggregation -------------------------------------------------------------------------------


def clip_stats(**changes):
    base = {name: np.array([1.0, 2.0, 4.0], np.float32) for name in SUMMARY_COLUMNS}
    base.update(
        {"camera_tx": np.array([3.0, -1.0, np.nan], np.float32), "camera_ty": np.array([4.0, 0.0, np.nan], np.float32)}
    )
    base.update({k: np.asarray(v, np.float32) for k, v in changes.items()})
    return base


def test_aggregate_reduces_each_column_as_documented():
    row = aggregate(
        clip_stats(
            flow_median=[1.0, 5.0, 2.0],
            flow_p95=[3.0, 9.0, 4.0],
            residual_p95=[7, 1, 2],
            camera_flow_mean=[0.5, 6.0, 1.0],
        ),
        dt=[0.5, 0.5, 1.0],
    )
    assert list(row) == list(CLIP_SUMMARY_COLUMNS)
    assert row["pairs"] == 3 and row["pairs"].dtype == np.int32
    assert all(row[n].dtype == np.float32 for n in CLIP_SUMMARY_COLUMNS if n != "pairs")
    assert row["flow_mean"] == pytest.approx(7 / 3) and row["flow_median"] == 2 and row["flow_p95"] == 9
    assert row["flow_mean_per_s"] == pytest.approx((2 + 4 + 4) / 3)
    assert row["camera_tx_mean"] == pytest.approx(1.0) and row["camera_ty_mean"] == pytest.approx(2.0)  # NaN skipped
    assert row["camera_translation_mean"] == pytest.approx((5 + 1) / 2)
    assert row["camera_flow_mean"] == pytest.approx(7.5 / 3) and row["camera_flow_max"] == 6
    assert row["residual_p95"] == 7 and row["residual_mean"] == pytest.approx(7 / 3)
    for name in (
        "occluded_fraction",
        "confidence_mean",
        "camera_scale_mean",
        "camera_rotation_mean",
        "camera_inlier_fraction",
    ):
        assert row[name] == pytest.approx(7 / 3), name


def test_aggregate_weights_the_means_only():
    row = aggregate(clip_stats(), weights=[1.0, 0.0, 3.0])
    assert row["flow_mean"] == pytest.approx((1 + 12) / 4) and row["residual_mean"] == pytest.approx(13 / 4)
    assert row["camera_tx_mean"] == pytest.approx(3.0)  # the third pair has no camera; the second weighs 0
    assert row["flow_median"] == 2 and row["flow_p95"] == 4  # median and max ignore the weights
    assert math.isnan(row["flow_mean_per_s"])  # no dt given


def test_aggregate_of_no_pairs_or_all_nan_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = aggregate({name: np.zeros(0, np.float32) for name in SUMMARY_COLUMNS})
        unfit = aggregate(clip_stats(camera_tx=[np.nan] * 3, camera_ty=[np.nan] * 3, residual_p95=[np.nan] * 3))
    assert empty["pairs"] == 0 and all(math.isnan(empty[n]) for n in CLIP_SUMMARY_COLUMNS if n != "pairs")
    assert math.isnan(unfit["camera_tx_mean"]) and math.isnan(unfit["camera_translation_mean"])
    assert math.isnan(unfit["residual_p95"]) and unfit["flow_mean"] == pytest.approx(7 / 3)


def test_aggregate_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"weights: expected one value per pair, shape \(3,\)"):
        aggregate(clip_stats(), weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="weights: expected finite values ≥ 0"):
        aggregate(clip_stats(), weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="dt: expected time gaps > 0 s"):
        aggregate(clip_stats(), dt=[0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match=r"flow_p95: expected one value per pair"):
        aggregate(clip_stats(flow_p95=[1.0, 2.0]))
    with pytest.raises(KeyError):
        aggregate({"flow_mean": np.ones(3)})


def test_columns_build_arrow_tables():
    stats = pair_motion(*clean(torch.cat([moving_square(), field(1.0, 2.0)])))
    arrays = summary_arrays(stats)
    table = pa.table(arrays, schema=pa.schema(list(SUMMARY_COLUMNS.items())))
    assert table.num_rows == 2 and table.column("camera_tx").to_pylist()[1] == pytest.approx(1.0, abs=1e-3)
    row = aggregate(arrays, dt=np.full(2, 1 / 30))
    clips = pa.table({n: [row[n]] for n in CLIP_SUMMARY_COLUMNS}, schema=pa.schema(list(CLIP_SUMMARY_COLUMNS.items())))
    assert clips.column("pairs").to_pylist() == [2]
    assert clips.column("flow_mean_per_s").to_pylist()[0] == pytest.approx(30 * (0.48828125 + math.hypot(1, 2)) / 2)
