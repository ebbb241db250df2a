"""The per-clip motion summary table: one row per source (a video or an image sequence) under
``<out>/_clips_summary/``, from the per-pair motion columns (:data:`pipeline.schema.MOTION_COLUMNS`).

It is built at the end of a run from the committed data files on ``out``, so a resumed run's table covers
the pairs of every run; only the scalar columns it needs are read (column projection, no label arrays),
grouped by video and reduced by :func:`aggregate`. Rewriting it replaces it: the files have fixed names
(``part-00000.parquet``, …, at most :data:`ROWS_PER_FILE` rows each) and stale parts are removed.
Definitions of every column: README, "Motion summaries".
"""

from __future__ import annotations

import io
import math
import posixpath
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import MOTION_COLUMNS
from pipeline.storage import filesystem, join, remove_files, write_atomic

CLIP_SUMMARY_DIR = "_clips_summary"
ROWS_PER_FILE = 100_000
READ_THREADS = 16  # data files read at once when the table is built (object-store GETs wait on the network)
_PART = re.compile(r"part-\d{5}\.parquet")
STALE_MARKER = "_stale"  # '_': readers of the table's folder (pyarrow, polars, DuckDB globs of *.parquet) skip it

# The aggregates of one clip's pairs (:func:`aggregate`).
CLIP_SUMMARY_COLUMNS = {
    "pairs": pa.int32(),
    **{
        name: pa.float32()
        for name in (
            "flow_mean",
            "flow_median",
            "flow_p95",
            "flow_mean_per_s",
            "occluded_fraction",
            "confidence_mean",
            "camera_tx_mean",
            "camera_ty_mean",
            "camera_translation_mean",
            "camera_flow_mean",
            "camera_flow_max",
            "camera_scale_mean",
            "camera_rotation_mean",
            "camera_inlier_fraction",
            "residual_mean",
            "residual_p95",
        )
    },
}

# A row of the table: the source, its pairs, the seconds they span (first t0 to last t1), the aggregates.
CLIP_TABLE_COLUMNS = {
    "video_id": pa.string(),
    "source": pa.string(),
    "corpus": pa.string(),
    "pairs": pa.int32(),
    "duration": pa.float64(),
    **{n: t for n, t in CLIP_SUMMARY_COLUMNS.items() if n != "pairs"},
}

# What the table is made of: per pair, the identity, times and motion columns.
PAIR_COLUMNS = {
    "video_id": pa.string(),
    "source": pa.string(),
    "corpus": pa.string(),
    "frame0": pa.int32(),
    "t0": pa.float64(),
    "t1": pa.float64(),
    **MOTION_COLUMNS,
}


def write_clip_summary(
    sink: Any, storage_options: Mapping[str, Any] | None = None, rows_per_file: int = ROWS_PER_FILE
) -> int:
    """Write the clip table of every committed pair under ``sink.out`` (a :class:`pipeline.write.sinks.SinkOptions`)
    to ``<out>/_clips_summary/part-NNNNN.parquet``, each file atomically; returns its number of rows."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file: expected ≥ 1, got {rows_per_file}")
    table = summarize_clips(sink, storage_options)
    fs, root = filesystem(sink.out, storage_options)
    folder = join(root, CLIP_SUMMARY_DIR)
    names = set()
    for start in range(0, max(table.num_rows, 1), rows_per_file):  # an empty table is one empty file
        name = f"part-{start // rows_per_file:05d}.parquet"
        names.add(name)
        buffer = io.BytesIO()
        pq.write_table(table.slice(start, rows_per_file), buffer, compression="zstd")
        write_atomic(fs, join(folder, name), buffer.getvalue())
    listed = {posixpath.basename(path.rstrip("/")): path for path in fs.ls(folder, detail=False)}
    remove_files(fs, [path for name, path in listed.items() if _PART.fullmatch(name) and name not in names])
    if STALE_MARKER in listed:  # last: a table cut short by a crash stays marked
        remove_files(fs, [listed[STALE_MARKER]])
    return table.num_rows


def mark_clip_summary_stale(sink: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Note, before a run commits rows, that the clip table under ``sink.out`` will lack them until
    :func:`write_clip_summary` rewrites it and clears the note. A run killed in between leaves the note, so
    the next run rewrites the table even when it has nothing left to label."""
    fs, path = _stale_marker(sink, storage_options)
    write_atomic(fs, path, b"")


