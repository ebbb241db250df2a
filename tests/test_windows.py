"""Windows: a run lists and plans its inputs as it goes, a window of pending units at a time
(jobs.label.plan_windows), and remembers each unit in 8 bytes (pipeline.keyset.KeySet)."""

import json

import fsspec
import pytest

from jobs.label import LabelJob, RunCounts, Window, plan_windows
from pipeline.keyset import KeySet, digest
from pipeline.label.labeler import LabelerConfig
from pipeline.read.manifest import ManifestOptions
from pipeline.read.plan import PlanOptions, ReadUnit
from pipeline.read.sources import Source, video_id_for
from pipeline.write.exactly_once import Books
from pipeline.write.sinks import SinkOptions


def test_keyset_holds_keys_across_its_merges():
    keys = [f"{i:016x}-00000000" for i in range(70_000)]  # more than one merge of the recent keys
    s = KeySet()
    assert all(s.add(k) for k in keys)
    assert not any(s.add(k) for k in keys[::997])  # each is there once
    assert len(s) == len(keys)
    assert all(k in s for k in keys[::7]) and keys[-1] in s
    assert "absent" not in s and f"{70_000:016x}-00000000" not in s and 5 not in s
    assert s.nbytes == 8 * 69_632  # 17 merges of 4,096 keys into the sorted array; 368 keys wait in a set
    assert digest("a") != digest("b") and digest("a") == digest("a")


def test_keyset_adds_and_looks_up_many_keys_at_once():
    keys = [f"{i:016x}-00000000" for i in range(10_000)]
    s = KeySet(keys[:100])  # 100 recent keys, none merged yet
    assert s.update(keys[50:5_000] + keys[50:60]) == 4_900  # repeats in the batch and in the set count once
    assert s.nbytes == 8 * 5_000 and len(s) == 5_000  # the batch took the recent set over 4,096: one merge
    assert s.update(keys[4_990:5_010]) == 10 and len(s) == 5_010
    found = s.mask([keys[0], "absent", keys[5_009], keys[5_010], keys[4_000]])
    assert found.tolist() == [True, False, True, False, True]  # recent and merged keys alike
    assert KeySet().mask(keys[:3]).tolist() == [False] * 3 and KeySet().update([]) == 0


def test_keyset_counts_new_keys_of_small_batches_across_merges():
    keys = [f"{i:016x}-00000000" for i in range(10_000)]
    s = KeySet()
    added = [s.update(keys[i : i + 1_000] + keys[max(0, i - 10) : i]) for i in range(0, len(keys), 1_000)]
    assert added == [1_000] * 10  # the 5th and 10th batches take the recent set over 4,096: merges
    assert len(s) == 10_000 and s.nbytes == 8 * 10_000 and all(s.mask(keys[::101]))


def uris(n):
    return [f"https://127.0.0.1:9/clips/c{i:02d}.mp4" for i in range(n)]


