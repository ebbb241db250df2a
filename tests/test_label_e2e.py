"""End to end through the real stack: SeaweedFS S3 on loopback → local Ray → Parquet/npz."""

import json
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs.cli import main
from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.label.labeler import LabelerConfig
from pipeline.read.sources import video_id_for
from pipeline.schema import arrays_from_table
from pipeline.write.run_manifest import MANIFEST_NAME
from pipeline.write.sinks import SinkOptions

from .conftest import BENCHMARKS, VIDEOS

pytestmark = pytest.mark.slow

MOTION = Motion(2.0, 1.0)
GENERATED = {"moving.mp4": (96, 128, 10), "odd.webm": (61, 83, 8), "camera.avi": (75, 99, 6)}


@pytest.fixture(scope="module")
def s3_corpus(shared_data, local_s3, tmp_path_factory):
    """Generated videos (3 codecs), a broken and a one-frame real file, and Sintel alley_1 as a sequence."""
    local = tmp_path_factory.mktemp("corpus")
    for name, (h, w, n) in GENERATED.items():
        write_translating_video(local / name, h, w, n, MOTION, seed=len(name))
    shutil.copy(VIDEOS / "broken__invalid_userdata.mp4", local)
    shutil.copy(VIDEOS / "bbb_sunflower_QCIF_30fps_mp4v_noaudio_1f.mp4", local)
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    root = f"{local_s3.bucket}/e2e"
    fs.put(str(local), f"{root}/videos", recursive=True)
    fs.put(str(BENCHMARKS / "Sintel/training/clean/alley_1"), f"{root}/sequences/alley_1", recursive=True)
    return fs, f"s3://{root}"


def expected_pairs(base):
    pairs = {(f"{base}/videos/{name}", k, k + 1) for name, (_, _, n) in GENERATED.items() for k in range(n - 1)}
    return pairs | {(f"{base}/sequences/alley_1", k, k + 1) for k in range(3)}


def test_label_from_s3_writes_every_pair_exactly_once(ray_local, local_s3, s3_corpus):
    fs, base = s3_corpus
    out = f"{base}/labels/run1"
    job = LabelJob(
        inputs=(f"{base}/videos/", f"{base}/sequences/"),
        sink=SinkOptions(out, formats=("parquet", "npz")),
        labeler=LabelerConfig(model="dis"),
        corpus="e2e",
        storage_options=local_s3.storage_options,
    )
    result = run_label(job)

    # bad input never stops the job and is never silent
    assert result.exit_code == 2
    assert [(r.source.rsplit("/", 1)[-1], r.error_type) for r in result.errors] == [
        ("broken__invalid_userdata.mp4", "NoFramesError")
    ]
    assert [r.source.rsplit("/", 1)[-1] for r in result.skipped] == ["bbb_sunflower_QCIF_30fps_mp4v_noaudio_1f.mp4"]

    table = pads.dataset(out.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive").to_table()
    rows = list(zip(table["source"].to_pylist(), table["frame0"].to_pylist(), table["frame1"].to_pylist()))
    assert len(rows) == len(set(rows)) == result.pairs == 24
    assert set(rows) == expected_pairs(base)
    assert set(table["corpus"].to_pylist()) == {"e2e"}
    assert all(v == video_id_for(s) for v, s in zip(table["video_id"].to_pylist(), table["source"].to_pylist()))

    # DIS recovers the known translation away from the borders
    arrays = arrays_from_table(table.filter(pc.equal(table["source"], f"{base}/videos/moving.mp4")))
    flow = arrays["flow"].astype(np.float32)[:, 16:-16, 16:-16]
    epe = np.linalg.norm(flow - np.array([MOTION.u, MOTION.v]), axis=-1).mean()
    assert epe < 0.5, epe
    assert arrays["occlusion"][:, 16:-16, 16:-16].mean() < 0.05
    assert arrays["occlusion"][:, :, -1].all()  # content at the right edge moves out of the frame

    npz = [p for p in fs.find(f"{out}/_npz") if p.endswith(".npz")]
    root = out.removeprefix("s3://")
    parquet = [p for p in fs.find(root) if p.endswith(".parquet") and "/_" not in p[len(root) :]]
    assert len(npz) == len(parquet) and len(npz) + len(parquet) == result.files

    manifest = json.loads(fs.cat(f"{out}/{MANIFEST_NAME}"))
    assert manifest["status"] == "finished" and manifest["counts"]["pairs"] == 24
    assert manifest["counts"]["errors"] == 1 and manifest["counts"]["skipped"] == 1
    text = json.dumps(manifest)
    assert local_s3.secret_key not in text and local_s3.access_key not in text


def test_cli_label_local_paths(ray_local, tmp_path, capsys):
    write_translating_video(tmp_path / "in" / "clip.mp4", 64, 80, 5, MOTION) if (
        tmp_path / "in"
    ).mkdir() is None else None
    out = tmp_path / "out"
    code = main(
        [
            "label",
            str(tmp_path / "in"),
            str(tmp_path / "missing"),
            "--out",
            str(out),
            "--format",
            "both",
            "--stride",
            "2",
            "--max-pairs-per-video",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 2  # the missing input is an error row, the rest is labeled
    assert "labeled 2 pairs" in printed and "FAILED" in printed and "missing" in printed
    table = pq.read_table(out)
    assert sorted(zip(table["frame0"].to_pylist(), table["frame1"].to_pylist())) == [(0, 2), (1, 3)]
    assert (out / "_npz").is_dir() and (out / "_errors").is_dir()
    assert set(table.column_names) >= {"flow", "occlusion", "confidence", "video_id", "t0", "model", "checkpoint"}


@pytest.mark.usefixtures("shared_data")
def test_label_with_raft_small_real_weights(ray_local, tmp_path):
    """A learned model through the same pipeline: the official RAFT-small checkpoint, on Ray."""
    from .conftest import RAFT_SMALL

    write_translating_video(tmp_path / "in" / "pan.mp4", 128, 160, 4, MOTION) if (
        tmp_path / "in"
    ).mkdir() is None else None
    out = tmp_path / "out"
    job = LabelJob(
        inputs=(str(tmp_path / "in"),),
        sink=SinkOptions(str(out)),
        labeler=LabelerConfig(model="raft_small", checkpoint=str(RAFT_SMALL), overrides={"iters": 12}),
    )
    result = run_label(job)
    assert result.exit_code == 0 and result.pairs == 3
    table = pq.read_table(out)
    assert set(table["checkpoint"].to_pylist()) == {"c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332"}
    assert set(table["model"].to_pylist()) == {"raft_small"}
    flow = arrays_from_table(table)["flow"].astype(np.float32)[:, 16:-16, 16:-16]
    assert np.linalg.norm(flow - np.array([MOTION.u, MOTION.v]), axis=-1).mean() < 0.5
