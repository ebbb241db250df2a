"""Manifests without Ray: each format, the columns, spans, carried values and bad rows."""

import argparse
import decimal
import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.label import LabelJob, _manifest, add_label_arguments, label_job
from pipeline.read.manifest import (
    ManifestOptions,
    ManifestRow,
    ManifestRowError,
    carried_text,
    manifest_format,
    manifest_row,
    read_manifest_rows,
)
from pipeline.read.sources import Source, list_sources, video_id_for
from pipeline.write.exactly_once import fingerprint, setting_differences
from pipeline.write.sinks import SinkOptions

VIDEO_A, VIDEO_B = "s3://bucket/videos/a.mp4", "s3://bucket/videos/b.mp4"


def put(uri: str, data: bytes) -> str:
    with fsspec.open(uri, "wb") as f:
        f.write(data)
    return uri


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def typed_table() -> pa.Table:
    return pa.table(
        {
            "uri": [VIDEO_A, VIDEO_A, VIDEO_B],
            "clip_id": pa.array([7, 8, None], pa.int64()),
            "caption": ["a dog", None, "b, with comma"],
            "start": [1.0, 2.5, None],
            "end": [2.0, 4.0, None],
            "score": [0.5, 1.25, float("nan")],
        }
    )


def decimal_spans(table: pa.Table) -> pa.Table:
    """``table`` with its start and end as Parquet decimals (as a database export may give them)."""
    for name in ("start", "end"):
        column = pa.array([None if v is None else decimal.Decimal(str(v)) for v in table[name].to_pylist()])
        table = table.set_column(table.schema.get_field_index(name), name, column.cast(pa.decimal128(6, 2)))
    return table


EXPECTED_CARRY = [
    (("clip_id", "7"), ("caption", "a dog")),
    (("clip_id", "8"), ("caption", None)),
    (("clip_id", None), ("caption", "b, with comma")),
]


def expected_sources(corpus: str) -> list[Source]:
    spans = [(VIDEO_A, 1.0, 2.0), (VIDEO_A, 2.5, 4.0), (VIDEO_B, None, None)]
    return [
        Source(uri, "video", video_id_for(uri, start, end), corpus, start=start, end=end, carry=carry)
        for (uri, start, end), carry in zip(spans, EXPECTED_CARRY)
    ]


def csv_text() -> str:
    return f'uri,clip_id,caption,start,end\n{VIDEO_A},7,a dog,1,2\n{VIDEO_A},8,,2.5,4.0\n{VIDEO_B},,"b, with comma",,\n'


def jsonl_text() -> str:
    rows = [
        {"uri": VIDEO_A, "clip_id": 7, "caption": "a dog", "start": 1, "end": 2.0},
        {"uri": VIDEO_A, "clip_id": 8, "start": 2.5, "end": 4},  # caption absent: null
        {"uri": VIDEO_B, "clip_id": None, "caption": "b, with comma"},
    ]
    return "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n"


@pytest.mark.parametrize(
    "name, data",
    [
        ("clips.parquet", lambda: parquet_bytes(typed_table())),
        ("clips.csv", lambda: csv_text().encode()),
        ("clips.jsonl", lambda: jsonl_text().encode()),
        ("clips.ndjson", lambda: jsonl_text().encode()),
        ("clips.jsonl", lambda: "\ufeff".join(["", jsonl_text()]).encode()),  # a byte order mark
        ("clips.csv", lambda: "\ufeff".join(["", csv_text()]).encode()),
        ("clips.parquet", lambda: parquet_bytes(decimal_spans(typed_table()))),
    ],
)
def test_each_format_gives_the_same_sources(memory_root, name, data):
    uri = put(f"{memory_root}/{name}", data())
    sources, errors = list_sources([], manifest=ManifestOptions(uri, carry=("clip_id", "caption")))
    assert errors == []
    assert sources == expected_sources("clips")


def test_plain_text_skips_blank_lines_and_comments(memory_root):
    text = f"\ufeff# my clips\n{VIDEO_B}\n\n   {VIDEO_A}  \n# {VIDEO_A}\n"  # with a byte order mark
    uri = put(f"{memory_root}/list.txt", text.encode())
    sources, errors = list_sources([], manifest=ManifestOptions(uri), corpus="mine")
    assert errors == []
    assert sources == [
        Source(VIDEO_B, "video", video_id_for(VIDEO_B), "mine"),
        Source(VIDEO_A, "video", video_id_for(VIDEO_A), "mine"),
    ]
    with pytest.raises(ValueError, match="plain-text manifest .* no columns to carry"):
        list(read_manifest_rows(ManifestOptions(uri, carry=("caption",))))


def test_span_ids_are_deterministic_and_distinct():
    whole = video_id_for(VIDEO_A)
    ids = {
        video_id_for(VIDEO_A, 1.0, 2.0),
        video_id_for(VIDEO_A, 1, 3),
        video_id_for(VIDEO_A, None, 2.0),
        video_id_for(VIDEO_A, 1.0, None),
        whole,
    }
    assert len(ids) == 5
    assert video_id_for(VIDEO_A, 1, 2) == video_id_for(VIDEO_A, 1.0, 2.0)
    assert video_id_for(VIDEO_A, None, None) == whole


