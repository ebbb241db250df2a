"""Exactly-once bookkeeping on the driver: which settings made ``out``, which units are settled,
which chunks are committed, which records belong to this run. The pair labels and the clip labels
both keep their books here.

A unit is settled when a marker ``_units/<unit>.<status>.json`` exists, or a pack marker
``_packs/<pack>.json`` lists it (short clips written as one file by the writer). Read tasks write unit markers for units
that reach no writer (bad input, nothing to label, everything already committed); the
driver writes it for the others, once the unit's last chunk has announced the unit's chunk
list and every chunk in it is committed. Re-runs skip settled units at planning time and
skip committed chunks inside unsettled ones, so a job killed at any moment and re-run ends
with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.keyset import KeySet
from pipeline.storage import filesystem, join, remove_files
from pipeline.write.records import (
    ERRORS_DIR,
    PACKS_DIR,
    SKIPPED_DIR,
    UnitRecord,
    iter_marked_units,
    iter_pack_bodies,
    iter_settled,
    read_records,
    write_unit_marker,
)
from pipeline.write.run_manifest import read_manifest
from pipeline.write.sinks import SinkOptions, output_files


class OutputConflictError(ValueError):
    """``out`` holds labels made with other settings: mixing them would be silent corruption."""


def fingerprint(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide what a row contains: they must match across runs on one ``out``."""
    options = manifest["options"]
    # The checkpoint counts by its digest, not by where it was read from; batch size changes no row.
    labeler = {
        k: v for k, v in options["labeler"].items() if k not in ("batch_size", "checkpoint", "checkpoint_sha256")
    }
    read = {k: options["read"][k] for k in ("decode", "chunk_bytes", "max_chunk_pairs")}
    return {
        "model": manifest["model"],
        "checkpoint_sha256": manifest["checkpoint_sha256"],
        "labeler": labeler,
        "read": read,
        # How a run windows and probes its inputs changes no row.
        "plan": {k: v for k, v in options["plan"].items() if k in ("segment_frames", "split_bytes")},
        # No carried columns reads as a run from before --carry existed (no such key): they resume.
        "sink": {k: v for k, v in options["sink"].items() if k != "out" and (k != "carried" or v)},
        "corpus": options["corpus"],
        "frame_labels": _label_settings(options.get("frame_labels")),
        "clip_labels": _label_settings(options.get("clip_labels")),
    }


