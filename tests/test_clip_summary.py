"""The per-clip motion summary table and the summary store, as plain functions (no Ray, no model)."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.label.motion import aggregate
from pipeline.schema import MOTION_COLUMNS, SCALAR_COLUMNS, output_schema, to_table
from pipeline.write.clip_summary import (
    CLIP_SUMMARY_DIR,
    CLIP_TABLE_COLUMNS,
    PAIR_COLUMNS,
    clip_table,
    read_pair_columns,
    summarize_clips,
    write_clip_summary,
)
from pipeline.write.sinks import SinkOptions, committed_chunks, write_batch


def pair_rows(
    video: str, n: int, seed: int, first: int = 0, fps: float | None = 30.0, h: int = 6, w: int = 8, dense: bool = True
) -> dict:
    """One chunk of n pair rows as the labeler hands them to the sink: scalar, motion and (dense) array columns."""
    rng = np.random.default_rng(seed)
    frame0 = np.arange(first, first + n, dtype=np.int32)
    times = (lambda f: f / fps) if fps else (lambda f: np.full(len(f), np.nan))
    rows = {
        "video_id": np.full(n, video, object),
        "source": np.full(n, f"s3://b/{video}.mp4", object),
        "corpus": np.full(n, "corp", object),
        "chunk": np.full(n, f"{first:08d}-{first + n - 1:08d}", object),
        "unit": np.full(n, f"{video}-0", object),
        "unit_chunks": np.full(n, "", object),
        "frame0": frame0,
        "frame1": frame0 + 1,
        "t0": times(frame0),
        "t1": times(frame0 + 1),
        "height": np.full(n, h, np.int32),
        "width": np.full(n, w, np.int32),
        "source_height": np.full(n, h, np.int32),
        "source_width": np.full(n, w, np.int32),
        "model": np.full(n, "dis", object),
        "checkpoint": np.full(n, "", object),
        **{name: rng.uniform(0, 5, n).astype(np.float32) for name in MOTION_COLUMNS},
    }
    rows["occluded_fraction"] = rng.uniform(0, 1, n).astype(np.float32)
    rows["camera_tx"][0] = np.nan  # a pair without a camera fit (no valid pixel)
    if dense:
        rows.update(
            flow=rng.normal(0, 3, (n, h, w, 2)).astype(np.float32),
            occlusion=rng.integers(0, 2, (n, h, w)).astype(np.uint8),
            confidence=rng.random((n, h, w)).astype(np.float32),
        )
    return rows


def concat(*chunks: dict) -> dict:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def expected_row(*chunks: dict, with_dt: bool = True) -> dict:
    rows = concat(*chunks)
    order = np.argsort(rows["frame0"], kind="stable")
    stats = {n: rows[n][order] for n in MOTION_COLUMNS}
    dt = (rows["t1"] - rows["t0"])[order] if with_dt else None
    return aggregate(stats, dt=dt)


def test_clip_table_is_aggregate_per_video_with_duration():
    a1, a2 = pair_rows("a", 4, seed=1), pair_rows("a", 3, seed=2, first=4)
    b, c = pair_rows("b", 5, seed=3, fps=None), pair_rows("c", 1, seed=4, first=7, fps=10.0)
    mixed = concat(a2, b, c, a1)  # chunks out of order, as a dataset may read them
    pairs = pa.table({n: pa.array(mixed[n], t) for n, t in PAIR_COLUMNS.items()})
    table = clip_table(pairs)
    assert table.schema == pa.schema(list(CLIP_TABLE_COLUMNS.items()))
    assert table["video_id"].to_pylist() == ["a", "b", "c"]  # sorted by source
    assert table["source"].to_pylist() == ["s3://b/a.mp4", "s3://b/b.mp4", "s3://b/c.mp4"]
    assert table["pairs"].to_pylist() == [7, 5, 1] and table["corpus"].to_pylist() == ["corp"] * 3
    got = table.to_pylist()
    for row, chunks, with_dt in ((got[0], (a1, a2), True), (got[1], (b,), False), (got[2], (c,), True)):
        for name, value in expected_row(*chunks, with_dt=with_dt).items():
            assert (value == row[name]) or (math.isnan(value) and math.isnan(row[name])), (row["video_id"], name)
    assert got[0]["duration"] == pytest.approx(7 / 30) and got[2]["duration"] == pytest.approx(0.1)
    assert math.isnan(got[1]["duration"]) and math.isnan(got[1]["flow_mean_per_s"])  # no times: image sequence
    assert got[0]["flow_mean_per_s"] == pytest.approx(30 * concat(a1, a2)["flow_mean"].astype(np.float64).mean())
    assert clip_table(pa.schema(list(PAIR_COLUMNS.items())).empty_table()).num_rows == 0


@pytest.mark.parametrize(
    "formats, partition", [(("parquet",), ("corpus", "video")), (("npz",), ("video",)), (("parquet", "npz"), ())]
)
def test_summarize_reads_the_committed_files_of_any_layout(tmp_path, formats, partition):
    out = tmp_path / "corpus=2023" / "labels"  # a partition-like folder above out is not out's partition
    sink = SinkOptions(str(out), formats=formats, partition=partition)
    chunks = [pair_rows("a", 3, seed=1), pair_rows("a", 2, seed=2, first=3), pair_rows("b", 4, seed=3)]
    for rows in chunks:
        write_batch(rows, sink)
    (out / "_clips").mkdir()  # other tables under out are not pair rows
    pq.write_table(pa.table({"video_id": ["x"]}), out / "_clips" / "x.parquet")
    pairs = read_pair_columns(sink)
    assert pairs.num_rows == 9 and pairs.schema == pa.schema(list(PAIR_COLUMNS.items()))
    assert set(pairs["corpus"].to_pylist()) == {"corp"}  # from the path where it is a partition
    [a, b] = summarize_clips(sink).to_pylist()
    assert (a["video_id"], a["pairs"], b["video_id"], b["pairs"]) == ("a", 5, "b", 4)
    assert a["flow_mean"] == expected_row(chunks[0], chunks[1])["flow_mean"]
    assert b["residual_p95"] == expected_row(chunks[2])["residual_p95"]


def test_files_written_before_the_motion_columns_give_nan(tmp_path):
    sink = SinkOptions(str(tmp_path))
    old = {k: v for k, v in pair_rows("old", 2, seed=1).items() if k not in MOTION_COLUMNS}
    write_batch(old, sink)
    write_batch(pair_rows("new", 2, seed=2), sink)
    [new, old_row] = summarize_clips(sink).to_pylist()
    assert old_row["video_id"] == "old" and old_row["pairs"] == 2 and math.isnan(old_row["flow_mean"])
    assert old_row["duration"] == pytest.approx(2 / 30) and not math.isnan(new["flow_mean"])


def test_rewrite_replaces_the_table_and_splits_it_into_files(tmp_path):
    sink = SinkOptions(str(tmp_path))
    for i, video in enumerate("cab"):
        write_batch(pair_rows(video, 2, seed=i), sink)
    folder = tmp_path / CLIP_SUMMARY_DIR
    assert write_clip_summary(sink, rows_per_file=1) == 3
    assert sorted(p.name for p in folder.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [pq.read_table(folder / f"part-0000{i}.parquet")["video_id"].to_pylist() for i in range(3)] == [
        ["a"],
        ["b"],
        ["c"],
    ]
    first = pq.read_table(folder)
    (folder / "notes.txt").write_text("kept: not a part of the table")
    assert write_clip_summary(sink, rows_per_file=2) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "part-00000.parquet", "part-00001.parquet"]
    again = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))
    assert again.num_rows == 3 and again.equals(first)  # the same rows, none twice
    write_batch(pair_rows("d", 2, seed=9), sink)  # a later run on out adds a source
    assert write_clip_summary(sink) == 4 and sorted(p.name for p in folder.glob("*.parquet")) == ["part-00000.parquet"]
    assert pq.read_table(folder / "part-00000.parquet")["video_id"].to_pylist() == ["a", "b", "c", "d"]
    assert pq.read_table(tmp_path).num_rows == 8  # the pair dataset still reads alone (_ folders are skipped)
    with pytest.raises(ValueError, match="rows_per_file: expected ≥ 1, got 0"):
        write_clip_summary(sink, rows_per_file=0)


def test_an_empty_out_gives_an_empty_table(tmp_path):
    sink = SinkOptions(str(tmp_path / "nothing"))
    assert write_clip_summary(sink) == 0
    table = pq.read_table(tmp_path / "nothing" / CLIP_SUMMARY_DIR)
    assert table.num_rows == 0 and table.schema.names == list(CLIP_TABLE_COLUMNS)


# ---- the summary store -------------------------------------------------------------------------------------


def test_summary_store_writes_scalar_and_motion_columns_only(tmp_path):
    sink = SinkOptions(str(tmp_path), store="summary")
    rows = pair_rows("a", 3, seed=1, dense=False)
    summary = write_batch(rows, sink)
    [path] = tmp_path.rglob("*.parquet")
    table = pq.read_table(path)
    assert table.schema.names == [n for n in SCALAR_COLUMNS if n != "corpus"] + list(MOTION_COLUMNS)
    assert all(not pa.types.is_list(f.type) for f in table.schema)
    assert table["camera_tx"].to_pylist()[0] is None  # NaN is stored as null
    np.testing.assert_array_equal(table["flow_mean"].to_numpy(), rows["flow_mean"])
    assert not list(tmp_path.rglob("*.npz")) and committed_chunks(sink) == {"a": {"00000000-00000002"}}
    # the run summary's sums from the per-pair means: pixels H·W per pair
    pixels = 3 * 6 * 8
    assert summary["pixels"].tolist() == [pixels]
    assert summary["flow_magnitude_sum"][0] == pytest.approx(48 * rows["flow_mean"].astype(np.float64).sum())
    assert summary["occluded_sum"][0] == np.rint(48 * rows["occluded_fraction"].astype(np.float64)).sum()  # per pair


def test_summary_store_is_refused_with_npz_and_needs_the_motion_columns():
    for formats in (("npz",), ("parquet", "npz")):
        with pytest.raises(ValueError, match=r"writes no label arrays, so no npz: expected formats \('parquet',\)"):
            SinkOptions("x", formats=formats, store="summary")
    with pytest.raises(ValueError, match="store: expected one of"):
        SinkOptions("x", store="sparse")
    rows = pair_rows("a", 2, seed=1, dense=False)
    del rows["residual_p95"]
    with pytest.raises(ValueError, match=r"expected every motion column, missing \['residual_p95'\]"):
        to_table(rows, store="summary")


def test_dense_rows_carry_the_motion_columns_beside_the_arrays(tmp_path):
    sink = SinkOptions(str(tmp_path), formats=("parquet", "npz"))
    rows = pair_rows("a", 2, seed=1)
    write_batch(rows, sink)
    [path] = tmp_path.rglob("*.parquet")
    table = pq.read_table(path)
    assert table.schema == output_schema(("corpus",), tuple(MOTION_COLUMNS))
    assert {"flow", "flow_scale", "occlusion", "confidence", *MOTION_COLUMNS} <= set(table.column_names)
    [npz] = tmp_path.rglob("*.npz")
    with np.load(npz) as data:
        for name in MOTION_COLUMNS:
            np.testing.assert_array_equal(data[name], rows[name], err_msg=name)
            assert data[name].dtype == np.float32


def test_clip_summary_rows_come_from_the_footers(tmp_path):
    """A run with nothing new to label keeps the clip table and reports its rows from the file footers."""
    from pipeline.write.clip_summary import clip_summary_rows

    sink = SinkOptions(str(tmp_path / "out"))
    assert clip_summary_rows(sink) is None
    folder = tmp_path / "out" / CLIP_SUMMARY_DIR
    folder.mkdir(parents=True)
    for i, n in enumerate((3, 2)):
        pq.write_table(pa.table({"video_id": [f"v{j}" for j in range(n)]}), folder / f"part-{i:05d}.parquet")
    (folder / "notes.txt").write_text("not a part")
    assert clip_summary_rows(sink) == 5
