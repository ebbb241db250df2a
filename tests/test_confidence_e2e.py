"""--confidence model end to end: SEA-RAFT's own confidence from a checkpoint in SeaweedFS, through
a local Ray, into the Parquet files; occlusion stays forward-backward; the run records the source."""

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import torch

from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, translating_frames
from models import load_model
from pipeline.label.labeler import LabelerConfig, label_frames
from pipeline.schema import arrays_from_table
from pipeline.write.run_manifest import MANIFEST_NAME
from pipeline.write.sinks import SinkOptions

pytestmark = pytest.mark.slow

TINY = {"iters": 1, "dim": 32, "initial_dim": 16, "block_dims": (16, 24, 32)}  # as tests/test_registry.py


def test_model_confidence_through_s3_and_ray(ray_local, local_s3, tmp_path):
    torch.manual_seed(0)
    torch.save(load_model("searaft_s", random_init=True, **TINY).state_dict(), tmp_path / "searaft-tiny.pth")
    frames = translating_frames(64, 96, 4, Motion(1.5, 0.5), seed=5)
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    base = f"{local_s3.bucket}/confidence"
    fs.put(str(tmp_path / "searaft-tiny.pth"), f"{base}/weights/searaft-tiny.pth")
    for i, frame in enumerate(frames):  # an image sequence: lossless, so the labeler sees these frames exactly
        cv2.imwrite(str(tmp_path / f"frame_{i:04d}.png"), frame[..., ::-1])
        fs.put(str(tmp_path / f"frame_{i:04d}.png"), f"{base}/clips/seq/frame_{i:04d}.png")

    out = f"s3://{base}/labels"
    labeler = LabelerConfig(
        model="searaft_s",
        checkpoint=f"s3://{base}/weights/searaft-tiny.pth",
        overrides=TINY,
        confidence="model",
        batch_size=2,
    )
    result = run_label(
        LabelJob(
            inputs=(f"s3://{base}/clips/",),
            sink=SinkOptions(out),
            labeler=labeler,
            storage_options=local_s3.storage_options,
        )
    )
    assert result.exit_code == 0 and result.pairs == 3
    # The one data file (the folders beginning with "_" hold the run's records and the clip table).
    [path] = [p for p in fs.find(out) if p.endswith(".parquet") and "/_" not in p]
    with fs.open(path, "rb") as f:
        stored = arrays_from_table(pq.read_table(f))

    # The same weights on the same frames, here: the stored confidence is the model's, not consistency's.
    model = load_model("searaft_s", checkpoint=str(tmp_path / "searaft-tiny.pth"), **TINY)
    images = np.stack(frames)
    own = label_frames(model, images, np.arange(3), np.arange(1, 4), 2, confidence="model")
    consistency = label_frames(model, images, np.arange(3), np.arange(1, 4), 2)
    got = np.rint(stored["confidence"] * 255).astype(np.uint8)
    assert np.array_equal(got, own["confidence"])
    assert not np.array_equal(got, consistency["confidence"])
    assert np.array_equal(stored["occlusion"], consistency["occlusion"])  # occlusion stays forward-backward
    manifest = json.loads(fs.cat(f"{out}/{MANIFEST_NAME}"))
    assert manifest["options"]["labeler"]["confidence"] == "model"
