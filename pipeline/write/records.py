"""Per-unit records beside the data: ``_errors/`` (a unit failed, fully or in part) and
``_skipped/`` (a unit had nothing to label, e.g. a one-frame video). One small Parquet file
per unit and stage, with a deterministic name, so retries overwrite instead of duplicating;
``pandas.read_parquet(out + "/_errors")`` reads them all."""

from __future__ import annotations

import io
import json
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import cat_files, filesystem, join, remove_files, scrub, write_atomic

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


def read_records(
    out: str,
    folder: str,
    storage_options: Mapping[str, Any] | None = None,
    units: Container[str] | None = None,
    batch: int = 256,
) -> list[UnitRecord]:
    """The records under ``out/folder`` (empty when there are none), by file name; only those of ``units`` when
    given, chosen by name before any is fetched. Fetched ``batch`` at a time (concurrently on object stores)."""
    fs, root = filesystem(out, storage_options)
    base = join(root, folder)
    if not fs.exists(base):
        return []
    paths = sorted(p for p in fs.find(base) if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("."))
    if units is not None:
        paths = [p for p in paths if _record_unit(p) in units]
    records = []
    for i in range(0, len(paths), batch):
        for data in cat_files(fs, paths[i : i + batch]):
            records += [UnitRecord(**row) for row in pq.read_table(io.BytesIO(data)).to_pylist()]
    return records


def _record_unit(path: str) -> str:
    """The unit of a record's path: records are <unit>-<stage>.parquet, and no stage has a hyphen."""
    return path.rsplit("/", 1)[-1].rpartition("-")[0]


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
    """unit key → status, for every unit settled under ``out`` (:func:`iter_settled` collected: small outs)."""
    return dict(iter_settled(out, storage_options))


def iter_settled(out: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """(unit key, status) of every unit settled under ``out``, as they are read: one listing of ``_units/``,
    and one listing of ``_packs/`` with the pack markers fetched a batch at a time (their units are done). A
    unit with a marker of its own and a pack (a writer retried) comes twice."""
    yield from iter_marked_units(out, storage_options)
    for body in iter_pack_bodies(out, storage_options):
        for unit in body["units"]:
            yield unit, "done"


def iter_marked_units(out: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """(unit key, status) of the units with a marker of their own: one listing of ``_units/``."""
    fs, root = filesystem(out, storage_options)
    base = join(root, UNITS_DIR)
    if not fs.exists(base):
        return
    for path in fs.find(base):
        unit, _, rest = path.rsplit("/", 1)[-1].rpartition(".")[0].rpartition(".")
        if rest in UNIT_STATUSES and unit:
            yield unit, rest


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
    return {body["pack"]: body["units"] for body in iter_pack_bodies(out, storage_options)}


def pack_marker_paths(out: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The paths of every pack marker under ``out``: one listing of ``_packs/``."""
    fs, root = filesystem(out, storage_options)
    base = join(root, PACKS_DIR)
    if not fs.exists(base):
        return []
    return sorted(p for p in fs.find(base) if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith("."))


def iter_pack_bodies(
    out: str, storage_options: Mapping[str, Any] | None = None, paths: Iterable[str] | None = None, batch: int = 256
) -> Iterator[dict[str, Any]]:
    """The markers (pack, units, files, and replaces for a joined pack) of the packs at ``paths`` (default:
    every pack under ``out``), fetched ``batch`` at a time (concurrently on object stores): a run over a
    corpus never holds every marker at once."""
    fs, _ = filesystem(out, storage_options)
    paths = pack_marker_paths(out, storage_options) if paths is None else list(paths)
    for i in range(0, len(paths), batch):
        for data in cat_files(fs, paths[i : i + batch]):
            yield json.loads(data)


def clear_records(out: str, units: Iterable[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete the error/skip records of ``units`` before they run again (a fixed input must not
    keep reporting its old failure)."""
    fs, root = filesystem(out, storage_options)
    units = set(units)
    for folder in (ERRORS_DIR, SKIPPED_DIR):
        base = join(root, folder)
        if units and fs.exists(base):
            stale = [p for p in fs.find(base) if _record_unit(p) in units]
            if stale:
                remove_files(fs, stale)
