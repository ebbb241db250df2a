"""Splitting a Ray batch back into its chunks (rows of one video and chunk id, in order), and a
chunk's frame rows into its pairs.

Ray may merge several chunks into one block; a block never splits a chunk (chunks are far
smaller than Ray's target block size, see ``ReadOptions.chunk_bytes``). Columns of frames
of different sizes arrive as object arrays of per-row arrays; each chunk is one size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

CHUNK_KEYS = ("video_id", "chunk")
# The pack a chunk travels in (short clips of one read task) and the pack's number of chunks: stamped by
# the reader, carried by the labeler, used by the writer to write a whole pack as one file.
PACK_COLUMNS = ("pack", "pack_chunks")
# The number of pairs in the chunk, stamped by the reader on every row: the writer refuses a chunk that
# arrives with fewer (cut by Ray, see jobs.cluster.block_bytes) rather than write part of it.
CHUNK_PAIRS = "chunk_pairs"


def chunk_id(first: int, last: int) -> str:
    """A chunk's name, unique within its video: the indices of its first and last item (frame0 of its
    pairs, or clip), zero-padded so that names sort in order. The output file is named after it."""
    return f"{first:08d}-{last:08d}"


def iter_chunks(batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Sub-batches of ``batch``, one per (video_id, chunk), rows in their original order."""
    n = len(batch[CHUNK_KEYS[0]])
    keys = list(zip(*(np.asarray(batch[k]).tolist() for k in CHUNK_KEYS)))
    order: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        order.setdefault(key, []).append(i)
    for rows in order.values():
        index = np.asarray(rows) if len(rows) < n else slice(None)
        yield {name: _take(column, index) for name, column in batch.items()}


def _take(column: np.ndarray, index) -> np.ndarray:
    part = column[index]
    if part.dtype == object and len(part) and isinstance(part[0], np.ndarray):
        return np.stack(list(part))
    return part


FRAME_COLUMNS = ("frame", "time", "pair_with", "image")  # per frame; pair_rows turns them into pair columns


def pair_rows(frames: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Frame rows of one chunk (:func:`pipeline.read.datasource.chunk_batch`) → (one row per pair
    without images, the frame rows of frame0 and of frame1 of each pair). Pair columns: frame0,
    frame1, t0, t1, ordinal and the chunk's own columns."""
    pair_with = np.asarray(frames["pair_with"])
    index0 = np.flatnonzero(pair_with >= 0)
    index1 = pair_with[index0].astype(np.int64)
    rows = {name: np.asarray(column)[index0] for name, column in frames.items() if name not in FRAME_COLUMNS}
    frame, time_ = np.asarray(frames["frame"]), np.asarray(frames["time"])
    rows.update(frame0=frame[index0], frame1=frame[index1], t0=time_[index0], t1=time_[index1])
    return rows, index0, index1
