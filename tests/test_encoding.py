"""Flow encodings of the output: int16 (1/64 px, planar, delta-encoded) and float16, round trips
through Parquet and npz, the plain-pyarrow recipe, and what the labeler hands to the sink."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.synthetic import Motion, translating_frames
from pipeline.encoding import FLOW_SCALE, INVALID_FLOW, decode_labels, encode_labels, flow_magnitude_sum, quantize_flow
from pipeline.label.labeler import Labeler, LabelerConfig
from pipeline.schema import arrays_from_table
from pipeline.write.sinks import SinkOptions, encode_npz, encode_parquet, write_batch

from .test_schema import chunk_rows


def float_rows(n=3, h=6, w=9, seed=0):
    rows = chunk_rows(n=n, h=h, w=w, seed=seed)
    rng = np.random.default_rng(seed)
    rows["flow"] = rng.normal(0, 40, (n, h, w, 2)).astype(np.float32)
    rows["confidence"] = rng.random((n, h, w)).astype(np.float32)
    return rows


def parquet_round_trip(rows, encoding):
    data = encode_parquet(
        {**rows, **encode_labels(rows, encoding)}, SinkOptions("unused", partition=(), flow_encoding=encoding)
    )
    return pq.read_table(io.BytesIO(data)), data


def test_int16_round_trip_within_half_a_step():
    rows = float_rows()
    table, _ = parquet_round_trip(rows, "int16")
    assert table.schema.field("flow").type.value_type == "int16" and table["flow_scale"].to_pylist() == [64] * 3
    back = arrays_from_table(table)
    assert back["flow"].dtype == np.float32 and back["flow"].shape == rows["flow"].shape
    assert np.abs(back["flow"] - rows["flow"]).max() <= 1 / 128 + 1e-6
    assert np.abs(back["confidence"] - rows["confidence"]).max() <= 1 / 510 + 1e-6
    np.testing.assert_array_equal(back["occlusion"], rows["occlusion"])


def test_int16_plain_pyarrow_recipe():
    """The README's lines: channel planes per row, divided by flow_scale."""
    rows = float_rows(h=5, w=7)
    t, _ = parquet_round_trip(rows, "int16")
    h, w = t["height"][0].as_py(), t["width"][0].as_py()
    stored = t["flow"].combine_chunks().flatten().to_numpy().reshape(-1, 2, h, w).transpose(0, 2, 3, 1)
    flow = stored / t["flow_scale"].to_numpy()[:, None, None, None]
    assert np.abs(flow - rows["flow"]).max() <= 1 / 128 + 1e-6
    confidence = t["confidence"].combine_chunks().flatten().to_numpy().reshape(-1, h, w) / 255
    assert np.abs(confidence - rows["confidence"]).max() <= 1 / 510 + 1e-6


def test_large_and_non_finite_flow_keep_their_range():
    flow = np.zeros((3, 4, 4, 2), np.float32)
    flow[0, 0, 0, 0] = 100.0  # fits at 1/64 px
    flow[1, 1, 1, 1] = -700.25  # beyond ±511 px: this row only gets 1/32 px steps
    flow[2, 2, 2, 0] = np.nan
    stored, scale = quantize_flow(flow)
    assert scale.tolist() == [FLOW_SCALE, 32, FLOW_SCALE]
    assert stored[2, 2, 2, 0] == INVALID_FLOW
    back = decode_labels({"flow": stored, "flow_scale": scale})["flow"]
    assert back[0, 0, 0, 0] == 100.0 and back[1, 1, 1, 1] == -700.25
    assert np.isnan(back[2, 2, 2, 0]) and np.isnan(back).sum() == 1


def test_float16_is_stored_as_given():
    rows = chunk_rows()  # float16 flow and confidence, as the labeler emits them for this encoding
    table, _ = parquet_round_trip(rows, "float16")
    assert "flow_scale" not in table.column_names
    back = arrays_from_table(table)
    for name in ("flow", "occlusion", "confidence"):
        np.testing.assert_array_equal(back[name], rows[name])


