"""Motion summaries through the product: the labeler computes them on the device, the rows carry them, and
``flowlabel label`` writes the per-clip table; checked on H.264 videos of known motion with DIS, on Ray.

Tolerances: DIS on these 128×96 H.264 (crf 12) videos gets the pan within 0.01 px and a residual below
0.06 px at the 95th percentile (measured); the bounds below are ten times that, still 30× below the pan,
so a sign, axis or centre error in the camera fit fails them.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import torch

from jobs.cli import main
from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, texture, translating_frames, write_video
from models import FlowModel, load_model
from pipeline.label.labeler import Labeler, LabelerConfig, label_frames, label_pairs
from pipeline.label.motion import SUMMARY_COLUMNS
from pipeline.schema import SCALAR_COLUMNS
from pipeline.write.clip_summary import CLIP_SUMMARY_DIR, CLIP_TABLE_COLUMNS, mark_clip_summary_stale
from pipeline.write.sinks import SinkOptions

PAN = Motion(3.0, -2.0)  # integer pixels per frame: no resampling blur in the frames
STEP = 4  # the object's pixels per frame
H, W, FRAMES = 96, 128, 6


def object_frames(frames: int = FRAMES) -> list[np.ndarray]:
    """A static textured background; a textured 40×48 square (16 % of the frame, so above the 95th
    percentile of |flow|) moves STEP px right per frame."""
    background, patch = texture(H, W, seed=1), texture(40, 48, seed=2)
    out = []
    for k in range(frames):
        image = background.copy()
        image[28:68, 16 + STEP * k : 64 + STEP * k] = patch
        out.append(image)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("motion")
    (folder / "pan").mkdir()
    (folder / "object").mkdir()
    write_video(folder / "pan" / "pan.mp4", translating_frames(H, W, FRAMES, PAN, seed=5))
    write_video(folder / "object" / "object.mp4", object_frames())
    return folder


def chunk(frames: np.ndarray) -> dict:
    """Frame rows of one chunk, every frame paired with the next (as the reader sends them)."""
    m = len(frames)
    return {
        "video_id": np.full(m, "v", object),
        "chunk": np.full(m, "c", object),
        "frame": np.arange(m, dtype=np.int32),
        "time": np.arange(m) / 30.0,
        "pair_with": np.r_[np.arange(1, m), -1].astype(np.int32),
        "ordinal": np.arange(m),
        "image": frames,
    }


# ---- the labeler, without Ray ------------------------------------------------------------------------------


def test_rows_carry_the_summaries_of_the_float_flow_and_summary_mode_copies_no_arrays():
    frames = np.stack(translating_frames(H, W, 4, PAN, seed=5))
    dense = Labeler(LabelerConfig(model="dis", batch_size=2))
    summary = Labeler(LabelerConfig(model="dis", batch_size=2), store="summary")
    copied: list[list[str]] = []
    to_host = summary.device.queue.to_host
    summary.device.queue.to_host = lambda tensors: copied.append(sorted(tensors)) or to_host(tensors)
    a, b = dense.label_chunk(chunk(frames)), summary.label_chunk(chunk(frames))
    assert copied == [["_motion"]]  # one transfer, of the stacked summary columns only
    assert not {"flow", "occlusion", "confidence", "flow_scale"} & set(b) and {"flow", "flow_scale"} <= set(a)
    # the float flow, not the stored int16: the same values as the pairwise path's float32 labels
    pairwise = label_pairs(load_model("dis"), frames[:-1], frames[1:], 1, out_dtype=np.float32, motion=True)
    for name in SUMMARY_COLUMNS:
        assert a[name].dtype == np.float32 and a[name].shape == (3,), name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        np.testing.assert_allclose(a[name], pairwise[name], rtol=1e-4, atol=1e-5, err_msg=name)  # batched sums
    np.testing.assert_allclose(a["camera_tx"], PAN.u, atol=0.1)
    np.testing.assert_allclose(a["camera_ty"], PAN.v, atol=0.1)
    assert a["frame0"].tolist() == [0, 1, 2] and b["t1"].tolist() == pytest.approx([1 / 30, 2 / 30, 3 / 30])


class Standin(FlowModel):
    """A model on torch's meta device (as the feed benchmark's stand-in accelerator)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.empty(0, device="meta"))

    def predict(self, image0, image1):
        return torch.empty(len(image0), 2, *image0.shape[-2:], device="meta")


def test_summaries_dispatch_on_the_meta_device():
    model = Standin()
    model.checkpoint_sha256 = ""
    out = label_frames(model, np.zeros((4, 24, 32, 3), np.uint8), np.arange(3), np.arange(1, 4), motion=True)
    assert all(out[n].shape == (3,) and out[n].dtype == np.float32 for n in SUMMARY_COLUMNS)
    assert out["flow"].shape == (3, 24, 32, 2)
    assert "camera_tx" not in label_frames(model, np.zeros((2, 8, 8, 3), np.uint8), np.array([0]), np.array([1]))


# ---- end to end: flowlabel label on a local Ray ----------------------------------------------------------


