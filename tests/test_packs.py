"""Packs: the short clips of one read task written as one file per format, settled by one marker."""

import json

import numpy as np
import pyarrow.dataset as pads
import pytest

from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.keyset import KeySet
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions, pack_name, stamp_pack, task_groups
from pipeline.read.plan import ReadUnit
from pipeline.read.sources import Source
from pipeline.schema import MOTION_COLUMNS
from pipeline.write.compact import compact_packs
from pipeline.write.exactly_once import Books, count_settled
from pipeline.write.records import (
    ERRORS_DIR,
    PACKS_DIR,
    SKIPPED_DIR,
    UNITS_DIR,
    UnitRecord,
    clear_records,
    iter_pack_bodies,
    pack_markers,
    read_records,
    settled_units,
    write_pack_marker,
    write_record,
    write_unit_marker,
)
from pipeline.write.sinks import SinkOptions, committed_chunks, write_batch
from tests.test_schema import chunk_rows

ARRAYS = ("flow", "occlusion", "confidence")


def clip(video, n=3, seed=0, chunk=None, last=True, unit=None):
    """One chunk of pair rows of a one-chunk clip (its chunk list on its last chunk when ``last``)."""
    chunk = chunk or f"00000000-{n - 1:08d}"
    rows = chunk_rows(n=n, seed=seed, video=video, chunk=chunk, unit_chunks=json.dumps([chunk]) if last else "")
    rows["unit"] = np.full(n, unit or f"{video}-00000000", object)
    return rows


def summary_pack(chunks, name):
    """A pack of ``chunks`` as the labeler sends it in summary mode: motion columns, no label arrays."""
    rows = {k: v for k, v in pack(chunks, name).items() if k not in ARRAYS}
    rng = np.random.default_rng(len(rows["frame0"]))
    return {**rows, **{c: rng.random(len(rows["frame0"])).astype(np.float32) for c in MOTION_COLUMNS}}


def pack(chunks, name="p0", count=None):
    """``chunks`` joined into one batch and stamped as pack ``name`` of ``count`` chunks (default: all)."""
    batch = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    batch["frame"] = batch["frame0"]  # stamp_pack counts rows by the reader's frame column
    stamped = stamp_pack(batch, name)
    del stamped["frame"]
    if count is not None:
        stamped["pack_chunks"][:] = count
    return stamped


def files(root, suffix):
    """Data files below ``root`` (the bookkeeping folders, such as _clips_summary/, left out)."""
    paths = (p.relative_to(root) for p in root.rglob(f"*{suffix}"))
    return sorted(p.as_posix() for p in paths if not p.parts[0].startswith("_") or p.parts[0] == "_npz")


def test_a_whole_pack_is_one_file_per_format_and_one_marker(tmp_path):
    options = SinkOptions(str(tmp_path), formats=("parquet", "npz"), flow_encoding="float16")
    chunks = [clip("a1", 3, 0), clip("b2", 2, 1), clip("c3", 4, 2)]
    summary = write_batch(pack(chunks, "p0"), options)

    assert files(tmp_path, ".parquet") == ["corpus=corp/pack-p0.parquet"]
    assert files(tmp_path, ".npz") == ["_npz/corpus=corp/pack-p0.npz"]
    assert not (tmp_path / UNITS_DIR).exists()  # no marker per clip: the pack's settles all three
    markers = pack_markers(str(tmp_path))
    assert markers == {"p0": {f"{c['unit'][0]}": [c["chunk"][0]] for c in chunks}}
    assert settled_units(str(tmp_path)) == dict.fromkeys((c["unit"][0] for c in chunks), "done")
    assert summary["settled"].tolist() == [True] * 3 and summary["pairs"].tolist() == [3, 2, 4]
    assert summary["bytes_written"][0] > 0 and summary["bytes_written"][1:].tolist() == [0, 0]
    assert committed_chunks(options) == {}  # a pack is no chunk file: its units are settled instead

    table = pads.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table().sort_by("video_id")
    assert table["video_id"].to_pylist() == ["a1"] * 3 + ["b2"] * 2 + ["c3"] * 4
    assert table["corpus"].to_pylist() == ["corp"] * 9
    flows = np.stack([np.asarray(f, np.float16) for f in table["flow"].to_pylist()])
    np.testing.assert_array_equal(flows.reshape(9, 5, 7, 2), np.concatenate([c["flow"] for c in chunks]))


