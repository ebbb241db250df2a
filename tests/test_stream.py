"""A streamed manifest without Ray: the rows its task yields, and the driver's pass over it once the run ends."""

from __future__ import annotations

import json
import random

import fsspec
import pytest

from pipeline.read.manifest import ManifestOptions
from pipeline.read.sources import Source, video_id_for
from pipeline.read.stream import (
    ManifestStream,
    SeenIds,
    has_pending,
    manifest_coverage,
    pending_rows,
    row_units,
    source_rows,
    unit_key,
)
from pipeline.write.records import ERRORS_DIR, UnitRecord, record_paths, write_record, write_unit_marker


def manifest(uri: str, rows: list) -> ManifestOptions:
    with fsspec.open(uri, "w") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return ManifestOptions(uri, carry=("clip_id",))


ROWS = [
    {"uri": "s3://b/a.mp4", "clip_id": "a"},
    {"uri": "s3://b/b.mp4", "clip_id": "b", "start": 1.5, "end": 3.0},
    {"uri": "s3://b/a.mp4", "clip_id": "again"},  # the same video: the first row wins
    "not json",
    {"uri": "s3://b/c.mp4", "clip_id": None},
]


def test_seen_ids_match_a_set_across_merges():
    """The compact first-wins set agrees with a Python set, across its merges and for ids of 2^63 and up."""
    rng = random.Random(0)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(300)] + ["ffffffffffffffff", "8000000000000000"]
    ids += rng.sample(ids, 200)
    seen, reference = SeenIds(buffer=7), set()
    for video in ids:
        assert seen.add(video) == (video not in reference)
        reference.add(video)


def test_rows_round_trip_to_units():
    """The rows a manifest task sends decode into the units a listed run would plan, spans and carried
    columns included, with the chunks an earlier run committed."""
    sources = [
        Source("s3://b/a.mp4", "video", video_id_for("s3://b/a.mp4"), "m", carry=(("clip_id", "a"),)),
        Source(
            "s3://b/b.mp4",
            "video",
            video_id_for("s3://b/b.mp4", 1.5, 3.0),
            "m",
            start=1.5,
            end=3.0,
            carry=(("clip_id", None),),
        ),
    ]
    committed = {sources[1].video_id: frozenset({"00000002-00000004", "00000000-00000001"})}
    units = row_units(source_rows(sources, committed))
    assert [u.source for u in units] == sources
    assert [u.done_chunks for u in units] == [frozenset(), committed[sources[1].video_id]]
    assert [u.key for u in units] == [unit_key(s) for s in sources]


def test_pending_rows_leave_out_repeats_bad_and_settled_rows_and_clear_stale_records(memory_root):
    options = manifest("memory://m/clips.jsonl", ROWS)
    out = "memory://out"
    a, b, c = (video_id_for("s3://b/a.mp4"), video_id_for("s3://b/b.mp4", 1.5, 3.0), video_id_for("s3://b/c.mp4"))
    write_unit_marker(out, f"{a}-00000000", "done", ["00000000-00000004"])
    for video in (a, c):  # a is settled: its record stays; c runs again: its old failure goes
        write_record(out, ERRORS_DIR, UnitRecord("u", video, f"{video}-00000000", "open", "E", "m"))
    stale = {u: tuple(p) for u, p in record_paths(out).items() if u != f"{a}-00000000"}
    stream = ManifestStream(options, None, out, {}, frozenset({f"{a}-00000000"}), {c: frozenset({"x"})}, stale)
    batches = list(pending_rows(stream, batch_rows=1))
    assert [list(batch["video_id"]) for batch in batches] == [[b], [c]]
    assert [json.loads(batch["done_chunks"][0]) for batch in batches] == [[], ["x"]]
    assert [json.loads(batch["carry"][0]) for batch in batches] == [[["clip_id", "b"]], [["clip_id", None]]]
    assert sorted(record_paths(out)) == [f"{a}-00000000"]
    assert has_pending(stream) and not has_pending(
        ManifestStream(
            options,
            None,
            out,
            {},
            frozenset(unit_key(u.source) for u in row_units(batches[0])) | {f"{a}-00000000", f"{c}-00000000"},
        )
    )


@pytest.mark.parametrize("bounds", [(1,), (2, 3), (3,), (10,)])
def test_read_tasks_of_row_ranges_yield_each_pending_row_once(memory_root, bounds):
    """The manifest's read tasks cover growing ranges of rows; together they yield the rows of one pass, in
    order, and a video's repeat in a later range is still left out (its first row wins)."""
    stream = ManifestStream(manifest("memory://m/ranges.jsonl", ROWS), None, "memory://out3")
    ranges = list(zip((0, *bounds), (*bounds, None)))
    by_range = [[v for batch in pending_rows(stream, lo, hi) for v in batch["video_id"]] for lo, hi in ranges]
    whole = [v for batch in pending_rows(stream) for v in batch["video_id"]]
    assert [v for part in by_range for v in part] == whole
    assert whole == [video_id_for("s3://b/a.mp4"), video_id_for("s3://b/b.mp4", 1.5, 3.0), video_id_for("s3://b/c.mp4")]


@pytest.mark.parametrize("settled_status", ["done", "failed"])
def test_coverage_counts_the_manifest_once_and_reports_its_records(memory_root, settled_status):
    """The driver's pass after a run: each video once, units settled before and at the end, the bad row
    recorded (and reported), and only the records of the manifest's own units."""
    options = manifest("memory://m/clips.jsonl", ROWS)
    out = "memory://out2"
    a, c = video_id_for("s3://b/a.mp4"), video_id_for("s3://b/c.mp4")
    write_unit_marker(out, f"{a}-00000000", "done", ["00000000-00000004"])
    write_unit_marker(out, f"{c}-00000000", settled_status, [])
    write_record(out, ERRORS_DIR, UnitRecord("s3://b/c.mp4", c, f"{c}-00000000", "open", "E", "gone"))
    write_record(out, ERRORS_DIR, UnitRecord("s3://other", "x", "x-00000000", "open", "E", "not ours"))
    stream = ManifestStream(options, None, out)
    coverage = manifest_coverage(stream, settled_before={f"{a}-00000000"})
    assert (coverage.sources, coverage.units, coverage.settled_before) == (3, 3, 1)
    assert coverage.done == (2 if settled_status == "done" else 1)
    assert [(r.unit, r.message) for r in coverage.errors] == [
        (coverage.errors[0].unit, "row 4 (no URI): not JSON: Expecting value: line 1 column 1 (char 0)"),
        (f"{c}-00000000", "gone"),
    ]
    assert coverage.errors[0].source == "memory://m/clips.jsonl#row=4" and coverage.skipped == []
    assert coverage.errors[0].unit in record_paths(out)  # the bad row is recorded too
