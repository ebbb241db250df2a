"""The output contract: rows written by the sinks read back with plain pyarrow and numpy."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.schema import arrays_from_table, to_table
from pipeline.write.sinks import SinkOptions, committed_chunks, write_batch


def chunk_rows(n=3, h=5, w=7, seed=0, video="v1", chunk="00000000-00000002", t0=None, unit_chunks=""):
    rng = np.random.default_rng(seed)
    return {
        "video_id": np.full(n, video, object),
        "source": np.full(n, f"s3://b/{video}.mp4", object),
        "corpus": np.full(n, "corp", object),
        "chunk": np.full(n, chunk, object),
        "unit": np.full(n, f"{video}-00000000", object),
        "unit_chunks": np.full(n, unit_chunks, object),
        "frame0": np.arange(n, dtype=np.int32),
        "frame1": np.arange(1, n + 1, dtype=np.int32),
        "t0": np.full(n, np.nan) if t0 is None else t0,
        "t1": np.full(n, np.nan),
        "height": np.full(n, h, np.int32),
        "width": np.full(n, w, np.int32),
        "source_height": np.full(n, 2 * h, np.int32),
        "source_width": np.full(n, 2 * w, np.int32),
        "model": np.full(n, "dis", object),
        "checkpoint": np.full(n, "", object),
        "flow": rng.normal(0, 20, (n, h, w, 2)).astype(np.float16),
        "occlusion": rng.integers(0, 2, (n, h, w)).astype(np.uint8),
        "confidence": rng.random((n, h, w)).astype(np.float16),
    }


def test_table_round_trip_and_nulls():
    rows = chunk_rows(t0=np.array([0.0, np.nan, 0.5]))
    table = to_table(rows, flow_encoding="float16")  # stored as given: exact (int16: tests/test_encoding.py)
    # The documented columns and types (docs/output.md), spelled out rather than taken from output_schema.
    strings, ints = (
        ("video_id", "source", "corpus", "model", "checkpoint"),
        ("frame0", "frame1", "height", "width", "source_height", "source_width"),
    )
    types = {
        **dict.fromkeys(strings, pa.string()),
        **dict.fromkeys(ints, pa.int32()),
        "t0": pa.float64(),
        "t1": pa.float64(),
        "flow": pa.list_(pa.float16()),
        "occlusion": pa.list_(pa.uint8()),
        "confidence": pa.list_(pa.float16()),
    }
    assert {f.name: f.type for f in table.schema} == types
    assert table.schema.field("flow").metadata == {
        b"flowlabel.encoding": b"float16",
        b"flowlabel.layout": "H×W×2".encode(),
    }
    assert table["t0"].to_pylist() == [0.0, None, 0.5]
    arrays = arrays_from_table(table)
    for name in ("flow", "occlusion", "confidence"):
        np.testing.assert_array_equal(arrays[name], rows[name])


@pytest.mark.parametrize("partition", [("corpus", "video"), ("video",), ("corpus",), ()])
def test_written_dataset_reads_with_plain_pyarrow(tmp_path, partition):
    options = SinkOptions(str(tmp_path), formats=("parquet", "npz"), partition=partition, flow_encoding="float16")
    a, b = chunk_rows(video="v1"), chunk_rows(n=2, h=4, w=9, seed=1, video="v2", chunk="00000000-00000001")
    summary = write_batch(
        {
            k: np.concatenate([a[k], b[k]])
            if k not in ("flow", "occlusion", "confidence")
            else np.array(list(a[k]) + list(b[k]), dtype=object)
            for k in a
        },
        options,
    )
    assert sorted(summary["video_id"].tolist()) == ["v1", "v2"] and summary["pairs"].tolist() == [3, 2]
    assert committed_chunks(options) == {"v1": {"00000000-00000002"}, "v2": {"00000000-00000001"}}

    def expected(video, chunk):
        parts = {"corpus": "corpus=corp", "video": f"video={video}"}
        name = chunk if "video" in partition else f"{video}-{chunk}"
        return "/".join([parts[k] for k in partition] + [name]) + ".parquet"

    files = sorted(tmp_path.rglob("*.parquet"))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        expected("v1", "00000000-00000002"),
        expected("v2", "00000000-00000001"),
    ]

    # The README recipe: three lines of plain pyarrow give arrays of the documented shapes.
    t = pq.read_table(files[0])
    h, w = t["height"][0].as_py(), t["width"][0].as_py()
    flow = t["flow"].combine_chunks().flatten().to_numpy().reshape(-1, h, w, 2)
    np.testing.assert_array_equal(flow, a["flow"])

    # The whole folder reads as one dataset (files of different sizes share one schema);
    # npz shards under _npz/ are skipped by pyarrow and hold the same arrays.
    dataset = pq.read_table(tmp_path)
    assert dataset.num_rows == 5
    if "corpus" in partition:
        assert set(dataset["corpus"].to_pylist()) == {"corp"}
    npz = sorted((tmp_path / "_npz").rglob("*.npz"))
    with np.load(npz[1]) as data:
        np.testing.assert_array_equal(data["flow"], b["flow"])
        assert data["frame0"].tolist() == [0, 1] and data["video_id"].tolist() == ["v2", "v2"]


def test_bad_sink_options():
    with pytest.raises(ValueError, match="formats"):
        SinkOptions("x", formats=("csv",))
    with pytest.raises(ValueError, match="partition"):
        SinkOptions("x", partition=("date",))


def test_a_chunk_counts_as_committed_only_in_every_format(tmp_path):
    options = SinkOptions(str(tmp_path), formats=("parquet", "npz"))
    write_batch(chunk_rows(), options)
    [npz] = (tmp_path / "_npz").rglob("*.npz")
    npz.unlink()  # as if the job died between the two formats
    assert committed_chunks(options) == {}
    assert committed_chunks(SinkOptions(str(tmp_path), formats=("parquet",))) == {"v1": {"00000000-00000002"}}
