"""Splitting a Ray batch back into its chunks (rows of one video and chunk id, in order).

Ray may merge several chunks into one block; a block never splits a chunk (chunks are far
smaller than Ray's target block size, see ``ReadOptions.chunk_bytes``). Columns of frames
of different sizes arrive as object arrays of per-row arrays; each chunk is one size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

CHUNK_KEYS = ("video_id", "chunk")


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