@pytest.mark.slow
def test_pan_dense_rows_and_clip_table_give_the_pan(ray_local, videos, tmp_path):
    out = tmp_path / "out"
    result = run_label(
        LabelJob(inputs=(str(videos / "pan"),), sink=SinkOptions(str(out)), labeler=LabelerConfig(model="dis"))
    )
    assert result.exit_code == 0 and result.pairs == FRAMES - 1 and result.clip_summaries == 1
    table = pq.read_table(out).sort_by("frame0")
    assert {"flow", "occlusion", "confidence", *SUMMARY_COLUMNS} <= set(table.column_names)
    rows = {name: table[name].to_numpy() for name in SUMMARY_COLUMNS}
    np.testing.assert_allclose(rows["camera_tx"], PAN.u, atol=0.1)
    np.testing.assert_allclose(rows["camera_ty"], PAN.v, atol=0.1)
    np.testing.assert_allclose(rows["camera_scale"], 1, atol=0.01)
    assert (rows["residual_mean"] < 0.1).all() and (rows["residual_p95"] < 0.5).all()
    assert (rows["camera_inlier_fraction"] > 0.9).all()

    [clip] = pq.read_table(out / CLIP_SUMMARY_DIR).to_pylist()
    assert list(clip) == list(CLIP_TABLE_COLUMNS)
    assert clip["source"] == str(videos / "pan" / "pan.mp4") and clip["pairs"] == FRAMES - 1
    assert clip["camera_tx_mean"] == pytest.approx(PAN.u, abs=0.1)
    assert clip["camera_ty_mean"] == pytest.approx(PAN.v, abs=0.1)
    assert clip["camera_translation_mean"] == pytest.approx(np.hypot(PAN.u, PAN.v), abs=0.1)
    assert clip["duration"] == pytest.approx((FRAMES - 1) / 30)  # first t0 = 0 to last t1 = 5/30 s at 30 fps
    assert clip["flow_mean_per_s"] == pytest.approx(30 * table["flow_mean"].to_numpy().mean(), rel=1e-5)


@pytest.mark.slow
def test_a_clip_table_left_stale_by_a_killed_run_is_rewritten_by_the_next(ray_local, videos, tmp_path):
    sink = SinkOptions(str(tmp_path / "out"))
    folder = tmp_path / "out" / CLIP_SUMMARY_DIR

    def label(*names: str):
        inputs = tuple(str(videos / name) for name in names)
        return run_label(LabelJob(inputs=inputs, sink=sink, labeler=LabelerConfig(model="dis")))

    assert label("pan").clip_summaries == 1
    first = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert list(first) == ["part-00000.parquet"]  # the run cleared its note
    assert label("pan", "object").clip_summaries == 2
    # What a run killed after its units settled, before its clip table, leaves: the table of the run before
    # it, and the note it wrote when it started.
    (folder / "part-00000.parquet").write_bytes(first["part-00000.parquet"])
    mark_clip_summary_stale(sink)
    again = label("pan", "object")
    assert again.pairs == 0 and again.clip_summaries == 2
    assert sorted(pq.read_table(folder)["source"].to_pylist()) == [
        str(videos / "object" / "object.mp4"),
        str(videos / "pan" / "pan.mp4"),
    ]
    assert [path.name for path in folder.iterdir()] == ["part-00000.parquet"]
    assert label("pan", "object").clip_summaries == 2  # a no-op run without the note reads the table's size


@pytest.mark.slow
def test_object_summary_mode_on_s3_gives_residual_motion_and_no_arrays(ray_local, local_s3, videos, capsys):
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    root = f"{local_s3.bucket}/motion"
    fs.put(str(videos / "object"), f"{root}/in", recursive=True)
    out, options = f"s3://{root}/summary", json.dumps(local_s3.storage_options)
    refused = main(
        [
            "label",
            f"s3://{root}/in",
            "--out",
            out,
            "--store",
            "summary",
            "--format",
            "both",
            "--storage-options",
            options,
        ]
    )
    assert refused == 1 and "writes no label arrays, so no npz" in capsys.readouterr().err

    code = main(["label", f"s3://{root}/in", "--out", out, "--store", "summary", "--storage-options", options])
    assert code == 0 and f"motion summaries of 1 sources in {out}/{CLIP_SUMMARY_DIR}/" in capsys.readouterr().out
    data = [p for p in fs.find(f"{root}/summary") if p.endswith((".parquet", ".npz")) and "/_" not in p]
    assert data and all(p.endswith(".parquet") for p in data)
    with fs.open(data[0], "rb") as f:
        names = set(pq.read_schema(f).names)
    assert names == (set(SCALAR_COLUMNS) - {"corpus"}) | set(SUMMARY_COLUMNS)  # corpus is in the path

    [part] = fs.glob(f"{root}/summary/{CLIP_SUMMARY_DIR}/*.parquet")
    with fs.open(part, "rb") as f:
        [clip] = pq.read_table(f).to_pylist()
    assert clip["pairs"] == FRAMES - 1 and clip["source"].endswith("/in/object.mp4")
    assert abs(clip["camera_tx_mean"]) < 0.1 and abs(clip["camera_ty_mean"]) < 0.1
    assert clip["camera_translation_mean"] < 0.5 and clip["camera_flow_max"] < 0.1
    assert clip["residual_p95"] == pytest.approx(STEP, abs=0.5)  # the square's own motion
    assert clip["flow_median"] < 0.1 and 0.3 < clip["residual_mean"] < 1.0  # 16 % of the grid moves 4 px