@pytest.mark.parametrize(
    "chunks, count, settled",
    [
        ([clip("a1"), clip("b2", seed=1)], 3, ["a1", "b2"]),  # Ray split the pack: a chunk is in another batch
        ([clip("a1"), clip("b2", seed=1, last=False)], None, ["a1"]),  # b2's chunk list is not in the pack
        (  # a resumed unit: its first chunk was committed by an earlier run
            [clip("a1"), clip("b2", 2, 1, chunk="00000002-00000003", unit="b2-00000000")],
            None,
            ["a1"],
        ),
    ],
    ids=["split", "unannounced", "partial-unit"],
)
def test_an_incomplete_pack_is_written_chunk_by_chunk(tmp_path, chunks, count, settled):
    if chunks[1]["chunk"][0] == "00000002-00000003":
        chunks[1]["unit_chunks"][:] = json.dumps(["00000000-00000001", "00000002-00000003"])
    options = SinkOptions(str(tmp_path))
    write_batch(pack(chunks, "p0", count), options)

    assert not (tmp_path / PACKS_DIR).exists() and not list(tmp_path.rglob("pack-*"))
    assert files(tmp_path, ".parquet") == sorted(
        f"corpus=corp/video={c['video_id'][0]}/{c['chunk'][0]}.parquet" for c in chunks
    )
    # Units whole in the batch are settled by the writer, one marker each; the others are left to the driver.
    assert settled_units(str(tmp_path)) == {f"{video}-00000000": "done" for video in settled}


def test_an_unsettled_pack_is_found_and_cleared_before_a_run(tmp_path):
    options = SinkOptions(str(tmp_path), formats=("parquet", "npz"), flow_encoding="float16")
    write_batch(pack([clip("a1"), clip("b2", seed=1)], "kept"), options)
    write_batch(pack([clip("c3", seed=2), clip("d4", seed=3)], "lost"), options)
    (tmp_path / PACKS_DIR / "lost.json").unlink()  # as if the run stopped between the files and the marker

    books = Books.read(options)
    assert len(books.settled) == 2 and "a1-00000000" in books.settled and "b2-00000000" in books.settled
    assert "c3-00000000" not in books.settled
    assert sorted(p.rsplit("/", 1)[-1] for p in books.unsettled_pack_files) == ["pack-lost.npz", "pack-lost.parquet"]
    books.clear_unsettled_packs()
    assert files(tmp_path, ".parquet") == ["corpus=corp/pack-kept.parquet"]
    assert files(tmp_path, ".npz") == ["_npz/corpus=corp/pack-kept.npz"]
    assert Books.read(options).unsettled_pack_files == ()


def test_settled_units_are_read_as_a_stream_and_counted_once(tmp_path):
    out = str(tmp_path / "out[1]")  # glob characters in out are taken as they are
    write_unit_marker(out, "a-00000000", "failed", [])  # failed, then packed by a retried writer: done
    write_unit_marker(out, "b-00000000", "skipped", [])
    write_unit_marker(out, "c-00000000", "failed", [])
    write_unit_marker(out, "d-00000000", "done", ["x"])  # done twice: a marker of its own and a pack
    for i, units in enumerate([["a-00000000", "d-00000000"], ["e-00000000"], ["f-00000000", "g-00000000"]]):
        write_pack_marker(out, f"p{i}", {unit: ["x"] for unit in units}, [f"pack-p{i}.parquet"])
    keys = KeySet(f"{v}-00000000" for v in "abcdef")  # g is another run's
    assert count_settled(out, keys, ("done", "skipped")) == 5  # a b d e f
    assert count_settled(out, keys, ("failed",)) == 2  # a and c by their own markers
    assert [b["pack"] for b in iter_pack_bodies(out, batch=2)] == ["p0", "p1", "p2"]
    books = Books.read(SinkOptions(out))
    assert len(books.settled) == 7 and all(f"{v}-00000000" in books.settled for v in "abcdefg")
    assert "h-00000000" not in books.settled and "a-00000001" not in books.settled


