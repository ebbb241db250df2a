"""Writing labeled chunks: one Parquet and/or npz file per chunk, committed atomically.

Layout under ``out``: ``corpus=<corpus>/video=<video_id>/<first frame0>-<last frame0>.parquet``
(hive partitions, configurable). A partition column is not repeated inside the file:
pyarrow/pandas restore it from the path when the folder is read as a dataset. npz shards
take the same relative paths below ``out/_npz/``: pyarrow skips folders whose names start
with '_', so ``pq.read_table(out)`` still reads the Parquet dataset alone. With ``store="summary"``
(``--store summary``) the files hold the per-row scalar and motion columns only, no label arrays.

Short clips are packed: the chunks of one read task's clips (a pack, stamped by the reader) are written
as one file per format, ``corpus=<corpus>/pack-<name>.parquet``, and settled by one marker
(``_packs/<name>.json``) instead of a file and a marker per clip.
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

from pipeline.chunks import CHUNK_PAIRS, PACK_COLUMNS, iter_chunks
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
from pipeline.write.records import write_pack_marker, write_unit_marker

FORMATS = ("parquet", "npz")
NPZ_DIR = "_npz"
PACK_PREFIX = "pack-"  # video ids are hex digests: no chunk file name starts with it
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
    "files",
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
        """(video_id, chunk) of a chunk file path relative to ``out`` (npz paths without ``_npz/``)."""
        parts = relative.split("/")
        if len(parts) != len(self.partition) + 1 or parts[-1].startswith(PACK_PREFIX):
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

    def pack_stem(self, corpus: str, pack: str) -> str:
        """Path of a pack below ``out``, without extension: in its corpus's folder (a pack holds many
        videos, so no ``video=`` folder; its rows name theirs in the ``video_id`` column)."""
        return "/".join([*([f"corpus={corpus}"] if "corpus" in self.partition else []), PACK_PREFIX + pack])

    def data_relative(self, relative: str) -> str | None:
        """A file's path relative to ``out`` as :meth:`parse_stem` and :meth:`parse_pack` take it (npz files
        without ``_npz/``), when it is a file of one of our formats outside the ``_`` folders; None for
        anything else (records, markers, hidden temporaries)."""
        fmt = relative.rsplit(".", 1)[-1]
        if fmt not in self.formats or relative.rsplit("/", 1)[-1].startswith("."):
            return None
        if fmt == "npz":
            return relative[len(NPZ_DIR) + 1 :] if relative.startswith(NPZ_DIR + "/") else None
        return None if relative.startswith("_") else relative

    def is_data_file(self, relative: str) -> bool:
        """Whether a path from :meth:`data_relative` names a chunk file or a pack file."""
        return self.parse_stem(relative) is not None or self.parse_pack(relative) is not None

    def parse_pack(self, relative: str) -> str | None:
        """The pack name of a pack file path relative to ``out`` (npz paths without ``_npz/``), else None."""
        parts = relative.split("/")
        depth = 2 if "corpus" in self.partition else 1
        if len(parts) != depth or not parts[-1].startswith(PACK_PREFIX):
            return None
        return parts[-1][len(PACK_PREFIX) :].rsplit(".", 1)[0]


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
    stem: str | None = None,
) -> int:
    """Write one chunk's file (or a pack's, at ``stem``) in each format of ``encoders`` (format → bytes) at
    its path below ``options.out``, atomically; returns the bytes written. A retried task writes the same paths."""
    fs, root = filesystem(options.out, storage_options)
    if stem is None:
        stem = options.chunk_stem(str(rows["corpus"][0]), str(rows["video_id"][0]), str(rows["chunk"][0]))
    written = 0
    for fmt, encode in encoders.items():
        data = encode()
        write_atomic(fs, join(root, *([NPZ_DIR] if fmt == "npz" else []), f"{stem}.{fmt}"), data)
        written += len(data)
    return written


def data_file(options: SinkOptions, stem: str, fmt: str) -> str:
    """Path of a data file below ``out``: npz files are below ``_npz/``."""
    return "/".join([*([NPZ_DIR] if fmt == "npz" else []), f"{stem}.{fmt}"])


def _stored(rows: Mapping[str, np.ndarray], options: SinkOptions) -> Mapping[str, np.ndarray]:
    """The labeler's rows are stored already and pass through; float labels (Python API) are encoded here,
    once for every format and the summary."""
    return {**rows, **encode_labels(rows, options.flow_encoding)} if options.store == "dense" else rows


def _encoders(rows: Mapping[str, np.ndarray], options: SinkOptions) -> dict[str, Callable[[], bytes]]:
    encoders = {
        "parquet": lambda: encode_parquet(rows, options),
        "npz": lambda: encode_npz(rows, options.flow_encoding, options.carried),
    }
    return {fmt: encoders[fmt] for fmt in options.formats}


def write_chunk(
    rows: Mapping[str, np.ndarray], options: SinkOptions, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write one chunk of pair rows in every requested format; returns a summary row."""
    rows = _stored(rows, options)
    written = write_files(rows, options, _encoders(rows, options), storage_options)
    return chunk_summary(rows, options.store, written, len(options.formats))