def _label_settings(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A labeler's options as the fingerprint sees them: weights by digest, not location; no batch size."""
    if not options:
        return None
    return {k: v for k, v in options.items() if k not in ("checkpoint", "checkpoint_sha256", "batch_size")}


def check_same_settings(
    out: str, manifest: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`OutputConflictError` naming each setting in which ``manifest`` differs from the run
    that wrote ``out`` (nothing to compare on a new ``out``)."""
    previous = read_manifest(out, storage_options)
    if previous is None or "options" not in previous:
        return
    # The new manifest as the old one was stored (JSON), so tuples and lists compare equal.
    changed = setting_differences(fingerprint(previous), fingerprint(json.loads(json.dumps(manifest, default=str))))
    if changed:
        raise OutputConflictError(
            f"{out} holds labels made with other settings ({'; '.join(changed)}); "
            "use a new --out, or the same settings to resume"
        )


def setting_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"read.decode.stride: 1 → 2"`` for each setting that differs, by its dotted name (nested mappings are
    compared key by key, so only the settings that changed are named)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += setting_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} → {b!r}")
    return out


@dataclass(frozen=True)
class Books:
    """What earlier runs left in ``out``: the settled units' keys (a :class:`KeySet`, 8 bytes a unit),
    committed chunks (video_id → chunk names) and the pack files to delete before a run: packs that no
    marker settled (a run stopped between a pack's files and its marker) and packs a joined pack replaces (a
    run stopped while compacting, see pipeline.write.compact), with the latter's markers. Read once when a
    run starts, from three listings and one request per pack marker, a batch of markers at a time."""

    out: str
    settled: Container[str]
    committed: Mapping[str, frozenset[str]]
    unsettled_pack_files: tuple[str, ...] = ()
    replaced_pack_markers: tuple[str, ...] = ()

    @classmethod
    def read(cls, sink: SinkOptions, storage_options: Mapping[str, Any] | None = None) -> Books:
        settled = KeySet(unit for unit, _ in iter_marked_units(sink.out, storage_options))
        packs: set[str] = set()
        replaced: set[str] = set()
        for body in iter_pack_bodies(sink.out, storage_options):
            packs.add(body["pack"])
            replaced.update(body.get("replaces", ()))
            settled.update(body["units"])
        replaced &= packs
        files = output_files(sink, storage_options)
        stale = tuple(
            path for pack, paths in files.packs.items() if pack not in packs or pack in replaced for path in paths
        )
        _, root = filesystem(sink.out, storage_options)
        markers = tuple(join(root, PACKS_DIR, f"{pack}.json") for pack in sorted(replaced))
        return cls(sink.out, settled, files.committed, stale, markers)

    def clear_unsettled_packs(self, storage_options: Mapping[str, Any] | None = None) -> None:
        """Delete the files of unsettled packs before a run (their units run again, so their rows would be
        there twice), and the files and markers of packs a joined pack replaced."""
        fs, _ = filesystem(self.out, storage_options)
        for paths in (self.unsettled_pack_files, self.replaced_pack_markers):  # files first, then markers
            if paths:
                remove_files(fs, paths)

    def pending(self, keys: Iterable[str]) -> list[str]:
        """The keys of ``keys`` not settled yet, in order."""
        return [key for key in keys if key not in self.settled]

    def tracker(self, storage_options: Mapping[str, Any] | None = None) -> UnitTracker:
        """A tracker that settles units in ``out`` as their chunks are committed during this run."""
        return UnitTracker(
            self.committed, lambda unit, chunks: write_unit_marker(self.out, unit, "done", chunks, storage_options)
        )


def unit_outcomes(
    out: str, keys: Container[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[list[UnitRecord], list[UnitRecord]]:
    """(errors, skipped): the records in ``out`` of the units in ``keys`` (this run's plan; records of
    other inputs labeled into the same ``out`` are not this run's)."""
    return (
        read_records(out, ERRORS_DIR, storage_options, keys),
        read_records(out, SKIPPED_DIR, storage_options, keys),
    )


def count_settled(
    out: str, keys: KeySet, statuses: Container[str], storage_options: Mapping[str, Any] | None = None
) -> int:
    """How many units of ``keys`` are settled under ``out`` with one of ``statuses``, each counted once (a
    unit with a marker of its own and a pack counts as done), read as a stream of markers."""
    counted = KeySet()
    done = 0
    settled = iter_settled(out, storage_options)
    while batch := list(itertools.islice(settled, 4096)):
        units = [unit for unit, status in batch if status in statuses]
        done += counted.update(itertools.compress(units, keys.mask(units)))
    return done


class UnitTracker:
    """Follows write summaries (video_id, chunk, unit, unit_chunks, settled) and settles units.

    ``committed``: video_id → chunks already committed when the run started.
    ``settle(unit, chunks)`` is called once per unit whose chunks are all committed, unless the
    writer settled it already (``settled`` true: all its chunks were in one block, see
    :func:`pipeline.write.sinks.write_batch`). A settled unit leaves only its key's 8-byte digest behind
    (its chunk names are dropped), so a run of millions of clips holds 8 bytes per clip.
    """

    def __init__(self, committed: Mapping[str, frozenset[str]], settle: Callable[[str, list[str]], None]):
        self._committed = {video: set(chunks) for video, chunks in committed.items()}
        self._seen: dict[str, set[str]] = {}  # unit → chunks summarised in this run, until it settles
        self._waiting: dict[str, tuple[str, list[str]]] = {}
        self._settle = settle
        self._settled_by_writer: set[str] = set()
        self._settled = KeySet()  # 8 bytes per unit settled in this run, to drop a retried task's repeats

    def add(self, summary: Mapping[str, Any]) -> bool:
        """Take one chunk's summary; False when it was taken before (a retried task's repeat)."""
        video, unit, chunk = summary["video_id"], summary["unit"], summary["chunk"]
        if unit in self._settled or chunk in self._seen.get(unit, ()):
            return False
        self._seen.setdefault(unit, set()).add(chunk)
        self._committed.setdefault(video, set()).add(chunk)
        if summary.get("unit_chunks"):
            self._waiting[unit] = (video, json.loads(summary["unit_chunks"]))
            if summary.get("settled"):
                self._settled_by_writer.add(unit)
        # Summaries of one unit may arrive in any order: re-check the waiting units of this video.
        for waiting, (unit_video, chunks) in list(self._waiting.items()):
            if unit_video == video and self._committed.get(video, set()).issuperset(chunks):
                self._close(waiting, video, chunks)
        return True

    def _close(self, unit: str, video: str, chunks: list[str]) -> None:
        del self._waiting[unit]
        if unit in self._settled_by_writer:
            self._settled_by_writer.discard(unit)
        else:
            self._settle(unit, chunks)
        self._settled.add(unit)
        del self._seen[unit]
        # A unit's chunk names are its own (frame ranges): the video's other units do not need them.
        self._committed[video].difference_update(chunks)
        if not self._committed[video]:
            del self._committed[video]

    @property
    def settled(self) -> int:
        """Units settled in this run as their chunks were committed."""
        return len(self._settled)

    @property
    def waiting(self) -> list[str]:
        """Units whose last chunk arrived but some other chunk did not (should be none at the end)."""
        return sorted(self._waiting)
