"""Per-unit records beside the data: ``_errors/`` (a unit failed, fully or in part) and
``_skipped/`` (a unit had nothing to label, e.g. a one-frame video). One small Parquet file
per unit and stage, with a deterministic name, so retries overwrite instead of duplicating;
``pandas.read_parquet(out + "/_errors")`` reads them all."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import filesystem, join, scrub, write_atomic

ERRORS_DIR = "_errors"
SKIPPED_DIR = "_skipped"
UNITS_DIR = "_units"  # one marker per settled unit: re-runs skip it at planning time
PACKS_DIR = "_packs"  # one marker per pack of short clips written as one file: it settles all of them


@dataclass(frozen=True)
class UnitRecord:
    """source: URI; stage: list | open | decode | pair | label | write; error_type: exception class."""

    source: str
    video_id: str
    unit: str
    stage: str
    error_type: str
    message: str


def record_exception(
    source: str,
    video_id: str,
    unit: str,
    stage: str,
    exc: BaseException,
    storage_options: Mapping[str, Any] | None = None,
) -> UnitRecord:
    message = scrub(str(exc) or repr(exc), storage_options)
    return UnitRecord(source, video_id, unit, stage, type(exc).__name__, message)


def write_record(out: str, folder: str, record: UnitRecord, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``record`` atomically to ``out/folder/<unit>-<stage>.parquet``; returns its path."""
    fs, root = filesystem(out, storage_options)
    path = join(root, folder, f"{record.unit}-{record.stage}.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([asdict(record)]), buffer)
    write_atomic(fs, path, buffer.getvalue())
    return path


def read_records(out: str, folder: str, storage_options: Mapping[str, Any] | None = None) -> list[UnitRecord]:
    """All records under ``out/folder`` (empty when there are none)."""
    fs, root = filesystem(out, storage_options)
    base = join(root, folder)
    if not fs.exists(base):
        return []
    records = []
    for path in sorted(fs.find(base)):
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as f:
                records += [UnitRecord(**row) for row in pq.read_table(f).to_pylist()]
    return records


UNIT_STATUSES = ("done", "failed", "skipped")


def write_unit_marker(
    out: str, unit: str, status: str, chunks: list[str], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Mark ``unit`` settled (status done | failed | skipped) with the chunk files it consists of.

    The status is in the marker's name, ``_units/<unit>.<status>.json``, so that one listing tells a
    resume which units are settled and how, with no request per unit; the body lists the chunks."""
    if status not in UNIT_STATUSES:
        raise ValueError(f"status: expected one of {UNIT_STATUSES}, got {status!r}")
    fs, root = filesystem(out, storage_options)
    data = json.dumps({"unit": unit, "status": status, "chunks": chunks}).encode()
    write_atomic(fs, join(root, UNITS_DIR, f"{unit}.{status}.json"), data)


def settled_units(out: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """unit key → status, for every unit settled under ``out``: one listing of ``_units/``, and the units
    of every pack marker (done; one listing of ``_packs/`` and one request per pack, not per unit)."""
    settled = marked_units(out, storage_options)
    settled.update({unit: "done" for units in pack_markers(out, storage_options).values() for unit in units})
    return settled


def marked_units(out: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """unit key → status of the units with a marker of their own: one listing of ``_units/``."""
    fs, root = filesystem(out, storage_options)
    base = join(root, UNITS_DIR)
    if not fs.exists(base):
        return {}
    settled = {}
    for path in fs.find(base):
        unit, _, rest = path.rsplit("/", 1)[-1].rpartition(".")[0].rpartition(".")
        if rest in UNIT_STATUSES and unit:
            settled[unit] = rest
    return settled


def write_pack_marker(
    out: str,
    pack: str,
    units: Mapping[str, list[str]],
    files: list[str],
    storage_options: Mapping[str, Any] | None = None,
    replaces: Iterable[str] = (),
) -> None:
    """Settle every unit of ``pack`` (unit key → its chunks) at once, after the pack's ``files`` (paths
    relative to ``out``) are committed: ``_packs/<pack>.json``. ``replaces``: the packs whose rows it holds
    now (joined by :mod:`pipeline.write.compact`), to be deleted."""
    fs, root = filesystem(out, storage_options)
    body = {"pack": pack, "units": dict(units), "files": files}
    if replaces:
        body["replaces"] = list(replaces)
    write_atomic(fs, join(root, PACKS_DIR, f"{pack}.json"), json.dumps(body).encode())


def pack_markers(out: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, list[str]]]:
    """pack → its units (unit key → chunks), for every pack settled under ``out``."""
    return {pack: body["units"] for pack, body in pack_marker_bodies(out, storage_options).items()}


def pack_marker_bodies(out: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """pack → its marker (pack, units, files, and replaces for a joined pack), for every pack settled under
    ``out``: the markers are listed once and fetched together (concurrently on object stores)."""
    fs, root = filesystem(out, storage_options)
    base = join(root, PACKS_DIR)
    if not fs.exists(base):
        return {}
    paths = [p for p in fs.find(base) if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")]
    bodies = fs.cat(paths) if paths else {}
    return {body["pack"]: body for body in (json.loads(data) for data in bodies.values())}


def clear_records(out: str, units: Iterable[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete the error/skip records of ``units`` before they run again (a fixed input must not
    keep reporting its old failure)."""
    fs, root = filesystem(out, storage_options)
    prefixes = tuple(f"{unit}-" for unit in units)
    for folder in (ERRORS_DIR, SKIPPED_DIR):
        base = join(root, folder)
        if prefixes and fs.exists(base):
            stale = [p for p in fs.find(base) if p.rsplit("/", 1)[-1].startswith(prefixes)]
            if stale:
                fs.rm(stale)