def write_pack(
    pack: str,
    chunks: list[Mapping[str, np.ndarray]],
    options: SinkOptions,
    storage_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write the chunks of a whole pack (short clips of one corpus, every chunk of each) as one file per
    format, then its marker, which settles all of its units; returns a summary row per chunk (settled, the
    pack's bytes on its first)."""
    rows = _stored(_concatenate(chunks), options)
    stem = options.pack_stem(str(rows["corpus"][0]), pack)
    written = write_files(rows, options, _encoders(rows, options), storage_options, stem=stem)
    files = len(options.formats)
    summaries = [
        chunk_summary(chunk, options.store, *((written, files) if i == 0 else (0, 0))) for i, chunk in enumerate(chunks)
    ]
    units = {s["unit"]: json.loads(s["unit_chunks"]) for s in summaries if s["unit_chunks"]}
    paths = [data_file(options, stem, fmt) for fmt in options.formats]
    write_pack_marker(options.out, pack, units, paths, storage_options)
    for s in summaries:
        s["settled"] = True
    return summaries


def _concatenate(chunks: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(chunks) == 1:
        return dict(chunks[0])
    return {name: np.concatenate([np.asarray(c[name]) for c in chunks]) for name in chunks[0]}


def chunk_summary(rows: Mapping[str, np.ndarray], store: str, written: int, files: int) -> dict[str, Any]:
    """The write summary of one chunk of pair rows (:data:`SUMMARY_KEYS` but ``settled``): ``written`` bytes
    in ``files`` files (a pack's are counted on its first chunk)."""
    return {
        "video_id": str(rows["video_id"][0]),
        "source": str(rows["source"][0]),
        "corpus": str(rows["corpus"][0]),
        "chunk": str(rows["chunk"][0]),
        "unit": str(rows["unit"][0]),
        "unit_chunks": str(rows["unit_chunks"][-1]),
        "pairs": len(rows["frame0"]),
        "bytes_written": written,
        "files": files,
        **_label_sums(rows, store),
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
    wait on the network); returns the summary rows, columns ``keys``. A whole pack (the short clips of
    one read task, :func:`whole_packs`) becomes one file per format and one marker (:func:`write_pack`);
    other pair units whose chunks are all in this batch are settled here too, after their files. The
    summary says which units are settled (``settled``)."""
    chunks = list(iter_chunks(batch))
    for rows in chunks:
        check_whole(rows)
    packs = whole_packs(chunks) if write is write_chunk else {}
    in_packs = {id(chunk) for members in packs.values() for chunk in members}
    single = [chunk for chunk in chunks if id(chunk) not in in_packs]
    jobs = [lambda rows=rows: [write(rows, options, storage_options)] for rows in single]
    jobs += [
        lambda p=p, members=members: write_pack(p, members, options, storage_options) for p, members in packs.items()
    ]
    with ThreadPoolExecutor(max(1, min(threads, len(jobs)))) as pool:
        written = list(pool.map(lambda job: job(), jobs))
    summaries = [s for part in written[: len(single)] for s in part]
    if "unit_chunks" in keys:
        _settle_whole_units(summaries, options.out, storage_options)
    summaries += [s for part in written[len(single) :] for s in part]
    return {key: np.array([s[key] for s in summaries]) for key in keys}


def check_whole(rows: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError when the pair rows of a chunk are fewer than the reader made (:data:`CHUNK_PAIRS`):
    written, they would replace the chunk's file with part of it."""
    if CHUNK_PAIRS in rows and len(rows[CHUNK_PAIRS]) != int(rows[CHUNK_PAIRS][0]):
        raise ValueError(
            f"chunk {rows['chunk'][0]} of video {rows['video_id'][0]}: {len(rows[CHUNK_PAIRS])} pair rows "
            f"arrived together, expected all {int(rows[CHUNK_PAIRS][0])}; Ray Data cut a block "
            "(see jobs.cluster.block_bytes)"
        )


def whole_packs(chunks: list[Mapping[str, np.ndarray]]) -> dict[str, list[Mapping[str, np.ndarray]]]:
    """pack → its chunks, for the packs (:data:`pipeline.chunks.PACK_COLUMNS`) of which ``chunks`` holds every
    chunk, and every chunk of each of their units. A pack that Ray split across batches, or that holds a
    resumed unit's last chunks only, is written chunk by chunk instead."""
    by_pack: dict[str, list[Mapping[str, np.ndarray]]] = {}
    for rows in chunks:
        name = str(rows[PACK_COLUMNS[0]][0]) if PACK_COLUMNS[0] in rows else ""
        if name:
            by_pack.setdefault(name, []).append(rows)
    return {name: members for name, members in by_pack.items() if _is_whole(members)}


def _is_whole(members: list[Mapping[str, np.ndarray]]) -> bool:
    present = {(str(rows["video_id"][0]), str(rows["chunk"][0])) for rows in members}
    if len(present) != int(members[0][PACK_COLUMNS[1]][0]):
        return False
    units = {str(rows["unit"][0]) for rows in members}
    announced = {  # a unit's chunk list rides on its last chunk
        str(rows["unit"][0]): (str(rows["video_id"][0]), json.loads(str(rows["unit_chunks"][-1])))
        for rows in members
        if rows["unit_chunks"][-1]
    }
    return announced.keys() == units and all(
        (video, chunk) in present for video, chunks in announced.values() for chunk in chunks
    )


def _settle_whole_units(summaries: list[dict[str, Any]], out: str, storage_options: Mapping[str, Any] | None) -> None:
    written = {(s["video_id"], s["chunk"]) for s in summaries}
    for s in summaries:
        s["settled"] = False
        if s["unit_chunks"]:
            chunks = json.loads(s["unit_chunks"])
            if all((s["video_id"], c) in written for c in chunks):
                write_unit_marker(out, s["unit"], "done", chunks, storage_options)
                s["settled"] = True


@dataclass(frozen=True)
class OutputFiles:
    """The data files under ``out`` from one listing: chunks committed in every requested format
    (video_id → chunk names), and pack files (pack → paths of whichever formats exist)."""

    committed: dict[str, frozenset[str]]
    packs: dict[str, list[str]]


def output_files(options: SinkOptions, storage_options: Mapping[str, Any] | None = None) -> OutputFiles:
    """List the data files under ``options.out`` once (see :class:`OutputFiles`).

    Data files become visible only when complete (see ``write_atomic``), so a listed chunk file is a
    committed chunk. Chunk files are found with the ``video`` partition or with none (ids in file names).
    """
    fs, root = filesystem(options.out, storage_options)
    if not fs.exists(root):
        return OutputFiles({}, {})
    found: dict[tuple[str, str], set[str]] = {}
    packs: dict[str, list[str]] = {}
    for path in fs.find(root):
        relative = options.data_relative(path[len(root.rstrip("/")) + 1 :])
        if relative is None:
            continue
        key, pack = options.parse_stem(relative), options.parse_pack(relative)
        if key is not None:
            found.setdefault(key, set()).add(relative.rsplit(".", 1)[-1])
        elif pack is not None:
            packs.setdefault(pack, []).append(path)
    done: dict[str, set[str]] = {}
    for (video_id, chunk), formats in found.items():
        if formats == set(options.formats):
            done.setdefault(video_id, set()).add(chunk)
    return OutputFiles({video_id: frozenset(chunks) for video_id, chunks in done.items()}, packs)


def committed_chunks(
    options: SinkOptions, storage_options: Mapping[str, Any] | None = None
) -> dict[str, frozenset[str]]:
    """video_id → chunks committed in every requested format under ``options.out`` (see :func:`output_files`)."""
    return output_files(options, storage_options).committed
