"""flowio against the real benchmark files in ../shared/data and their independently known facts."""

from __future__ import annotations

import struct

import cv2
import fsspec
import numpy as np
import pytest

from pipeline.evaluate import flowio

from .conftest import BENCHMARKS as BENCH

SINTEL_FLOW = BENCH / "Sintel" / "training" / "flow"
MIDDLEBURY = BENCH / "middlebury"
KITTI_FLOW = BENCH / "KITTI" / "training" / "flow_occ" / "000000_10.png"
CHAIRS = BENCH / "FlyingChairs_release" / "data"


def mean_magnitude(flow: np.ndarray, valid: np.ndarray) -> float:
    """EPE of a zero prediction: mean ‖gt‖ over valid pixels."""
    return float(np.hypot(flow[..., 0], flow[..., 1])[valid].mean())


# ----------------------------------------------------------------------------- .flo


@pytest.mark.usefixtures("shared_data")
def test_every_shared_flo_starts_with_the_magic_and_decodes_to_its_header_size():
    files = sorted(BENCH.rglob("*.flo"))
    assert len(files) == 5 + 8 + 9  # Sintel, Middlebury, FlyingChairs
    for path in files:
        data = path.read_bytes()
        magic, width, height = struct.unpack("<fii", data[:12])
        assert magic == 202021.25, path
        flow, valid = flowio.read_flow(str(path))
        assert flow.shape == (height, width, 2) and flow.dtype == np.float32
        assert valid.shape == (height, width) and valid.dtype == bool


@pytest.mark.parametrize("frame, expected", [(1, 2.803), (2, 2.983), (3, 3.120)])
@pytest.mark.usefixtures("shared_data")
def test_sintel_alley_1_zero_flow_epe(frame, expected):
    flow, valid = flowio.read_flow(str(SINTEL_FLOW / "alley_1" / f"frame_{frame:04d}.flo"))
    assert flow.shape == (436, 1024, 2)
    assert valid.all()  # Sintel defines flow everywhere
    assert mean_magnitude(flow, valid) == pytest.approx(expected, abs=5e-4)


@pytest.mark.usefixtures("shared_data")
def test_rubberwhale_unknown_pixels_and_zero_flow_epe():
    flow, valid = flowio.read_flow(str(MIDDLEBURY / "other-gt-flow" / "RubberWhale" / "flow10.flo"))
    assert int((~valid).sum()) == 3622
    assert mean_magnitude(flow, valid) == pytest.approx(1.256, abs=5e-4)
    assert np.all(flow[~valid] == 0)  # unknown flow never leaks 1e9 values into arithmetic


@pytest.mark.parametrize("sequence", ["Dimetrodon", "Hydrangea"])
@pytest.mark.usefixtures("shared_data")
def test_middlebury_1_67e9_markers_are_invalid(sequence):
    path = MIDDLEBURY / "other-gt-flow" / sequence / "flow10.flo"
    raw = np.frombuffer(path.read_bytes(), "<f4", offset=12).reshape(-1, 2)
    marked = (np.abs(raw) > 1e9).any(axis=1)
    assert marked.any() and np.allclose(raw[marked], 1.6666668e9)
    flow, valid = flowio.read_flow(str(path))
    np.testing.assert_array_equal(~valid.ravel(), marked)
    assert np.abs(flow).max() < 100


@pytest.mark.usefixtures("shared_data")
def test_flyingchairs_00004_zero_flow_epe():
    flow, valid = flowio.read_flow(str(CHAIRS / "00004_flow.flo"))
    assert flow.shape == (384, 512, 2) and valid.all()
    assert mean_magnitude(flow, valid) == pytest.approx(25.556, abs=5e-4)


def test_flo_round_trip_is_exact_with_invalid_pixels():
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=30, size=(7, 5, 2)).astype(np.float32)
    valid = rng.random((7, 5)) > 0.3
    data = flowio.encode_flo(flow, valid)
    assert len(data) == 12 + 7 * 5 * 8
    assert struct.unpack("<fii", data[:12]) == (202021.25, 5, 7)  # width before height
    back, back_valid = flowio.decode_flo(data)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])
    assert np.all(back[~valid] == 0)


def test_flo_rejects_bad_magic_and_truncation():
    good = flowio.encode_flo(np.zeros((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="expected magic 202021.25"):
        flowio.decode_flo(b"\0\0\0\0" + good[4:])
    with pytest.raises(ValueError, match="expected 60 bytes for 3×2, got 56"):
        flowio.decode_flo(good[:-4])


# ----------------------------------------------------------------------------- KITTI PNG


@pytest.mark.usefixtures("shared_data")
def test_kitti_000000_valid_fraction_max_flow_and_zero_flow_epe():
    flow, valid = flowio.read_flow(str(KITTI_FLOW))
    assert flow.shape == (375, 1242, 2)
    assert valid.mean() == pytest.approx(0.162, abs=5e-4)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])[valid]
    assert round(float(magnitude.max())) == 190
    assert mean_magnitude(flow, valid) == pytest.approx(51.010, abs=5e-4)


