"""Compaction of summary packs: the small pack files of a ``--store summary`` run joined into files of
tens of MB, without losing exactly-once.

A read task's short clips make one pack (a few dozen clips, tens of kB of summary rows), so a corpus of
millions of clips would leave tens of thousands of small files. After the stream, the driver joins the
small packs of each corpus folder, in name order, into files of up to ``target_bytes``. Each joined file is
a pack of its own whose marker lists every unit of its members and names them (``replaces``); only then
are the members' files and markers deleted. A run stopped between the two leaves both: the next run's
books (:class:`pipeline.write.exactly_once.Books`) delete the replaced members first, and a joined file
whose marker was never written is an unsettled pack, deleted, its members intact.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Container, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import filesystem, join, remove_files, write_atomic
from pipeline.write.records import PACKS_DIR, iter_pack_bodies, pack_marker_paths, write_pack_marker
from pipeline.write.sinks import PACK_PREFIX, SinkOptions, data_file

COMPACT_BYTES = 64 * 2**20  # joined files of up to this size: "tens of MB", a few row groups each


def compact_packs(
    options: SinkOptions, storage_options: Mapping[str, Any] | None = None, target_bytes: int = COMPACT_BYTES
) -> int:
    """Join the summary pack files under ``options.out`` smaller than half ``target_bytes`` into files of up
    to ``target_bytes`` (see the module's docstring); returns the number of files joined. Dense outputs are
    left as they are (their packs are large already)."""
    if options.store != "summary":
        return 0
    so = dict(storage_options or {})
    # Markers are listed, not fetched: only the members of a group are read, when it is joined.
    settled = {posixpath.basename(path)[: -len(".json")] for path in pack_marker_paths(options.out, so)}
    groups = _groups(_small_packs(options, so, settled, target_bytes // 2), target_bytes)
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda group: _join(options, group, so), groups))


def _small_packs(
    options: SinkOptions, storage_options: Mapping[str, Any], settled: Container[str], below: int
) -> list[tuple[str, str, int]]:
    """(pack, path relative to out, bytes) of each pack file in ``settled`` smaller than ``below``, by path."""
    fs, root = filesystem(options.out, storage_options)
    if not fs.exists(root):
        return []
    found = []
    for path, info in fs.find(root, detail=True).items():
        relative = options.data_relative(path[len(root.rstrip("/")) + 1 :])
        pack = options.parse_pack(relative) if relative else None
        if pack in settled and info.get("size", 0) < below:
            found.append((pack, relative, int(info.get("size", 0))))
    return sorted(found, key=lambda item: item[1])


def _groups(packs: list[tuple[str, str, int]], target_bytes: int) -> list[list[tuple[str, str, int]]]:
    """Consecutive packs of one folder (corpus) whose sizes add up to at most ``target_bytes``; groups of
    more than one pack only."""
    groups: list[list[tuple[str, str, int]]] = []
    current: list[tuple[str, str, int]] = []
    for pack in packs:
        same_folder = current and posixpath.dirname(current[0][1]) == posixpath.dirname(pack[1])
        if current and (not same_folder or sum(p[2] for p in current) + pack[2] > target_bytes):
            groups.append(current)
            current = []
        current.append(pack)
    groups.append(current)
    return [group for group in groups if len(group) > 1]


def _join(options: SinkOptions, group: list[tuple[str, str, int]], storage_options: Mapping[str, Any]) -> int:
    """Write the group's rows as one pack, its marker (the units of all members' markers; ``replaces``
    them), then delete the members' files and markers. The joined pack is named by its members, so a retry
    writes the same."""
    fs, root = filesystem(options.out, storage_options)
    members = [pack for pack, _, _ in group]
    tables = []
    for _, relative, _ in group:
        with fs.open(join(root, relative), "rb") as f:
            tables.append(pq.read_table(f))
    name = hashlib.sha256("\n".join(members).encode()).hexdigest()[:16] + "-joined"
    stem = posixpath.join(posixpath.dirname(group[0][1]), PACK_PREFIX + name)
    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(tables), buffer, compression=options.compression)
    path = data_file(options, stem, "parquet")
    write_atomic(fs, join(root, path), buffer.getvalue())
    markers = [join(root, PACKS_DIR, f"{pack}.json") for pack in members]
    units = {
        unit: chunks
        for body in iter_pack_bodies(options.out, storage_options, markers)
        for unit, chunks in body["units"].items()
    }
    write_pack_marker(options.out, name, units, [path], storage_options, replaces=members)
    remove_files(fs, [join(root, relative) for _, relative, _ in group])
    remove_files(fs, markers)
    return len(group)