def test_records_are_picked_and_cleared_by_the_unit_in_their_name(tmp_path):
    out = str(tmp_path / "out[1]")  # glob characters in out are taken as they are
    records = [
        (ERRORS_DIR, "v1-00000000", "decode"),
        (ERRORS_DIR, "v1-00001800", "decode"),  # another segment of the same video
        (SKIPPED_DIR, "v2-00000000", "pair"),
        (ERRORS_DIR, "list-0123456789abcdef", "list"),
        (ERRORS_DIR, "clips-v3", "clips"),
    ]
    for folder, unit, stage in records:
        write_record(out, folder, UnitRecord("s3://b/x.mp4", unit[:2], unit, stage, "E", "m"))
    picked = read_records(out, ERRORS_DIR, units={"clips-v3", "v1-00001800", "v2-00000000"}, batch=1)
    assert [(r.unit, r.stage) for r in picked] == [("clips-v3", "clips"), ("v1-00001800", "decode")]
    clear_records(out, ["v1-00000000", "list-0123456789abcdef", "clips-v3", "v9-00000000"])
    assert [r.unit for r in read_records(out, ERRORS_DIR)] == ["v1-00001800"]
    assert [r.unit for r in read_records(out, SKIPPED_DIR)] == ["v2-00000000"]


def test_pack_names_are_stable_and_differ_between_unit_sets():
    units = [ReadUnit(Source(f"s3://b/{i}.mp4", "video", f"{i:016x}", "c", size=1000)) for i in range(4)]
    assert pack_name(units[:2], 0) == pack_name(list(units[:2]), 0)
    assert len({pack_name(units[:2], 0), pack_name(units[:2], 1), pack_name(units[1:3], 0)}) == 3


def test_a_read_task_holds_one_corpus():
    sources = [Source(f"s3://b/{i}.mp4", "video", f"{i:016x}", "c1" if i < 3 else "c2", size=1000) for i in range(5)]
    groups = task_groups([ReadUnit(s) for s in sources], ReadOptions(units_per_task=4))
    assert [[u.source.corpus for u in g] for g in groups] == [["c1"] * 3, ["c2"] * 2]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("short-clips")
    for i in range(12):
        write_translating_video(folder / f"c{i:02d}.mp4", 48, 64, 4, Motion(1.0 + i % 3, -0.5), seed=i)
    return folder


def label(clips, out, store="dense"):
    job = LabelJob(inputs=(str(clips),), sink=SinkOptions(str(out), store=store), labeler=LabelerConfig("dis"))
    return run_label(job)


def rows(out):
    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()
    return sorted(zip(table["source"].to_pylist(), table["frame0"].to_pylist(), table["flow_mean"].to_pylist()))


def test_short_clips_are_packed_and_a_lost_marker_relabels_only_its_pack(ray_local, clips, tmp_path):
    """Through Ray: 12 clips → a few packs. A pack whose marker is lost (the run stopped before it) is
    deleted and labeled again by the next run, which leaves the other packs' files untouched."""
    out = tmp_path / "out"
    first = label(clips, out)
    expected = rows(out)
    assert first.pairs == 36 and len(expected) == 36 and len(set(expected)) == 36
    packs = files(out, ".parquet")
    assert 1 < len(packs) < 12 and all(p.startswith("corpus=") and "/pack-" in p for p in packs)
    markers = pack_markers(str(out))
    assert sorted(f"pack-{name}.parquet" for name in markers) == sorted(p.rsplit("/", 1)[-1] for p in packs)

    lost = sorted(markers)[0]
    (out / PACKS_DIR / f"{lost}.json").unlink()
    kept = {p: (out / p).stat().st_mtime_ns for p in packs if lost not in p}
    again = label(clips, out)

    assert again.pairs == 3 * len(markers[lost]) and again.settled_before == 12 - len(markers[lost])
    assert rows(out) == expected
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept
    assert set(pack_markers(str(out))) >= set(markers) - {lost}


def test_a_summary_run_joins_its_packs_into_one_file(ray_local, clips, tmp_path):
    """--store summary: the packs of the 12 clips end as one joined file, settled by one marker, with the
    rows (and the motion summaries, to the bit) of the dense run's packs."""
    dense, summary = tmp_path / "dense", tmp_path / "summary"
    label(clips, dense)
    result = label(clips, summary, store="summary")
    [joined] = files(summary, ".parquet")
    assert joined.startswith("corpus=") and joined.endswith("-joined.parquet") and result.pairs == 36
    [(name, units)] = pack_markers(str(summary)).items()
    assert joined.endswith(f"pack-{name}.parquet") and len(units) == 12
    assert rows(summary) == rows(dense)
    again = label(clips, summary, store="summary")  # a no-op resume leaves the joined file alone
    assert again.pairs == 0 and again.settled_before == 12 and files(summary, ".parquet") == [joined]