@pytest.mark.parametrize("encoding, flow_codec", [("int16", "DELTA_BINARY_PACKED"), ("float16", "BYTE_STREAM_SPLIT")])
def test_parquet_column_encodings_are_applied(encoding, flow_codec):
    _, data = parquet_round_trip(float_rows(), encoding)
    group = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert flow_codec in columns["flow.list.element"].encodings
    assert "BYTE_STREAM_SPLIT" in columns["confidence.list.element"].encodings
    assert not columns["flow.list.element"].is_stats_set and columns["frame0"].is_stats_set


def test_int16_is_smaller_on_smooth_flow():
    """Planar deltas of a smooth field are small: the int16 file holds the labels in well under
    the float16 file's bytes (the default's reason to exist)."""
    h, w = 96, 128
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack([3 + 0.05 * xs, -1 + 0.03 * ys], -1)[None].repeat(2, 0)
    rows = float_rows(n=2, h=h, w=w)
    rows.update(flow=flow, confidence=np.exp(-np.abs(flow[..., 0] - 5)), occlusion=np.zeros((2, h, w), np.uint8))
    sizes = {enc: len(parquet_round_trip(rows, enc)[1]) for enc in ("int16", "float16")}
    assert sizes["int16"] < 0.6 * sizes["float16"], sizes


def test_encode_is_idempotent_and_checks_its_input():
    rows = float_rows()
    once = encode_labels(rows, "int16")
    twice = encode_labels({**rows, **once}, "int16")
    for name in ("flow", "flow_scale", "confidence", "occlusion"):
        np.testing.assert_array_equal(once[name], twice[name])
    with pytest.raises(ValueError, match="float16 encoding: expected float flow"):
        encode_labels({**rows, **once}, "float16")
    with pytest.raises(ValueError, match="flow_encoding"):
        SinkOptions("x", flow_encoding="png")
    flow = rows["flow"].astype(np.float64)
    expected = np.linalg.norm(flow, axis=-1).sum()
    assert flow_magnitude_sum(once) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("encoding", ["int16", "float16"])
def test_the_magnitude_sum_leaves_non_finite_flow_out_in_both_encodings(encoding):
    rows = float_rows(n=1, h=1, w=4)
    rows["flow"] = np.array([[[[3, 4], [np.inf, 0], [0, -np.inf], [np.nan, 1]]]], np.float32)
    stored = {**rows, **encode_labels(rows, encoding)}
    assert flow_magnitude_sum(stored) == 5.0


@pytest.mark.parametrize("encoding", ["int16", "float16"])
def test_labeler_hands_over_the_stored_arrays(encoding, tmp_path):
    frames = np.stack(translating_frames(48, 64, 3, Motion(2.0, 1.0), seed=3))
    batch = {
        "video_id": np.array(["v"] * 3, object),
        "chunk": np.array(["0-1"] * 3, object),
        "frame": np.arange(3, dtype=np.int32),
        "time": np.zeros(3),
        "pair_with": np.array([1, 2, -1], np.int32),
        "ordinal": np.array([0, 1, -1]),
        "image": frames,
    }
    [out] = Labeler(LabelerConfig(model="dis"), flow_encoding=encoding)(batch)
    stored = {"int16": (np.int16, np.uint8), "float16": (np.float16, np.float16)}[encoding]
    assert (out["flow"].dtype, out["confidence"].dtype) == stored
    assert ("flow_scale" in out) == (encoding == "int16")
    flow = decode_labels(out)["flow"].astype(np.float32)
    assert np.linalg.norm(flow[:, 8:-8, 8:-8] - [2.0, 1.0], axis=-1).mean() < 0.5

    # the sink writes what it was handed, in both formats, and the summary reads it in pixels
    rows = {**chunk_rows(n=2, h=48, w=64), **{k: v for k, v in out.items() if k not in ("video_id", "chunk")}}
    options = SinkOptions(str(tmp_path), formats=("parquet", "npz"), flow_encoding=encoding)
    summary = write_batch(rows, options)
    assert summary["flow_magnitude_sum"][0] == pytest.approx(np.linalg.norm(flow, axis=-1).sum(), rel=1e-3)
    [parquet] = tmp_path.rglob("*.parquet")
    [npz] = tmp_path.rglob("*.npz")
    with np.load(npz) as data:
        from_npz = decode_labels(dict(data))
    from_parquet = arrays_from_table(pq.read_table(parquet))
    for name in ("flow", "occlusion", "confidence"):
        np.testing.assert_array_equal(from_npz[name], from_parquet[name])


