"""Manifests: a Parquet, CSV, JSONL or plain-text list of inputs, one row per input.

The format follows the extension: ``.parquet``, ``.csv``, ``.jsonl`` / ``.ndjson``, anything else
plain text (one URI per line; blank lines and ``#`` comments skipped). A row names its URI in one
column; optional ``start`` / ``end`` columns (seconds) narrow it to a span of the video, and the
columns chosen with ``carry`` are copied into every output row of that input, as text (a null
stays null). A bad row becomes a :class:`ManifestRowError`, never a failure of the whole list;
a manifest without the URI column (or a carried column) is refused at once.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import math
import numbers
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.parquet as pq

from pipeline.chunks import CHUNK_PAIRS, FRAME_COLUMNS, PACK_COLUMNS
from pipeline.encoding import SCALE_COLUMN
from pipeline.schema import ARRAY_COLUMNS, FRAME_LABEL_COLUMNS, MOTION_COLUMNS, SCALAR_COLUMNS
from pipeline.storage import filesystem

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Names a carried column may not take: output columns, the columns a chunk carries on its way
# to the sink, and "video", the partition key a dataset reader turns into a column.
RESERVED_COLUMNS = frozenset(
    {
        *SCALAR_COLUMNS,
        *ARRAY_COLUMNS,
        *MOTION_COLUMNS,
        *FRAME_LABEL_COLUMNS,
        SCALE_COLUMN,
        *FRAME_COLUMNS,
        "chunk",
        "unit",
        "unit_chunks",
        *PACK_COLUMNS,
        CHUNK_PAIRS,
        "ordinal",
        "labeled_on",
        "video",
    }
)


@dataclass(frozen=True)
class ManifestOptions:
    """uri: the manifest; column: the column of input URIs; carry: columns copied into every output
    row of their input (as text); start_column / end_column: optional span bounds in seconds."""

    uri: str
    column: str = "uri"
    carry: tuple[str, ...] = ()
    start_column: str = "start"
    end_column: str = "end"

    def __post_init__(self) -> None:
        object.__setattr__(self, "carry", tuple(self.carry))
        if not self.uri:
            raise ValueError("manifest: expected a URI, got an empty string")
        if not self.column:
            raise ValueError("manifest column: expected a column name, got an empty string")
        bad = [name for name in self.carry if not name or name in RESERVED_COLUMNS]
        if bad:
            raise ValueError(f"carry: {bad} are output columns already (or empty); expected other column names")
        if len(set(self.carry)) != len(self.carry):
            raise ValueError(f"carry: expected distinct column names, got {list(self.carry)}")


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One input: ``number`` is its row (Parquet, CSV: 1-based data row) or line (JSONL, text);
    ``start`` / ``end`` in seconds or None; ``carry`` the (column, text or None) pairs."""

    number: int
    uri: str
    start: float | None = None
    end: float | None = None
    carry: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class ManifestRowError:
    """A row that names no usable input: ``uri`` as given (may be empty), ``message`` says why."""

    number: int
    uri: str
    message: str


def manifest_format(uri: str) -> str:
    """parquet, csv, jsonl or text, by the extension of ``uri``."""
    return FORMATS.get(posixpath.splitext(uri.split("?")[0])[1].lower(), "text")


def read_manifest_rows(
    options: ManifestOptions, storage_options: Mapping[str, Any] | None = None
) -> Iterator[ManifestRow | ManifestRowError]:
    """The rows of the manifest, in order. Raises ValueError (before any row) when the URI column or
    a carried column is missing, FileNotFoundError when the manifest is."""
    fs, path = filesystem(options.uri, storage_options)
    fmt = manifest_format(options.uri)
    with fs.open(path, "rb") as f:
        records = {"parquet": _parquet_records, "csv": _csv_records, "jsonl": _jsonl_records, "text": _text_records}[
            fmt
        ](f, options)
        for number, record in records:
            yield record if isinstance(record, ManifestRowError) else manifest_row(number, record, options)