@pytest.mark.usefixtures("shared_data")
def test_kitti_channels_are_u_from_red_and_v_from_green():
    flow, valid = flowio.read_flow(str(KITTI_FLOW))
    # A camera driving forward: the scene expands, so u < 0 on the left, u > 0 on the right,
    # and the road below the horizon moves down (v > 0). A u/v or R/B mix-up breaks this.
    width = flow.shape[1]
    left, right = valid.copy(), valid.copy()
    left[:, width // 4 :] = False
    right[:, : 3 * width // 4] = False
    assert flow[..., 0][left].mean() < -50 and flow[..., 0][right].mean() > 50
    assert flow[..., 1][valid].mean() > 5
    # And the exact decoding of the raw 16-bit channels, read by another OpenCV path (B, G, R order).
    raw = cv2.imread(str(KITTI_FLOW), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR).astype(np.float64)
    np.testing.assert_array_equal(valid, raw[..., 0] > 0)
    np.testing.assert_array_equal(flow[valid, 0], ((raw[..., 2] - 32768) / 64)[valid])
    np.testing.assert_array_equal(flow[valid, 1], ((raw[..., 1] - 32768) / 64)[valid])


def test_kitti_round_trip_at_1_64_px_and_devkit_clipping():
    rng = np.random.default_rng(1)
    flow = rng.uniform(-300, 300, size=(6, 9, 2)).astype(np.float32)
    flow[0, 0] = (600.0, -700.0)  # beyond ±512 px: clipped as the devkit clips
    valid = rng.random((6, 9)) > 0.25
    valid[0, 0] = True
    back, back_valid = flowio.decode_kitti_flow(flowio.encode_kitti_flow(flow, valid))
    np.testing.assert_array_equal(back_valid, valid)
    quantized = np.clip(np.rint(flow * 64) / 64, -512, 65535 / 64 - 512)
    np.testing.assert_array_equal(back[valid], quantized[valid])
    assert np.abs(back[valid] - flow[valid])[1:].max() <= 1 / 128
    assert tuple(back[0, 0]) == (65535 / 64 - 512, -512.0)
    # Re-encoding what was read gives the same bytes' worth of values: 1/64 px is exact.
    again, _ = flowio.decode_kitti_flow(flowio.encode_kitti_flow(back, back_valid))
    np.testing.assert_array_equal(again, back)


def test_kitti_rejects_an_8_bit_png():
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="expected a 16-bit 3-channel PNG, got uint8"):
        flowio.decode_kitti_flow(buf.tobytes())


# ----------------------------------------------------------------------------- PFM


def _hand_made_pfm(rows_top_to_bottom: np.ndarray, kind: bytes, big_endian: bool) -> bytes:
    """PFM bytes written by hand from the specification: bottom row first, scale sign = byte order."""
    height, width = rows_top_to_bottom.shape[:2]
    scale = b"1.0" if big_endian else b"-1.0"
    body = np.ascontiguousarray(rows_top_to_bottom[::-1]).astype(">f4" if big_endian else "<f4").tobytes()
    return kind + b"\n" + b"%d %d\n" % (width, height) + scale + b"\n" + body


@pytest.mark.parametrize("big_endian", [False, True])
def test_pfm_byte_order_and_bottom_to_top_rows(big_endian):
    image = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5 - 4
    decoded = flowio.decode_pfm(_hand_made_pfm(image, b"Pf", big_endian))
    np.testing.assert_array_equal(decoded, image)
    assert decoded[0, 0] == -4  # the first row stored in the file is the image's bottom row


def test_pfm_three_channel_flow_drops_the_third_channel():
    rng = np.random.default_rng(2)
    stored = rng.normal(size=(5, 6, 3)).astype(np.float32)
    stored[1, 2, 0] = np.nan  # FlyingThings3D has a few NaN flows
    flow, valid = flowio.decode_pfm_flow(_hand_made_pfm(stored, b"PF", big_endian=True))
    assert flow.shape == (5, 6, 2)
    assert not valid[1, 2] and valid.sum() == 29
    np.testing.assert_array_equal(flow[valid], stored[..., :2][valid])


def test_pfm_writer_round_trips_and_agrees_with_opencvs_pfm_codec():
    rng = np.random.default_rng(3)
    flow = rng.normal(scale=20, size=(8, 11, 2)).astype(np.float32)
    valid = rng.random((8, 11)) > 0.2
    data = flowio.encode_pfm_flow(flow, valid)
    back, back_valid = flowio.decode_pfm_flow(data)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])
    # OpenCV's PFM codec is an independent implementation; it returns channels as B, G, R.
    by_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(by_opencv[..., 2][valid], flow[..., 0][valid])
    np.testing.assert_array_equal(by_opencv[..., 1][valid], flow[..., 1][valid])
    gray = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(flowio.decode_pfm(flowio.encode_pfm(gray)), gray)
    ok, buf = cv2.imencode(".pfm", gray)
    np.testing.assert_array_equal(flowio.decode_pfm(buf.tobytes()), gray)


