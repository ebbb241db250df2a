"""``flowlabel viz``: labels written by ``flowlabel label`` (Parquet and npz) → PNG panels and an MP4;
benchmark pairs with and without a model; flow files. Checks shapes, and that the pictures hold the
frames and masks they claim to."""

from __future__ import annotations

import av
import numpy as np
import pytest

from jobs.cli import main
from jobs.visualize import find_label_files, read_label_file, viz_flow_file, viz_labels, viz_pair
from pipeline.evaluate import flowio, pictures
from pipeline.label.labeler import LabelerConfig
from pipeline.read.decode import DecodeReport, iter_video_frames
from pipeline.storage import filesystem

from .conftest import BENCHMARKS, VIDEOS

BEAR = VIDEOS / "bear-vp9-odd-dimensions.webm"  # 161×121 VP9, 30 frames


def read_png(path) -> np.ndarray:
    return flowio.read_image(str(path))


def find_tile(panel: np.ndarray, tile: np.ndarray, x: int = 0, max_y: int = 80) -> int:
    """Row where ``tile`` sits in ``panel`` at column ``x`` (below a caption); fails when it is not there."""
    h, w = tile.shape[:2]
    for y in range(max_y):
        if np.array_equal(panel[y : y + h, x : x + w], tile):
            return y
    raise AssertionError("tile not found in the panel")


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_viz_labels_of_a_label_run_png_and_mp4(ray_local, tmp_path):
    out = tmp_path / "labels"
    assert main(["label", str(BEAR), "--out", str(out), "--max-pairs-per-video", "4", "--format", "both"]) == 0
    parquet, npz = find_label_files(str(out)), find_label_files(str(out / "_npz"))
    assert len(parquet) == len(npz) == 1 and parquet[0].endswith(".parquet") and npz[0].endswith(".npz")
    fs, _ = filesystem(str(out))
    a, b = read_label_file(fs, parquet[0]), read_label_file(fs, npz[0])
    for name in ("flow", "occlusion", "confidence", "frame0"):
        np.testing.assert_array_equal(a[name], b[name])
    assert a["flow"].shape == (4, 121, 161, 2)

    pictures = tmp_path / "pictures"
    written = viz_labels(str(out), str(pictures), max_png=2, mp4=True)
    pngs = sorted(p for p in written if p.endswith(".png"))
    (mp4,) = [p for p in written if p.endswith(".mp4")]
    assert [p.rsplit("/", 1)[-1] for p in pngs] == ["000000-000001.png", "000003-000004.png"]
    panel = read_png(pngs[1])
    # 2×2 grid of tiles doubled to 322×242 (readable), 4 px apart, each under a caption strip.
    assert panel.shape[1] == 2 * 322 + 4 and panel.dtype == np.uint8
    with open(BEAR, "rb") as video:
        frames = {f.index: f.image for f in iter_video_frames(video, DecodeReport()) if f.index < 5}
    frame3 = np.repeat(np.repeat(frames[3], 2, axis=0), 2, axis=1)
    top = find_tile(panel, frame3)
    # The occlusion tile (bottom left) is the labels' mask, white where occluded.
    occlusion = np.repeat(np.repeat(a["occlusion"][3].astype(bool), 2, axis=0), 2, axis=1)
    expected = np.repeat((occlusion * np.uint8(255))[..., None], 3, axis=2)
    assert find_tile(panel, expected, max_y=panel.shape[0] - 242) > top + 242

    with av.open(mp4) as container:
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(video) == 4
    assert video[0].shape[1] == 648 and video[0].shape[0] in (panel.shape[0], panel.shape[0] + 1)
    # H.264 is lossy: the picture is close to the PNG panel, not equal.
    assert np.abs(video[3][: panel.shape[0]].astype(int) - panel.astype(int)).mean() < 8


@pytest.mark.usefixtures("shared_data")
def test_viz_pair_without_and_with_a_model(tmp_path):
    root = str(BENCHMARKS / "middlebury")
    (plain,) = viz_pair("middlebury", root, ["RubberWhale/*"], str(tmp_path / "a"))
    (model,) = viz_pair("middlebury", root, ["RubberWhale/*"], str(tmp_path / "b"), labeler=LabelerConfig("dis"))
    assert plain.endswith("middlebury_training_RubberWhale_10.png")
    image0 = flowio.read_image(str(BENCHMARKS / "middlebury/other-data/RubberWhale/frame10.png"))
    a, b = read_png(plain), read_png(model)
    assert a.shape[1] == b.shape[1] == 3 * 584 + 2 * 4  # frame 0 | frame 1 | ground truth
    row = a.shape[0]  # one row of tiles without a model; three with one (prediction, error, occlusion, confidence)
    assert b.shape[0] == 3 * row + 2 * 4
    find_tile(a, image0)
    find_tile(b, image0)


@pytest.mark.usefixtures("shared_data")
def test_viz_flow_file_blackens_invalid_pixels(tmp_path):
    flow_path = BENCHMARKS / "KITTI/training/flow_occ/000000_10.png"
    image_path = BENCHMARKS / "KITTI/training/image_2/000000_10.png"
    path = viz_flow_file(str(flow_path), str(tmp_path), image=str(image_path))
    panel = read_png(path)
    flow, valid = flowio.read_flow(str(flow_path))
    h, w = valid.shape
    assert panel.shape[1] == 2 * w + 4
    find_tile(panel, flowio.read_image(str(image_path)))
    # The flow tile is the Middlebury colouring (with its key) at the 99th-percentile scale.
    expected = pictures.with_colour_key(pictures.flow_to_rgb(flow, valid, pictures.robust_max_radius(flow, valid)))
    top = find_tile(panel, expected, x=w + 4)
    body = panel[top : top + h, w + 4 : w + 4 + w - w // 3]  # left of the colour key in the top-right corner
    assert (body[~valid[:, : w - w // 3]] == 0).all()  # 84 % of pixels have no ground truth: black
    assert (body[valid[:, : w - w // 3]].max(axis=1) > 0).all()


@pytest.mark.usefixtures("shared_data")
def test_cli_viz_exit_codes(tmp_path, capsys):
    flow = str(BENCHMARKS / "Sintel/training/flow/alley_1/frame_0001.flo")
    assert main(["viz", "flow", flow, "--out", str(tmp_path)]) == 0
    assert read_png(tmp_path / "frame_0001.png").shape[1] == 1024
    assert main(["viz", "flow", str(tmp_path / "missing.flo"), "--out", str(tmp_path)]) == 1
    assert "missing.flo" in capsys.readouterr().err
