"""What `flowlabel label` prints at the end, and how it names the settings a refused run changed (no Ray)."""

from __future__ import annotations

from jobs.label import LabelResult, format_label_summary
from pipeline.write.exactly_once import setting_differences
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