def test_a_compaction_stopped_before_its_deletions_is_finished_by_the_next_run(tmp_path):
    options = SinkOptions(str(tmp_path), store="summary")
    for i in range(3):
        write_batch(summary_pack([clip(f"v{i}", seed=i)], f"p{i}"), options)
    members = {p: p.read_bytes() for p in [*tmp_path.rglob("pack-*.parquet"), *(tmp_path / PACKS_DIR).iterdir()]}
    expected = pads.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table().sort_by("video_id")

    assert compact_packs(options) == 3
    [joined] = files(tmp_path, ".parquet")
    [marker] = pack_markers(str(tmp_path)).values()
    assert set(marker) == {"v0-00000000", "v1-00000000", "v2-00000000"}
    for path, data in members.items():  # as if the run stopped before deleting the members
        path.write_bytes(data)
    books = Books.read(options)
    assert len(books.settled) == 3 and all(unit in books.settled for unit in marker)
    books.clear_unsettled_packs()
    assert files(tmp_path, ".parquet") == [joined] and list(pack_markers(str(tmp_path)).values()) == [marker]
    table = pads.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table().sort_by("video_id")
    assert table.equals(expected)
    assert compact_packs(options) == 0  # one file: nothing left to join


def test_deletions_take_paths_as_they_are_not_as_patterns(memory_root):
    # fsspec's rm expands glob characters: a stale pack in o[1] would match the settled one in o1.
    import fsspec

    fs = fsspec.filesystem("memory")
    for out in ("o1", "o[1]"):
        options = SinkOptions(f"{memory_root}/{out}", store="summary")
        for i in range(3):
            write_batch(summary_pack([clip(f"v{i}", seed=i)], f"p{i}"), options)
    other = {path: fs.cat_file(path) for path in fs.find(f"{memory_root}/o1")}
    fs.rm_file(f"{memory_root}/o[1]/{PACKS_DIR}/p2.json")  # o[1] stopped between p2's file and its marker

    Books.read(options).clear_unsettled_packs()
    assert compact_packs(options) == 2  # p0 and p1 joined, their files and markers deleted
    assert {path: fs.cat_file(path) for path in fs.find(f"{memory_root}/o1")} == other
    left = [path.split("/o[1]/", 1)[1] for path in fs.find(f"{memory_root}/o[1]")]
    [joined] = [p for p in left if p.endswith(".parquet") and not p.startswith("_")]
    assert joined.startswith("corpus=corp/pack-") and joined.endswith("-joined.parquet")


def test_visualize_splits_a_pack_into_its_videos(tmp_path):
    from jobs.visualize import load_labels

    chunks = [clip("a1", 3, 0), clip("b2", 2, 1)]
    write_batch(pack(chunks, "p0"), SinkOptions(str(tmp_path), flow_encoding="float16"))
    videos = load_labels(str(tmp_path))
    assert [(v.video_id, v.frame0.tolist()) for v in videos] == [("a1", [0, 1, 2]), ("b2", [0, 1])]
    for v, c in zip(videos, chunks):
        np.testing.assert_array_equal(v.flow, c["flow"].astype(np.float32))


def test_settled_units_of_many_packs_are_counted_exactly(tmp_path):
    # More units than the KeySet keeps before a merge: the count runs across merges of its recent keys.
    out = str(tmp_path / "out")
    units = [f"{i:016x}-00000000" for i in range(12_000)]
    for p in range(0, len(units), 1_000):
        write_pack_marker(out, f"p{p:05d}", {unit: ["x"] for unit in units[p : p + 1_000]}, [f"pack-p{p}.parquet"])
    keys = KeySet(units[::2] + ["another run's-00000000"])
    assert count_settled(out, keys, ("done", "skipped")) == 6_000
    assert count_settled(out, keys, ("failed",)) == 0
    assert len(Books.read(SinkOptions(out)).settled) == 12_000
