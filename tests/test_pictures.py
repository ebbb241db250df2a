"""Middlebury flow colours, mask pictures, panels and PNG writing."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipeline.evaluate import flowio, pictures

from .conftest import BENCHMARKS as BENCH

# Produced once with the official RAFT code's core/utils/flow_viz.py (princeton-vl/RAFT, a port of the
# Middlebury colour code); see tests/data/README.md.
REFERENCE = Path(__file__).resolve().parent / "data" / "flow_colours_raft_flow_viz.npz"


def test_colour_wheel_segments():
    wheel = pictures.colour_wheel()
    assert wheel.shape == (55, 3)  # 15 + 6 + 4 + 11 + 13 + 6
    # Segment starts: red, yellow, green, cyan, blue, magenta.
    starts = np.cumsum([0, 15, 6, 4, 11, 13])
    np.testing.assert_array_equal(
        wheel[starts], [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255], [255, 0, 255]]
    )
    assert wheel[1, 1] == np.floor(255 / 15)  # the ramps are floored, as in Baker et al.'s code


def test_unit_vectors_by_hand():
    # (u, v) at the max radius: the colour is the wheel entry at (atan2(−v, −u)/π + 1)/2 · 54.
    flow = np.float32([[[1, 0], [0, 1], [-1, 0], [0, -1]]])
    rgb = pictures.flow_to_rgb(flow, max_radius=1.0)
    np.testing.assert_array_equal(
        rgb[0],
        [
            [255, 0, 0],  # right: v = +0 gives atan2(−0, −1) = −π, entry 0 (red), as in Middlebury's code
            [255, 229, 0],  # down: between entries 13 and 14 of red→yellow (G = (221 + 238)/2)
            [0, 209, 255],  # left: entry 27, cyan→blue (G = 255 − ⌊255·2/11⌋)
            [88, 0, 255],  # up: between entries 40 and 41 of blue→magenta (R = (78 + 98)/2)
        ],
    )


def test_saturation_darkening_unknown_and_still_flow():
    flow = np.float32([[[0.5, 0], [2, 0], [np.nan, 0], [1e10, 0], [0, 0]]])
    valid = np.array([[True, True, True, False, True]])
    rgb = pictures.flow_to_rgb(flow, valid, max_radius=1.0)
    np.testing.assert_array_equal(rgb[0, 0], [255, 127, 127])  # half way from white to red
    np.testing.assert_array_equal(rgb[0, 1], [191, 0, 0])  # beyond the max radius: red at 75 %
    np.testing.assert_array_equal(rgb[0, 2:4], 0)  # unknown: black
    np.testing.assert_array_equal(rgb[0, 4], [255, 255, 255])  # no motion: white
    assert (pictures.flow_to_rgb(np.zeros((2, 2, 2), np.float32)) == 255).all()  # all still: no division by zero


def test_robust_max_ignores_a_few_outliers():
    flow = np.zeros((10, 100, 2), np.float32)
    flow[..., 0] = np.linspace(0, 10, 1000).reshape(10, 100)
    flow[0, 0] = (1000, 0)
    assert pictures.robust_max_radius(flow) == pytest.approx(np.percentile(np.hypot(flow[..., 0], flow[..., 1]), 99))
    assert pictures.robust_max_radius(flow) < 11


@pytest.mark.usefixtures("shared_data")
def test_matches_the_reference_implementation_exactly():
    reference = np.load(REFERENCE)
    grid = np.linspace(-1.5, 1.5, 41)
    u, v = np.meshgrid(grid, grid)
    np.testing.assert_array_equal(pictures.flow_to_rgb(np.dstack([u, v]), max_radius=1.0), reference["grid_rgb"])
    flow, valid = flowio.read_flow(str(BENCH / "Sintel" / "training" / "flow" / "market_5" / "frame_0002.flo"))
    crop = flow[180:244, 480:544]
    # The reference normalises by the largest radius plus 1e-5.
    radius = float(np.sqrt((crop.astype(np.float64) ** 2).sum(-1)).max()) + 1e-5
    np.testing.assert_array_equal(pictures.flow_to_rgb(crop, max_radius=radius), reference["market_5_crop_rgb"])


def test_mask_confidence_and_panel():
    occ = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(pictures.mask_to_rgb(occ)[..., 0], [[255, 0], [0, 255]])
    conf = np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(pictures.confidence_to_rgb(conf)[..., 1], [[0, 128], [255, 255]])
    frame = np.full((2, 2, 3), 7, np.uint8)
    flow = np.zeros((2, 2, 2), np.float32)
    full = pictures.panel(frame, flow, occ, conf)
    assert full.shape == (2, 8, 3) and full.dtype == np.uint8
    np.testing.assert_array_equal(full[:, :2], frame)
    np.testing.assert_array_equal(full[:, 4:6, 0], [[255, 0], [0, 255]])
    assert pictures.panel(frame, flow).shape == (2, 4, 3)
    with pytest.raises(ValueError, match=r"expected every map of size \(2, 2\), got \(3, 2\)"):
        pictures.panel(frame, flow, np.zeros((3, 2), bool))


@pytest.mark.usefixtures("shared_data")
def test_write_png_through_fsspec_round_trips(tmp_path):
    sample_flow, valid = flowio.read_flow(str(BENCH / "KITTI" / "training" / "flow_occ" / "000000_10.png"))
    frame = flowio.read_image(str(BENCH / "KITTI" / "training" / "image_2" / "000000_10.png"))
    image = pictures.panel(frame, sample_flow, ~valid, valid.astype(np.float32), valid=valid)
    assert image.shape == (375, 4 * 1242, 3)
    uri = f"memory://viz-{uuid.uuid4().hex}/panels/000000.png"
    try:
        pictures.write_png(uri, image)
        np.testing.assert_array_equal(flowio.read_image(uri), image)
    finally:
        fsspec.filesystem("memory").rm(uri.rsplit("/", 2)[0], recursive=True)
    local = tmp_path / "p.png"
    pictures.write_png(str(local), image[..., 0])
    np.testing.assert_array_equal(flowio.read_image(str(local))[..., 1], image[..., 0])