@pytest.mark.parametrize(
    "name, data, found",
    [
        ("m.parquet", lambda: parquet_bytes(pa.table({"path": [VIDEO_A], "caption": ["x"]})), "path, caption"),
        ("m.csv", lambda: b"path,caption\ns3://b/a.mp4,x\n", "path, caption"),
        ("m.jsonl", lambda: b'{"path": "s3://b/a.mp4", "caption": "x"}\n', "path, caption"),
    ],
)
def test_missing_uri_column_names_it_and_the_columns_found(memory_root, name, data, found):
    uri = put(f"{memory_root}/{name}", data())
    with pytest.raises(ValueError, match=f"no column 'uri' \\(columns found: {found}\\)"):
        list_sources([], manifest=ManifestOptions(uri))
    sources, _ = list_sources([], manifest=ManifestOptions(uri, column="path", carry=("caption",)))
    assert [(s.uri, s.carry) for s in sources] == [(sources[0].uri, (("caption", "x"),))]
    with pytest.raises(ValueError, match="no column 'clip_id'"):
        list_sources([], manifest=ManifestOptions(uri, column="path", carry=("clip_id",)))


@pytest.mark.parametrize(
    "name, data, column",
    [
        ("m.csv", lambda: b"uri,start,uri\ns3://b/a.mp4,1,s3://b/b.mp4\n", "uri"),
        ("m.csv", lambda: b"uri,start,end,start\ns3://b/a.mp4,1,2,3\n", "start"),
        ("m.parquet", lambda: parquet_bytes(pa.table([["s3://b/a.mp4"], ["x"], ["y"]], ["uri", "c", "c"])), "c"),
    ],
)
def test_a_column_named_twice_is_refused(memory_root, name, data, column):
    uri = put(f"{memory_root}/{name}", data())
    with pytest.raises(ValueError, match=f"column '{column}' appears 2 times, expected once"):
        list_sources([], manifest=ManifestOptions(uri, carry=("c",) if column == "c" else ()))


def test_bad_rows_become_listing_errors_with_their_row_number(memory_root):
    text = (
        "uri,start,end\n"
        f"{VIDEO_A},abc,2\n"  # row 1: start not a number
        f"{VIDEO_A},3,3\n"  # row 2: end ≤ start
        f"{VIDEO_A},1,2\n"  # row 3: good
        ",1,2\n"  # row 4: no URI
        f"{VIDEO_B},-1,\n"  # row 5: negative start
        f"{VIDEO_B},,inf\n"  # row 6: good, an end of +inf is no end
        f"{VIDEO_B},inf,\n"  # row 7: a start of +inf
        f"{VIDEO_B},,0\n"  # row 8: an end of 0 seconds
    )
    uri = put(f"{memory_root}/bad.csv", text.encode())
    sources, errors = list_sources([], manifest=ManifestOptions(uri))
    assert [(s.uri, s.start, s.end) for s in sources] == [(VIDEO_A, 1.0, 2.0), (VIDEO_B, None, None)]
    assert [e.uri for e in errors] == [f"{uri}#row={n}" for n in (1, 2, 4, 5, 7, 8)]
    assert {e.error_type for e in errors} == {"ManifestRowError"}
    assert errors[0].message == f"row 1 ({VIDEO_A}): start: expected a number of seconds, got 'abc'"
    assert errors[1].message == f"row 2 ({VIDEO_A}): end: expected more than start (3.0), got 3.0"
    assert errors[2].message == "row 4 (no URI): expected a URI in column 'uri', got None"
    assert errors[3].message == f"row 5 ({VIDEO_B}): start: expected ≥ 0 seconds, got -1.0"
    assert errors[4].message == f"row 7 ({VIDEO_B}): start: expected a number of seconds, got 'inf'"
    assert errors[5].message == f"row 8 ({VIDEO_B}): end: expected more than 0 seconds, got 0.0"


def test_jsonl_lines_that_are_not_objects_are_row_errors(memory_root):
    lines = [json.dumps({"uri": VIDEO_A}), "[1, 2]", "not json", json.dumps({"uri": VIDEO_B, "start": True})]
    uri = put(f"{memory_root}/m.jsonl", "\n".join(lines).encode())
    rows = list(read_manifest_rows(ManifestOptions(uri)))
    assert rows[0] == ManifestRow(1, VIDEO_A)
    assert [(type(r), r.number) for r in rows[1:]] == [
        (ManifestRowError, 2),
        (ManifestRowError, 3),
        (ManifestRowError, 4),
    ]
    assert rows[1].message == "expected a JSON object, got list"
    assert rows[2].message.startswith("not JSON: ")
    assert rows[3].message == "start: expected a number of seconds, got True"


