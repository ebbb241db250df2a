"""Writing labeled chunks: one Parquet and/or npz file per chunk, committed atomically.

Layout under ``out``: ``corpus=<corpus>/video=<video_id>/<first frame0>-<last frame0>.parquet``
(hive partitions, configurable). A partition column is not repeated inside the file:
pyarrow/pandas restore it from the path when the folder is read as a dataset. npz shards
take the same relative paths below ``out/_npz/``: pyarrow skips folders whose names start
with '_', so ``pq.read_table(out)`` still reads the Parquet dataset alone. With ``store="summary"``
(``--store summary``) the files hold the per-row scalar and motion columns only, no label arrays.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.chunks import iter_chunks
from pipeline.encoding import (
    DEFAULT_FLOW_ENCODING,
    SCALE_COLUMN,
    check_encoding,
    check_stored,
    encode_labels,
    flow_magnitude_sum,
    parquet_options,
)
from pipeline.schema import ARRAY_COLUMNS, SCALAR_COLUMNS, carried_column, check_store, optional_columns, to_table
from pipeline.storage import filesystem, join, write_atomic
from pipeline.write.records import write_unit_marker

FORMATS = ("parquet", "npz")
NPZ_DIR = "_npz"
PARTITION_KEYS = {"corpus": "corpus", "video": "video_id"}  # path key → column
SUMMARY_KEYS = (
    "video_id",
    "source",
    "corpus",
    "chunk",
    "unit",
    "unit_chunks",
    "settled",
    "pairs",
    "pixels",
    "bytes_written",
    "flow_magnitude_sum",
    "occluded_sum",
    "labeled_on",
)


@dataclass(frozen=True)
class SinkOptions:
    """out: output URI; formats: subset of ("parquet", "npz"); partition: path keys, in order;
    flow_encoding: how flow and confidence are stored, "int16" or "float16" (see pipeline.encoding);
    store: "dense" (label arrays and motion columns) or "summary" (motion columns only, Parquet only);
    carried: manifest columns written in every file, as text (``--carry``; see pipeline.schema)."""

    out: str
    formats: tuple[str, ...] = ("parquet",)
    partition: tuple[str, ...] = ("corpus", "video")
    compression: str = "zstd"
    flow_encoding: str = DEFAULT_FLOW_ENCODING
    store: str = "dense"
    carried: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_encoding(self.flow_encoding)
        object.__setattr__(self, "carried", tuple(self.carried))
        if not self.formats or set(self.formats) - set(FORMATS):
            raise ValueError(f"formats: expected a non-empty subset of {FORMATS}, got {self.formats}")
        if check_store(self.store) == "summary" and self.formats != ("parquet",):
            raise ValueError(
                f"store='summary' (--store summary) writes no label arrays, so no npz: expected "
                f"formats ('parquet',) (--format parquet), got {self.formats}"
            )
        if set(self.partition) - set(PARTITION_KEYS):
            raise ValueError(f"partition: expected keys among {sorted(PARTITION_KEYS)}, got {self.partition}")

    @property
    def excluded_columns(self) -> tuple[str, ...]:
        """Partition columns whose path key has the column's own name (kept out of the files)."""
        return tuple(key for key in self.partition if PARTITION_KEYS[key] == key)

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(f".{fmt}" for fmt in self.formats)

    def parse_stem(self, relative: str) -> tuple[str, str] | None:
        """(video_id, chunk) of a data file path relative to ``out`` (npz paths without ``_npz/``)."""
        parts = relative.split("/")
        if len(parts) != len(self.partition) + 1:
            return None
        stem = parts[-1].rsplit(".", 1)[0]
        if "video" not in self.partition:
            video_id, _, chunk = stem.partition("-")
            return video_id, chunk
        values = dict(p.split("=", 1) for p in parts[:-1] if "=" in p)
        return (values["video"], stem) if "video" in values else None

    def chunk_stem(self, corpus: str, video_id: str, chunk: str) -> str:
        """Path of a chunk below ``out``, without extension; the video id is in the path
        (``video=`` partition) or, without that partition, in the file name."""
        values = {"corpus": corpus, "video": video_id}
        parts = [f"{key}={values[key]}" for key in self.partition]
        return "/".join([*parts, chunk if "video" in self.partition else f"{video_id}-{chunk}"])