def windows_of(memory_root, lines, settled=(), committed=None, first=2, cap=3):
    manifest = f"{memory_root}/clips.txt"
    with fsspec.open(manifest, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    job = LabelJob(
        inputs=(),
        manifest=ManifestOptions(manifest),
        sink=SinkOptions(f"{memory_root}/out"),
        labeler=LabelerConfig("dis"),
        plan=PlanOptions(window_units=cap, first_window_units=first),
    )
    books = Books(job.sink.out, {key: "done" for key in settled}, committed or {})
    return list(plan_windows(job, books))


def key(uri):
    return f"{video_id_for(uri)}-00000000"


def test_windows_grow_from_the_first_to_the_cap_and_keep_only_keys_of_settled_units(memory_root):
    clips = uris(12)
    lines = clips[:5] + [clips[1]] + clips[5:]
    windows = windows_of(memory_root, lines, settled=[key(clips[2]), key(clips[3])])
    # Units per window, settled ones included: 2, then 4·2 capped at 3, then 3 each; the repeated row is none.
    assert [[u.source.uri for u in w.pending] for w in windows] == [
        clips[0:2],
        [clips[4]],
        clips[5:8],
        clips[8:11],
        [clips[11]],
    ]
    assert [w.settled for w in windows] == [[], [key(clips[2]), key(clips[3])], [], [], []]
    assert [(w.units, w.settled_before, len(w.sources)) for w in windows] == [(2, 0, 2), (3, 2, 3)] + [
        (3, 0, 3),
        (3, 0, 3),
        (1, 0, 1),
    ]
    # Records are cleared for the units a window runs; its outcome covers the settled ones too.
    assert windows[1].run_keys == [key(clips[4])]
    assert windows[1].keys == [key(clips[4]), key(clips[2]), key(clips[3])]
    assert all(not w.listing_errors for w in windows)


def test_a_bad_manifest_fails_before_the_run_writes_anything(memory_root, tmp_path):
    from jobs.label import run_label

    manifest = f"{memory_root}/clips.csv"
    with fsspec.open(manifest, "w") as f:
        f.write("uri,caption\nhttps://127.0.0.1:9/a.mp4,x\n")
    job = LabelJob(
        inputs=(),
        manifest=ManifestOptions(manifest, carry=("clip_id",)),
        sink=SinkOptions(str(tmp_path / "out")),
        labeler=LabelerConfig("dis"),
    )
    with pytest.raises(ValueError, match="no column 'clip_id'"):
        run_label(job)
    assert not (tmp_path / "out").exists()


def test_windows_carry_listing_errors_and_committed_chunks(memory_root):
    clips = uris(3)
    rows = [{"uri": clips[0]}, {"uri": 5}, {"uri": clips[1]}, "not json", {"uri": clips[2]}]
    path = f"{memory_root}/rows.jsonl"
    with fsspec.open(path, "w") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    job = LabelJob(
        inputs=(),
        manifest=ManifestOptions(path),
        sink=SinkOptions(f"{memory_root}/out"),
        labeler=LabelerConfig("dis"),
        plan=PlanOptions(window_units=1, first_window_units=1),
    )
    committed = {video_id_for(clips[1]): frozenset({"f000000-000002"})}
    windows = list(plan_windows(job, Books(job.sink.out, {}, committed)))
    assert [[u.source.uri for u in w.pending] for w in windows] == [[c] for c in clips]
    # A bad row travels in the window being filled when it is read, before the next unit.
    assert [[e.uri for e in w.listing_errors] for w in windows] == [[], [f"{path}#row=2"], [f"{path}#row=4"]]
    assert [w.pending[0].done_chunks for w in windows] == [frozenset(), committed[video_id_for(clips[1])], frozenset()]
    assert windows[1].keys == [key(clips[1]), windows[1].keys[1]] and windows[1].keys[1].startswith("list-")


def test_a_settled_manifest_is_windows_with_nothing_pending(memory_root):
    clips = uris(7)
    windows = windows_of(memory_root, clips, settled=[key(c) for c in clips])
    assert [(len(w.pending), w.units, w.settled_before) for w in windows] == [(0, 2, 2), (0, 3, 3), (0, 2, 2)]


def test_window_sizes_are_checked():
    with pytest.raises(ValueError, match="expected ≥ 1, got 0, 1024"):
        PlanOptions(window_units=0)


def test_stage_stats_add_up_over_windows_and_utilisation_counts_each_windows_actors():
    from jobs.stats import merge_stages, run_stats, stamp_actor_seconds

    def stage(name, seconds, busy, rows):
        return {
            "stage": name,
            "operator": name.title(),
            "seconds": seconds,
            "busy_seconds": busy,
            "cpu_seconds": busy,
            "blocks": 1,
            "rows_in": rows,
            "rows_out": rows,
            "bytes_out": 100 * rows,
            "failed_tasks": 0,
        }

    windows = [
        stamp_actor_seconds([stage("read", 4.0, 4.0, 40), stage("label", 10.0, 15.0, 40)], 2),
        stamp_actor_seconds([stage("read", 2.0, 2.0, 20), stage("label", 5.0, 8.0, 20)], 3),
    ]
    merged = merge_stages(windows)
    assert merged == [
        {**stage("read", 6.0, 6.0, 60), "blocks": 2},
        {**stage("label", 15.0, 23.0, 60), "blocks": 2, "actor_seconds": 35.0},
    ]
    actors = [{"actor": str(i), "pairs": 1} for i in range(5)]  # two in the first window, three in the second
    stats = run_stats(
        merged, actors, pairs=30, seconds=20.0, source_bytes=0, bytes_written=0, errors=0, actors_at_once=3
    )
    label = stats["stages"][1]
    # At most 3 actors at once; 23 busy seconds of the 10·2 + 5·3 the windows' actors had, not of 15 s · 5.
    assert (label["actors"], label["utilisation"]) == (3, 0.657)


def test_a_video_split_over_two_windows_counts_its_bytes_once():
    long, short, next_ = (
        Source(f"s3://b/{n}.mp4", "video", n, "c", size=size) for n, size in (("long", 900), ("short", 50), ("next", 7))
    )
    counts = RunCounts()
    counts.add(Window(pending=[ReadUnit(short), ReadUnit(long)]))
    counts.add(Window(pending=[ReadUnit(long, 1800, first=False), ReadUnit(next_)]))
    counts.add(Window(settled=["x-00000000"]))
    assert counts.source_bytes == 50 + 900 + 7 and counts.units == 5 and counts.windows == 3
    assert counts.last_source == next_.uri and len(counts.keys) == 5