def test_manifest_rows_win_over_the_same_positional_input_and_keep_their_order(tmp_path, memory_root):
    video = tmp_path / "v" / "clip.mp4"
    video.parent.mkdir()
    video.write_bytes(b"not decoded here")
    other = tmp_path / "v" / "other.mp4"
    other.write_bytes(b"x")
    uri = put(f"{memory_root}/m.csv", f"uri,tag\n{video},first\n{video},second\n{video.parent}/z.mp4,z\n".encode())
    sources, errors = list_sources([str(video.parent)], manifest=ManifestOptions(uri, carry=("tag",)))
    assert errors == []
    # The manifest's rows first, as they stream, a repeated row once (the first); then the positional
    # inputs (by URI), without the one the manifest names.
    assert [(s.uri, s.carry, s.corpus) for s in sources] == [
        (str(video), (("tag", "first"),), "m"),
        (f"{video.parent}/z.mp4", (("tag", "z"),), "m"),
        (str(other), (), "v"),
    ]


def test_http_inputs_are_not_listed_on_the_driver():
    # Nothing listens on port 9 (discard): listing them would fail; they are taken as named.
    urls = ["http://127.0.0.1:9/clips/a.mp4", "https://127.0.0.1:9/b.mp4?sig=x"]
    sources, errors = list_sources(urls)
    assert errors == []
    assert [(s.uri, s.kind, s.size, s.corpus, s.video_id) for s in sources] == [
        (urls[0], "video", None, "clips", video_id_for(urls[0])),
        (urls[1], "video", None, "127.0.0.1_9", video_id_for(urls[1])),
    ]


@pytest.mark.parametrize(
    "value, text",
    [
        (None, None),
        (float("nan"), None),
        ("x", "x"),
        (3, "3"),
        (1.5, "1.5"),
        (True, "true"),
        ([1, "a"], '[1, "a"]'),
        ({"k": 1}, '{"k": 1}'),
    ],
)
def test_carried_values_are_text_and_null_stays_null(value, text):
    assert carried_text(value) == text


def test_carried_names_may_not_be_output_columns():
    for name in ("flow", "video_id", "frame0", "chunk", "video", "flow_mean", ""):
        with pytest.raises(ValueError, match="output columns already"):
            ManifestOptions("m.csv", carry=(name,))
    with pytest.raises(ValueError, match="distinct"):
        ManifestOptions("m.csv", carry=("a", "a"))


def test_row_number_and_format_helpers():
    assert [
        manifest_format(u)
        for u in ("a.parquet", "s3://b/a.CSV", "a.jsonl", "a.ndjson", "a.txt", "a", "https://h/a.csv?x=1")
    ] == ["parquet", "csv", "jsonl", "jsonl", "text", "text", "csv"]
    options = ManifestOptions("m.csv", start_column="from", end_column="to", carry=("from",))
    assert manifest_row(9, {"uri": " a.mp4 ", "from": "1.5", "to": 3}, options) == ManifestRow(
        9, "a.mp4", 1.5, 3.0, (("from", "1.5"),)
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_label_arguments(parser)
    return parser.parse_args([*argv, "--out", "/tmp/never-written"])


def test_cli_manifest_options_build_the_job():
    job = label_job(parse("--manifest", "s3://b/m.parquet", "--manifest-column", "path", "--carry", "clip_id, caption"))
    assert job.inputs == () and job.manifest == ManifestOptions("s3://b/m.parquet", "path", ("clip_id", "caption"))
    assert job.sink.carried == ("clip_id", "caption")
    both = label_job(parse("a.mp4", "--manifest", "m.txt"))
    assert both.inputs == ("a.mp4",) and both.manifest == ManifestOptions("m.txt") and both.sink.carried == ()
    with pytest.raises(ValueError, match="expected input URIs or a manifest"):
        label_job(parse())
    with pytest.raises(ValueError, match="expected --manifest too"):
        label_job(parse("a.mp4", "--carry", "x"))


def test_the_job_gives_the_sink_the_manifests_carried_columns():
    job = LabelJob(inputs=(), sink=SinkOptions("/tmp/x"), manifest=ManifestOptions("m.csv", carry=("a", "b")))
    assert job.sink.carried == ("a", "b")
    assert LabelJob(inputs=("v.mp4",), sink=SinkOptions("/tmp/x", carried=("a",))).sink.carried == ()


def test_runs_from_before_carried_columns_still_resume():
    def settings(job, drop_carried=False):
        manifest = json.loads(json.dumps(_manifest(job, "sha", 0.0), default=str))
        if drop_carried:
            del manifest["options"]["sink"]["carried"]  # as _flowlabel.json files written before --carry
        return fingerprint(manifest)

    plain = LabelJob(inputs=("v.mp4",), sink=SinkOptions("/tmp/x"))
    assert setting_differences(settings(plain, drop_carried=True), settings(plain)) == []
    carrying = LabelJob(inputs=(), sink=SinkOptions("/tmp/x"), manifest=ManifestOptions("m.csv", carry=("a",)))
    assert setting_differences(settings(plain), settings(carrying)) == ["sink.carried: None → ['a']"]
