"""What `flowlabel label` prints at the end, and how it names the settings a refused run changed (no Ray)."""

from __future__ import annotations

from jobs.label import MAX_RECORDS, LabelResult, format_label_summary
from pipeline.write.exactly_once import setting_differences
from pipeline.write.records import UnitRecord
from pipeline.write.sinks import SinkOptions


def result(**fields) -> LabelResult:
    values = dict(
        sources=2,
        units=3,
        pairs=10,
        chunks=2,
        files=4,
        bytes_written=3 * 2**20,
        seconds=4.0,
        per_video=[],
        errors=[],
        skipped=[],
    )
    return LabelResult(**{**values, **fields})


def test_summary_counts_the_files_written_and_names_the_output():
    text = format_label_summary(result(), SinkOptions("s3://b/labels", formats=("parquet", "npz")))
    assert text.splitlines()[0] == (
        "labeled 10 pairs from 2 sources in 4.0 s (2.50 pairs/s): 2 chunks in 4 files "
        "(parquet + npz), 3.0 MiB, in s3://b/labels"
    )
    assert "<out>" not in text


def test_summary_of_a_resume_says_what_was_already_done():
    done = format_label_summary(result(pairs=0, chunks=0, bytes_written=0, settled_before=3), SinkOptions("o"))
    assert done.splitlines()[0] == (
        "nothing to do: all 3 units of these 2 sources were already labeled in o "
        "by an earlier run with the same settings"
    )
    partial = format_label_summary(result(settled_before=1), SinkOptions("o")).splitlines()
    assert partial[0].startswith("labeled 10 pairs") and partial[1] == (
        "resumed: 1 of 3 units were already labeled by an earlier run"
    )


def test_summary_lists_a_bounded_number_of_failures_and_points_to_the_rest():
    errors = [
        UnitRecord(f"s3://b/{i}.mp4", "v", f"v{i}-00000000", "decode", "E", "bad") for i in range(MAX_RECORDS + 7)
    ]
    skipped = [UnitRecord("s3://b/one.mp4", "w", "w-00000000", "pair", "NoPairs", "one frame")]
    lines = format_label_summary(result(errors=errors, skipped=skipped), SinkOptions("s3://b/o")).splitlines()
    assert sum(line.startswith("FAILED   ") for line in lines) == MAX_RECORDS
    assert lines[lines.index(f"FAILED   s3://b/{MAX_RECORDS - 1}.mp4 [decode] E: bad") + 1] == (
        "… and 7 more failed: s3://b/o/_errors/"
    )
    assert "skipped  s3://b/one.mp4: one frame" in lines and not any("more skipped" in line for line in lines)
    assert lines[-1] == f"{MAX_RECORDS + 7} input(s) failed; details in s3://b/o/_errors/ (exit code 2)"


def test_setting_differences_name_only_the_changed_settings():
    old = {"model": "dis", "read": {"decode": {"stride": 1, "fps": None}, "chunk_bytes": 8}, "sink": {"formats": ["a"]}}
    new = {
        "model": "dis",
        "read": {"decode": {"stride": 2, "fps": None}, "chunk_bytes": 8},
        "sink": {"formats": ["b"]},
        "clip_labels": {"top_k": 5},
    }
    assert setting_differences(old, new) == [
        "clip_labels: None → {'top_k': 5}",
        "read.decode.stride: 1 → 2",
        "sink.formats: ['a'] → ['b']",
    ]
    assert setting_differences(old, old) == []


def test_tally_counts_each_chunk_once_and_lists_a_bounded_number_of_videos():
    """The driver keeps totals, not summaries: a retried task's repeated summary counts once, and only the
    first ``max_videos`` videos get a line (the summary says so)."""
    from jobs.stats import RunTally
    from pipeline.write.exactly_once import UnitTracker

    settled = []
    tally = RunTally(UnitTracker({}, lambda unit, chunks: settled.append(unit)), max_videos=2)

    def summary(video: str, pairs: int) -> dict:
        return {
            "video_id": video,
            "source": f"s3://b/{video}.mp4",
            "corpus": "b",
            "chunk": "00000000-00000001",
            "unit": f"{video}-00000000",
            "unit_chunks": '["00000000-00000001"]',
            "settled": False,
            "pairs": pairs,
            "pixels": 100 * pairs,
            "bytes_written": 10,
            "files": 1,
            "flow_magnitude_sum": 50.0 * pairs,
            "occluded_sum": pairs,
            "labeled_on": '{"actor": "a", "node": "n", "gpu_ids": [], "device": "cpu"}',
        }

    for video, pairs in [("v2", 2), ("v1", 3), ("v2", 2), ("v3", 4)]:
        tally.add(summary(video, pairs))
    assert (tally.pairs, tally.chunks, tally.files, tally.bytes_written) == (9, 3, 3, 30)
    assert settled == ["v2-00000000", "v1-00000000", "v3-00000000"] and tally.tracker.settled == 3
    assert [(v["video_id"], v["pairs"], v["mean_flow_magnitude"]) for v in tally.per_video()] == [
        ("v1", 3, 0.5),
        ("v2", 2, 0.5),
    ]
    assert tally.truncated and [(a["actor"], a["pairs"], a["chunks"]) for a in tally.placements()] == [("a", 9, 3)]
    text = format_label_summary(result(more_videos=True, per_video=tally.per_video()), SinkOptions("o"))
    assert "(the first 1000 videos of this run; every source is in o/_clips_summary/)" in text