def manifest_row(number: int, record: Mapping[str, Any], options: ManifestOptions) -> ManifestRow | ManifestRowError:
    """One record (column → value) as a row, or the reason it is not one."""
    uri = record.get(options.column)
    if not isinstance(uri, str) or not uri.strip():
        return ManifestRowError(
            number, "" if uri is None else str(uri), f"expected a URI in column {options.column!r}, got {uri!r}"
        )
    uri = uri.strip()
    try:
        start = _seconds(record.get(options.start_column), options.start_column, end=False)
        end = _seconds(record.get(options.end_column), options.end_column, end=True)
    except ValueError as exc:
        return ManifestRowError(number, uri, str(exc))
    if start is not None and start < 0:
        return ManifestRowError(number, uri, f"{options.start_column}: expected ≥ 0 seconds, got {start}")
    if start is not None and end is not None and end <= start:
        return ManifestRowError(
            number, uri, f"{options.end_column}: expected more than {options.start_column} ({start}), got {end}"
        )
    if end is not None and end <= 0:
        return ManifestRowError(number, uri, f"{options.end_column}: expected more than 0 seconds, got {end}")
    carry = tuple((name, carried_text(record.get(name))) for name in options.carry)
    return ManifestRow(number, uri, start, end, carry)


def _seconds(value: Any, column: str, *, end: bool) -> float | None:
    """A span bound: a number (a Parquet decimal too) or numeric text; None, NaN and "" mean no bound, and so
    does +inf for an ``end``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal, str)):
        raise ValueError(f"{column}: expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{column}: expected a number of seconds, got {value!r}") from None
    if math.isnan(seconds) or (end and seconds == math.inf):
        return None
    if not math.isfinite(seconds):
        raise ValueError(f"{column}: expected a number of seconds, got {value!r}")
    return seconds


def carried_text(value: Any) -> str | None:
    """A carried value as output text: strings as they are, lists/dicts/booleans as JSON, other
    values by ``str``; None and NaN are null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _check_columns(found: list[str], options: ManifestOptions) -> None:
    missing = [name for name in (options.column, *options.carry) if name not in found]
    if missing:
        raise ValueError(
            f"manifest {options.uri}: no column {missing[0]!r} (columns found: {', '.join(found)}); "
            "name the URI column with --manifest-column"
        )
    # A column named twice would be read from one of its copies, silently (CSV: the last).
    used = (options.column, *options.carry, options.start_column, options.end_column)
    twice = [name for name in dict.fromkeys(used) if found.count(name) > 1]
    if twice:
        raise ValueError(
            f"manifest {options.uri}: column {twice[0]!r} appears {found.count(twice[0])} times, expected once"
        )


def _parquet_records(f: IO[bytes], options: ManifestOptions) -> Iterator[tuple[int, Any]]:
    """Only the columns needed, batch by batch: a manifest of millions of rows is never held whole."""
    parquet = pq.ParquetFile(f)
    found = parquet.schema_arrow.names
    _check_columns(found, options)
    wanted = [
        c
        for c in dict.fromkeys((options.column, options.start_column, options.end_column, *options.carry))
        if c in found
    ]
    number = 0
    for batch in parquet.iter_batches(batch_size=8192, columns=wanted):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _csv_records(f: IO[bytes], options: ManifestOptions) -> Iterator[tuple[int, Any]]:
    """Every value is text; an empty cell is null."""
    reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
    _check_columns(list(reader.fieldnames or []), options)
    for number, record in enumerate(reader, start=1):
        yield number, {k: (v if v != "" else None) for k, v in record.items()}


def _jsonl_records(f: IO[bytes], options: ManifestOptions) -> Iterator[tuple[int, Any]]:
    """One JSON object per line; a key absent from a line is null. The first object must have
    the URI and carried keys (later ones may omit carried keys)."""
    checked = False
    for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8-sig"), start=1):  # a BOM is no text
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, ManifestRowError(number, "", f"not JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield number, ManifestRowError(number, "", f"expected a JSON object, got {type(record).__name__}")
            continue
        if not checked:
            _check_columns(list(record), options)
            checked = True
        yield number, record


def _text_records(f: IO[bytes], options: ManifestOptions) -> Iterator[tuple[int, Any]]:
    if options.carry:
        raise ValueError(
            f"manifest {options.uri}: a plain-text manifest (one URI per line) has no columns to "
            f"carry, got --carry {','.join(options.carry)}; use Parquet, CSV or JSONL"
        )
    for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8-sig"), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, {options.column: text}