def test_pfm_rejects_a_bad_header():
    with pytest.raises(ValueError, match="expected a header"):
        flowio.decode_pfm(b"P6\n2 2\n255\n" + bytes(12))


# ----------------------------------------------------------------------------- images


@pytest.mark.usefixtures("shared_data")
def test_middlebury_gray_frames_become_rgb():
    path = MIDDLEBURY / "other-data-gray" / "Venus" / "frame10.png"
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2  # really single-channel on disk
    image = flowio.read_image(str(path))
    assert image.shape == (380, 420, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    np.testing.assert_array_equal(image[..., 0], cv2.imread(str(path), cv2.IMREAD_UNCHANGED))


@pytest.mark.usefixtures("shared_data")
def test_chairs_ppm_with_trailing_space_header_reads_as_rgb():
    path = CHAIRS / "00004_img1.ppm"
    data = path.read_bytes()
    assert len(data) == 589_841 and data.startswith(b"P6 \n512 384 \n255\n")
    image = flowio.read_image(str(path))
    # PPM stores R, G, B after the header: the last 512·384·3 bytes are the pixels.
    expected = np.frombuffer(data[-512 * 384 * 3 :], np.uint8).reshape(384, 512, 3)
    np.testing.assert_array_equal(image, expected)


@pytest.mark.usefixtures("shared_data")
def test_sintel_png_is_rgb_and_png_variants_decode():
    image = flowio.read_image(str(BENCH / "Sintel" / "training" / "clean" / "alley_1" / "frame_0001.png"))
    assert image.shape == (436, 1024, 3) and image.dtype == np.uint8
    bgr = cv2.imread(str(BENCH / "Sintel" / "training" / "clean" / "alley_1" / "frame_0001.png"))
    np.testing.assert_array_equal(image, bgr[..., ::-1])

    rgb = np.random.default_rng(4).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    bgra = np.dstack([rgb[..., ::-1], np.full((5, 7), 17, np.uint8)])
    ok, png_alpha = cv2.imencode(".png", bgra)
    np.testing.assert_array_equal(flowio.decode_image(png_alpha.tobytes()), rgb)  # alpha dropped
    ok, png16 = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257 + 3)
    np.testing.assert_array_equal(flowio.decode_image(png16.tobytes()), rgb)  # 16-bit → high byte
    ok, jpg = cv2.imencode(
        ".jpg", np.zeros((8, 8, 3), np.uint8) + np.uint8([0, 0, 200]), [cv2.IMWRITE_JPEG_QUALITY, 100]
    )
    decoded = flowio.decode_image(jpg.tobytes())
    assert decoded.shape == (8, 8, 3) and abs(int(decoded[..., 0].mean()) - 200) <= 2 and decoded[..., 2].max() <= 3


@pytest.mark.usefixtures("shared_data")
def test_image_and_flow_errors_name_the_file():
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        flowio.read_image(str(BENCH / "nowhere.png"))
    with pytest.raises(ValueError, match=r"flow\.txt: expected a flow file ending in"):
        flowio.decode_flow(b"", "flow.txt")


# ----------------------------------------------------------------------------- through fsspec


@pytest.mark.usefixtures("shared_data")
def test_memory_filesystem_reads_shared_files_and_round_trips_writers(memory_root):
    fs = fsspec.filesystem("memory")
    flo_uri = f"{memory_root}/alley_1/frame_0002.flo"
    fs.pipe(flo_uri, (SINTEL_FLOW / "alley_1" / "frame_0002.flo").read_bytes())
    flow, valid = flowio.read_flow(flo_uri)
    local_flow, _ = flowio.read_flow(str(SINTEL_FLOW / "alley_1" / "frame_0002.flo"))
    np.testing.assert_array_equal(flow, local_flow)
    assert mean_magnitude(flow, valid) == pytest.approx(2.983, abs=5e-4)

    kitti_uri = f"{memory_root}/kitti/flow_occ/000000_10.png"
    fs.pipe(kitti_uri, KITTI_FLOW.read_bytes())
    assert flowio.read_flow(kitti_uri)[1].mean() == pytest.approx(0.162, abs=5e-4)

    for suffix in (".flo", ".png", ".pfm"):
        uri = f"{memory_root}/out/sub/written{suffix}"
        flowio.write_flow(uri, local_flow, valid)
        back, back_valid = flowio.read_flow(uri)
        np.testing.assert_array_equal(back_valid, valid)
        tolerance = 1 / 128 if suffix == ".png" else 0
        assert np.abs(back - local_flow).max() <= tolerance


def test_write_flow_creates_local_folders(tmp_path):
    uri = str(tmp_path / "a" / "b" / "f.flo")
    flowio.write_flow(uri, np.ones((2, 2, 2), np.float32))
    assert flowio.read_flow(uri)[0].sum() == 8
