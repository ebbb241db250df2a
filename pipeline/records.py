"""Per-unit records beside the data: ``_errors/`` (a unit failed, fully or in part) and
``_skipped/`` (a unit had nothing to label, e.g. a one-frame video). One small Parquet file
per unit and stage, with a deterministic name, so retries overwrite instead of duplicating;
``pandas.read_parquet(out + "/_errors")`` reads them all."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import filesystem, join, scrub, write_atomic

ERRORS_DIR = "_errors"
SKIPPED_DIR = "_skipped"


@dataclass(frozen=True)
class UnitRecord:
    """source: URI; stage: list | open | decode | pair | label | write; error_type: exception class."""

    source: str
    video_id: str
    unit: str
    stage: str
    error_type: str
    message: str


def record_exception(source: str, video_id: str, unit: str, stage: str, exc: BaseException,
                     storage_options: Mapping[str, Any] | None = None) -> UnitRecord:
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