def clip_summary_is_stale(sink: Any, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a run committed rows under ``sink.out`` that its clip table may lack."""
    fs, path = _stale_marker(sink, storage_options)
    return fs.exists(path)


def _stale_marker(sink: Any, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, root = filesystem(sink.out, storage_options)
    return fs, join(root, CLIP_SUMMARY_DIR, STALE_MARKER)


def clip_summary_rows(sink: Any, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """Rows of the clip table under ``sink.out`` from its files' footers, or None when it was never written."""
    fs, root = filesystem(sink.out, storage_options)
    folder = join(root, CLIP_SUMMARY_DIR)
    if not fs.exists(folder):
        return None
    parts = [p for p in fs.ls(folder, detail=False) if _PART.fullmatch(posixpath.basename(p.rstrip("/")))]
    if not parts:
        return None
    rows = 0
    for path in parts:
        with fs.open(path, "rb") as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return rows


def summarize_clips(sink: Any, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """The clip table (:data:`CLIP_TABLE_COLUMNS`, then the carried manifest columns ``sink.carried``) of
    every committed pair under ``sink.out``."""
    return clip_table(read_pair_columns(sink, storage_options), tuple(sink.carried))


def read_pair_columns(sink: Any, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """:data:`PAIR_COLUMNS` of every committed pair row under ``sink.out``, from its Parquet files (npz when
    the run writes no Parquet), and the carried manifest columns (text); a column a file lacks (written
    before it existed) is null. The files come from one listing with their sizes and are read concurrently,
    each without a request for its size (object stores are listed afresh, never from a cache)."""
    fs, root = filesystem(sink.out, storage_options)
    schema = pa.schema([*PAIR_COLUMNS.items(), *((name, pa.string()) for name in sink.carried)])
    fmt = "parquet" if "parquet" in sink.formats else "npz"
    files = _data_files(fs, root, sink, fmt)
    if not files:
        return schema.empty_table()
    read = _npz_columns if fmt == "npz" else _parquet_columns
    # The corpus partition is in the path, not in the file: raw values, as the sink writes them.
    corpus_in_path = fmt == "parquet" and "corpus" in sink.excluded_columns
    with ThreadPoolExecutor(READ_THREADS) as pool:
        tables = pool.map(lambda item: read(fs, *item, schema, corpus_in_path), files.items())
        return pa.concat_tables(list(tables))


def _data_files(fs, root: str, sink: Any, fmt: str) -> dict[str, int]:
    """Committed data files of one format under ``root`` (path → size), sorted (hidden temporaries and ``_``
    folders left out)."""
    root = root.rstrip("/")
    base = join(root, "_npz") if fmt == "npz" else root
    if not fs.exists(base):
        return {}
    out = {}
    for path, info in fs.find(base, detail=True).items():
        relative = sink.data_relative(path[len(root) + 1 :])
        if path.endswith(f".{fmt}") and relative is not None and sink.is_data_file(relative):
            out[path] = info["size"]
    return dict(sorted(out.items()))


def _parquet_columns(fs, path: str, size: int, schema: pa.Schema, corpus_in_path: bool) -> pa.Table:
    """The columns of ``schema`` from one Parquet file (only those column chunks are read)."""
    with fs.open(path, "rb", size=size) as f:
        parquet = pq.ParquetFile(f)
        present = [name for name in schema.names if name in parquet.schema_arrow.names]
        table = parquet.read(columns=present)
    n = table.num_rows
    corpus = _path_value(path, "corpus") if corpus_in_path else None
    columns = {}
    for field in schema:
        if field.name in present:
            columns[field.name] = table[field.name].cast(field.type)
        elif field.name == "corpus" and corpus is not None:
            columns[field.name] = pa.array([corpus] * n, field.type)
        else:
            columns[field.name] = pa.nulls(n, field.type)
    return pa.table(columns, schema=schema)


def _path_value(path: str, key: str) -> str | None:
    """The value of a hive partition ``key=value`` in ``path``, as written (no URL decoding). The last such
    part: the folders above ``out`` may hold one too."""
    for part in reversed(path.split("/")):
        if part.startswith(f"{key}="):
            return part[len(key) + 1 :]
    return None


def _npz_columns(fs, path: str, size: int, schema: pa.Schema, corpus_in_path: bool = False) -> pa.Table:
    with fs.open(path, "rb", size=size) as f, np.load(io.BytesIO(f.read())) as data:  # only the keys asked
        n = len(data["frame0"])
        return pa.table(
            {
                field.name: pa.array(data[field.name], field.type)
                if field.name in data.files
                else pa.nulls(n, field.type)
                for field in schema
            },
            schema=schema,
        )


def clip_table(pairs: pa.Table, carried: tuple[str, ...] = ()) -> pa.Table:
    """Pair rows (:data:`PAIR_COLUMNS`) → one row per video_id (:data:`CLIP_TABLE_COLUMNS`), sorted by source
    and video_id. A video's pairs are ordered by frame0 first, so its sums do not depend on the read order.
    flow_mean_per_s uses each pair's t1 − t0 when every pair of the clip has one > 0 (else NaN). ``carried``
    columns (one manifest row's values, the same on every pair of a clip) follow, from the clip's first pair."""
    pairs = pairs.sort_by([("video_id", "ascending"), ("frame0", "ascending")])
    ids = pairs["video_id"].to_numpy(zero_copy_only=False)
    columns = {n: _floats(pairs[n]) for n in ("t0", "t1", *MOTION_COLUMNS)}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(ids)].astype(np.int64)
    rows = [_clip_row({n: c[s:e] for n, c in columns.items()}) for s, e in zip(starts, ends)]
    table = {
        "video_id": pa.array(ids[starts], pa.string()),
        "source": pairs["source"].take(pa.array(starts)),
        "corpus": pairs["corpus"].take(pa.array(starts)),
    }
    table.update({n: pa.array([r[n] for r in rows], t) for n, t in CLIP_TABLE_COLUMNS.items() if n not in table})
    table.update({n: pairs[n].take(pa.array(starts)) for n in carried})
    schema = pa.schema([*CLIP_TABLE_COLUMNS.items(), *((n, pa.string()) for n in carried)])
    result = pa.table(table, schema=schema)
    return result.sort_by([("source", "ascending"), ("video_id", "ascending")])


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy()


def _clip_row(pair: Mapping[str, np.ndarray]) -> dict[str, Any]:
    dt = pair["t1"] - pair["t0"]
    row = aggregate(pair, dt=dt if (dt > 0).all() else None)  # NaN compares False: any unknown time → None
    t0, t1 = pair["t0"][np.isfinite(pair["t0"])], pair["t1"][np.isfinite(pair["t1"])]
    return {**row, "duration": float(t1.max() - t0.min()) if t0.size and t1.size else math.nan}


def aggregate(
    stats: Mapping[str, np.ndarray], weights: np.ndarray | None = None, dt: np.ndarray | None = None
) -> dict[str, np.generic]:
    """One clip's row of :data:`CLIP_SUMMARY_COLUMNS` from the per-pair columns of its P pairs.

    stats: {name: P array} with every :data:`pipeline.schema.MOTION_COLUMNS` name; weights: P non-negative
    pair weights for the means (default equal; e.g. valid-pixel counts); dt: P time gaps of the pairs in
    seconds, for ``flow_mean_per_s``. Means, medians and maxima skip NaN; a column with no finite value is NaN.
    """
    columns = {name: np.asarray(stats[name], dtype=np.float64).reshape(-1) for name in MOTION_COLUMNS}
    pairs = len(columns["flow_mean"])
    weights = _pair_vector("weights", np.ones(pairs) if weights is None else weights, pairs)
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError(f"weights: expected finite values ≥ 0, got {weights}")
    for name, values in columns.items():
        _pair_vector(name, values, pairs)
    speed = np.full(pairs, np.nan)
    if dt is not None:
        dt = _pair_vector("dt", dt, pairs)
        if not (dt > 0).all():
            raise ValueError(f"dt: expected time gaps > 0 s, got {dt}")
        speed = columns["flow_mean"] / dt
    c = columns

    def mean(values: np.ndarray) -> float:
        return _weighted_nanmean(values, weights)

    row = {
        "pairs": pairs,
        "flow_mean": mean(c["flow_mean"]),
        "flow_median": _nan_reduce(np.median, c["flow_median"]),
        "flow_p95": _nan_reduce(np.max, c["flow_p95"]),
        "flow_mean_per_s": mean(speed),
        "occluded_fraction": mean(c["occluded_fraction"]),
        "confidence_mean": mean(c["confidence_mean"]),
        "camera_tx_mean": mean(c["camera_tx"]),
        "camera_ty_mean": mean(c["camera_ty"]),
        "camera_translation_mean": mean(np.hypot(c["camera_tx"], c["camera_ty"])),
        "camera_flow_mean": mean(c["camera_flow_mean"]),
        "camera_flow_max": _nan_reduce(np.max, c["camera_flow_mean"]),
        "camera_scale_mean": mean(c["camera_scale"]),
        "camera_rotation_mean": mean(c["camera_rotation"]),
        "camera_inlier_fraction": mean(c["camera_inlier_fraction"]),
        "residual_mean": mean(c["residual_mean"]),
        "residual_p95": _nan_reduce(np.max, c["residual_p95"]),
    }
    return {name: np.int32(row[name]) if name == "pairs" else np.float32(row[name]) for name in CLIP_SUMMARY_COLUMNS}


def _pair_vector(name: str, values, pairs: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (pairs,):
        raise ValueError(f"{name}: expected one value per pair, shape ({pairs},), got {values.shape}")
    return values


def _weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> float:
    keep = np.isfinite(values) & (weights > 0)
    total = weights[keep].sum()
    return float(values[keep] @ weights[keep] / total) if total > 0 else math.nan


def _nan_reduce(reduce, values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(reduce(finite)) if finite.size else math.nan
