"""A manifest end to end: videos and a Parquet manifest in SeaweedFS, a local Ray, DIS; spans, carried
columns (Parquet and npz), a bad row, a positional input beside the manifest, and the resume."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs.label import LabelJob, OutputConflictError, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.label.labeler import LabelerConfig
from pipeline.read.manifest import ManifestOptions
from pipeline.read.sources import video_id_for
from pipeline.write.sinks import SinkOptions

pytestmark = pytest.mark.slow

# 30 fps: frame k at k/30 s (exact in the MP4 time base). Long: 40 frames, keyframe every 10.
SPAN_1, SPAN_2 = (0.5, 0.8), (1.0, None)  # frames 15–23 and 30–39


@pytest.fixture(scope="module")
def s3_manifest(local_s3, tmp_path_factory):
    local = tmp_path_factory.mktemp("manifest-corpus")
    write_translating_video(local / "long.mp4", 64, 80, 40, Motion(1.0, 0.5), seed=1, gop=10)
    write_translating_video(local / "short.mp4", 64, 80, 6, Motion(2.0, 0.0), seed=2)
    write_translating_video(local / "extra.mp4", 64, 80, 5, Motion(0.5, 0.5), seed=3)
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    root = f"{local_s3.bucket}/manifest-e2e"
    fs.put(str(local), f"{root}/videos", recursive=True)
    base = f"s3://{root}"
    long, short = f"{base}/videos/long.mp4", f"{base}/videos/short.mp4"
    table = pa.table(
        {
            "path": [long, long, short, long],
            "clip_id": pa.array([101, 102, None, 104], pa.int64()),
            "caption": ["early", "late", "whole", "bad span"],
            "start": [SPAN_1[0], SPAN_2[0], None, 2.0],
            "end": [SPAN_1[1], SPAN_2[1], None, 1.0],  # row 4: end before start
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe(f"{root}/clips.parquet", buffer.getvalue())
    return fs, base


def make_job(base, out, storage_options, carry=("clip_id", "caption")):
    return LabelJob(
        inputs=(f"{base}/videos/extra.mp4",),
        sink=SinkOptions(out, formats=("parquet", "npz")),
        labeler=LabelerConfig(model="dis"),
        storage_options=storage_options,
        manifest=ManifestOptions(f"{base}/clips.parquet", column="path", carry=carry),
    )


def test_manifest_spans_and_carried_columns(ray_local, local_s3, s3_manifest):
    fs, base = s3_manifest
    out = f"{base}/labels"
    result = run_label(make_job(base, out, local_s3.storage_options))
    long, short, extra = (f"{base}/videos/{n}.mp4" for n in ("long", "short", "extra"))
    ids = {
        "early": video_id_for(long, *SPAN_1),
        "late": video_id_for(long, *SPAN_2),
        "whole": video_id_for(short),
        "extra": video_id_for(extra),
    }
    assert len(set(ids.values())) == 4

    # The bad row is an error record of the listing, with its row number; the job goes on.
    assert result.exit_code == 2
    assert [(r.source, r.stage, r.error_type) for r in result.errors] == [
        (f"{base}/clips.parquet#row=4", "list", "ManifestRowError")
    ]
    assert result.errors[0].message == f"row 4 ({long}): end: expected more than start (2.0), got 1.0"

    table = pads.dataset(out.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive").to_table()
    rows = sorted(
        zip(
            table["video_id"].to_pylist(),
            table["frame0"].to_pylist(),
            table["frame1"].to_pylist(),
            table["clip_id"].to_pylist(),
            table["caption"].to_pylist(),
            table["source"].to_pylist(),
        )
    )
    expected = sorted(
        [(ids["early"], k, k + 1, "101", "early", long) for k in range(15, 23)]
        + [(ids["late"], k, k + 1, "102", "late", long) for k in range(30, 39)]
        + [(ids["whole"], k, k + 1, None, "whole", short) for k in range(5)]
        + [(ids["extra"], k, k + 1, None, None, extra) for k in range(4)]
    )
    assert rows == expected
    assert result.pairs == len(expected) == 26
    assert table.schema.field("clip_id").type == pa.string() and table.schema.field("caption").type == pa.string()
    # Output times stay the video's own: frame 15 of the long video is at 0.5 s.
    t0 = dict(zip(zip(table["video_id"].to_pylist(), table["frame0"].to_pylist()), table["t0"].to_pylist()))
    assert t0[ids["early"], 15] == pytest.approx(0.5) and t0[ids["late"], 30] == pytest.approx(1.0)
    assert set(table["corpus"].to_pylist()) == {"clips", "videos"}  # the manifest's name; the file's folder

    # The clip table: one row per manifest row (and input), with that row's carried values.
    clips = pads.dataset(f"{out.removeprefix('s3://')}/_clips_summary", filesystem=fs, format="parquet").to_table()
    assert sorted(
        zip(
            clips["video_id"].to_pylist(),
            clips["clip_id"].to_pylist(),
            clips["caption"].to_pylist(),
            clips["pairs"].to_pylist(),
        )
    ) == sorted(
        [
            (ids["early"], "101", "early", 8),
            (ids["late"], "102", "late", 9),
            (ids["whole"], None, "whole", 5),
            (ids["extra"], None, None, 4),
        ]
    )

    npz_rows = []
    for path in sorted(p for p in fs.find(f"{out}/_npz") if p.endswith(".npz")):
        with fs.open(path, "rb") as f:
            data = np.load(io.BytesIO(f.read()))
            npz_rows += list(
                zip(
                    data["video_id"].tolist(),
                    data["frame0"].tolist(),
                    data["clip_id"].tolist(),
                    data["caption"].tolist(),
                )
            )
    assert sorted(npz_rows) == sorted((v, a, c or "", t or "") for v, a, _, c, t, _ in expected)

    # The same job again labels nothing.
    again = run_label(make_job(base, out, local_s3.storage_options))
    assert again.pairs == 0 and again.chunks == 0 and again.settled_before == again.units == 4
    assert [r.source for r in again.errors] == [f"{base}/clips.parquet#row=4"]
    # Other carried columns would change the rows: refused on the same output.
    with pytest.raises(OutputConflictError, match="sink.carried"):
        run_label(make_job(base, out, local_s3.storage_options, carry=("caption",)))