@pytest.mark.parametrize("encoding", ["int16", "float16"])
def test_device_encoding_stores_what_the_host_encoding_stores(encoding):
    """encode_on_device (torch, where the labels are) and encode_labels (numpy) give the same bytes:
    rows at 1, 10, 100, 600 and 3000 px (the last two need coarser int16 steps), NaN and ∞ included."""
    import torch

    from pipeline.encoding import check_device_encoding, encode_on_device

    rng = np.random.default_rng(0)
    flow = (rng.standard_normal((5, 2, 7, 9)) * np.array([1, 10, 100, 600, 3000])[:, None, None, None]).astype(
        np.float32
    )
    flow[1, 0, 2, 3], flow[2, 1, 1, 1] = np.nan, np.inf
    confidence, occlusion = rng.random((5, 7, 9)).astype(np.float32), rng.random((5, 7, 9)) > 0.5
    on_device = encode_on_device(
        torch.from_numpy(flow), torch.from_numpy(occlusion), torch.from_numpy(confidence), encoding
    )
    stored = check_device_encoding({k: v.numpy() for k, v in on_device.items()})
    expected = encode_labels(
        {"flow": flow.transpose(0, 2, 3, 1), "occlusion": occlusion, "confidence": confidence}, encoding
    )
    assert sorted(stored) == sorted(expected)
    for name, value in expected.items():
        assert stored[name].dtype == value.dtype and np.array_equal(stored[name], value, equal_nan=True), name
    if encoding == "int16":  # 64 per px, or the largest power of two that holds the row's peak
        peak = np.nanmax(np.where(np.isinf(flow), np.nan, np.abs(flow)).reshape(5, -1), axis=1)
        scale = stored["flow_scale"]
        assert scale[:3].tolist() == [64, 64, 64] and (scale[3:] < 64).all()
        assert (peak * scale <= 32767).all() and (peak[3:] * scale[3:] * 2 > 32767).all()


def test_device_encoding_refuses_flow_int16_cannot_hold():
    import torch

    from pipeline.encoding import check_device_encoding, encode_on_device

    flow = torch.full((1, 2, 2, 2), 40000.0)
    on_device = encode_on_device(flow, torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(1, 2, 2), "int16")
    with pytest.raises(ValueError, match="expected \\|values\\| ≤ 32767 px for int16 storage, got 40000 px"):
        check_device_encoding({k: v.numpy() for k, v in on_device.items()})


def test_the_files_are_written_from_stored_arrays_only():
    """Parquet and npz take the stored arrays as they are (encoded once, by the labeler or write_chunk):
    float labels reaching them are refused, not quietly encoded again."""
    rows = float_rows()
    options = SinkOptions("unused", partition=())
    with pytest.raises(ValueError, match=r"flow: expected the stored int16 array \(int16\), got float32"):
        encode_parquet(rows, options)
    stored = {**rows, **encode_labels(rows, "int16")}
    del stored["flow_scale"]
    with pytest.raises(ValueError, match="flow_scale"):
        encode_npz(stored, "int16")