def encode_parquet(rows: Mapping[str, np.ndarray], options: SinkOptions) -> bytes:
    """One chunk's rows (arrays stored in ``options.flow_encoding``) → the bytes of its Parquet file."""
    table = to_table(rows, options.excluded_columns, options.flow_encoding, options.store, options.carried)
    buffer = io.BytesIO()
    pq.write_table(
        table, buffer, compression=options.compression, **parquet_options(table.schema, options.flow_encoding)
    )
    return buffer.getvalue()


def encode_npz(
    rows: Mapping[str, np.ndarray], flow_encoding: str = DEFAULT_FLOW_ENCODING, carried: tuple[str, ...] = ()
) -> bytes:
    """The same arrays (N×H×W[×2], stored in ``flow_encoding``) and columns as the Parquet file,
    in one compressed npz (carried columns as text, a null as "": npz has no nulls)."""
    check_stored(rows, flow_encoding)
    arrays = {name: rows[name] for name in (*ARRAY_COLUMNS, SCALE_COLUMN) if name in rows}
    arrays.update(
        {
            name: np.asarray(rows[name]).astype(str) if rows[name].dtype == object else np.asarray(rows[name])
            for name in SCALAR_COLUMNS
        }
    )
    arrays.update({name: np.asarray(rows[name]) for name in optional_columns(rows)})  # N×k, --frame-labels
    arrays.update(
        {
            name: np.array(["" if v is None else v for v in carried_column(rows, name).to_pylist()], str)
            for name in carried
        }
    )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_files(
    rows: Mapping[str, np.ndarray],
    options: SinkOptions,
    encoders: Mapping[str, Callable[[], bytes]],
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write one chunk's file in each format of ``encoders`` (format → bytes) at its path below
    ``options.out``, atomically; returns the bytes written. A retried task writes the same paths."""
    fs, root = filesystem(options.out, storage_options)
    stem = options.chunk_stem(str(rows["corpus"][0]), str(rows["video_id"][0]), str(rows["chunk"][0]))
    written = 0
    for fmt, encode in encoders.items():
        data = encode()
        write_atomic(fs, join(root, *([NPZ_DIR] if fmt == "npz" else []), f"{stem}.{fmt}"), data)
        written += len(data)
    return written


def write_chunk(
    rows: Mapping[str, np.ndarray], options: SinkOptions, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write one chunk of pair rows in every requested format; returns a summary row."""
    if options.store == "dense":
        # The labeler's rows are stored already and pass through; float labels (Python API) are encoded
        # here, once for every format and the summary.
        rows = {**rows, **encode_labels(rows, options.flow_encoding)}
    encoders = {
        "parquet": lambda: encode_parquet(rows, options),
        "npz": lambda: encode_npz(rows, options.flow_encoding, options.carried),
    }
    written = write_files(rows, options, {fmt: encoders[fmt] for fmt in options.formats}, storage_options)
    return {
        "video_id": str(rows["video_id"][0]),
        "source": str(rows["source"][0]),
        "corpus": str(rows["corpus"][0]),
        "chunk": str(rows["chunk"][0]),
        "unit": str(rows["unit"][0]),
        "unit_chunks": str(rows["unit_chunks"][-1]),
        "pairs": len(rows["frame0"]),
        "bytes_written": written,
        **_label_sums(rows, options.store),
        # Which labeler actor (node, GPU ids) made the chunk, as the labeler stamped it.
        "labeled_on": str(rows["labeled_on"][0]) if "labeled_on" in rows else "",
    }


def _label_sums(rows: Mapping[str, np.ndarray], store: str) -> dict[str, Any]:
    """pixels, Σ |flow| (px) and occluded pixels of a chunk: from its arrays, or without them (summary store)
    from the per-pair means flow_mean and occluded_fraction over each pair's H×W pixels."""
    if store == "dense":
        return {
            "pixels": int(np.prod(np.shape(rows["flow"])[:3])),
            "flow_magnitude_sum": flow_magnitude_sum(rows),
            "occluded_sum": int(np.asarray(rows["occlusion"]).sum()),
        }
    pixels = np.asarray(rows["height"], np.int64) * np.asarray(rows["width"], np.int64)
    flow = np.asarray(rows["flow_mean"], np.float64) * pixels
    return {
        "pixels": int(pixels.sum()),
        "flow_magnitude_sum": float(np.nansum(flow)),
        "occluded_sum": int(np.rint(np.asarray(rows["occluded_fraction"], np.float64) * pixels).sum()),
    }


def write_batch(
    batch: Mapping[str, np.ndarray],
    options: SinkOptions,
    storage_options: Mapping[str, Any] | None = None,
    *,
    write: Callable[..., dict[str, Any]] = write_chunk,
    keys: tuple[str, ...] = SUMMARY_KEYS,
    threads: int = 8,
) -> dict[str, np.ndarray]:
    """The write stage of a Ray Data pipeline: every chunk in ``batch`` through ``write`` (pair
    chunks by default; the clip labels pass theirs), ``threads`` at a time (object-store PUTs
    wait on the network); returns the summary rows, columns ``keys``. Pair units whose chunks are
    all in this batch (short clips) are settled here, after their files: the summary says so."""
    chunks = list(iter_chunks(batch))
    with ThreadPoolExecutor(max(1, min(threads, len(chunks)))) as pool:
        summaries = list(pool.map(lambda rows: write(rows, options, storage_options), chunks))
    if "unit_chunks" in keys:
        _settle_whole_units(summaries, options.out, storage_options)
    return {key: np.array([s[key] for s in summaries]) for key in keys}


def _settle_whole_units(summaries: list[dict[str, Any]], out: str, storage_options: Mapping[str, Any] | None) -> None:
    written = {(s["video_id"], s["chunk"]) for s in summaries}
    for s in summaries:
        s["settled"] = False
        if s["unit_chunks"]:
            chunks = json.loads(s["unit_chunks"])
            if all((s["video_id"], c) in written for c in chunks):
                write_unit_marker(out, s["unit"], "done", chunks, storage_options)
                s["settled"] = True


def committed_chunks(
    options: SinkOptions, storage_options: Mapping[str, Any] | None = None
) -> dict[str, frozenset[str]]:
    """video_id → chunks committed in every requested format under ``options.out``.

    Data files become visible only when complete (see ``write_atomic``), so a listed file is a
    committed chunk. Requires the ``video`` partition or no partitioning (ids in file names).
    """
    fs, root = filesystem(options.out, storage_options)
    if not fs.exists(root):
        return {}
    found: dict[tuple[str, str], set[str]] = {}
    for path in fs.find(root):
        relative = path[len(root.rstrip("/")) + 1 :]
        fmt = relative.rsplit(".", 1)[-1]
        if fmt not in options.formats or relative.rsplit("/", 1)[-1].startswith("."):
            continue
        if fmt == "npz":
            if not relative.startswith(NPZ_DIR + "/"):
                continue
            relative = relative[len(NPZ_DIR) + 1 :]
        elif relative.startswith("_"):
            continue
        key = options.parse_stem(relative)
        if key is not None:
            found.setdefault(key, set()).add(fmt)
    done: dict[str, set[str]] = {}
    for (video_id, chunk), formats in found.items():
        if formats == set(options.formats):
            done.setdefault(video_id, set()).add(chunk)
    return {video_id: frozenset(chunks) for video_id, chunks in done.items()}
