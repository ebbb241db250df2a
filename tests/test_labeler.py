"""The label stage as a plain function (no Ray): known motion in, flow/occlusion/confidence out."""

import numpy as np
import pytest

from jobs.synthetic import Motion, translating_frames
from models import load_model
from pipeline.labeler import Labeler, LabelerConfig, label_pairs


@pytest.fixture(scope="module")
def frames():
    return np.stack(translating_frames(96, 128, 4, Motion(3.0, -1.5), seed=7))


@pytest.mark.parametrize("model", ["dis", "farneback"])
def test_label_pairs_recovers_translation(frames, model):
    out = label_pairs(load_model(model), frames[:-1], frames[1:], batch_size=2)
    assert out["flow"].shape == (3, 96, 128, 2) and out["flow"].dtype == np.float16
    assert out["occlusion"].shape == (3, 96, 128) and out["occlusion"].dtype == np.uint8
    assert out["confidence"].dtype == np.float16
    inner = out["flow"].astype(np.float32)[:, 16:-16, 16:-16]
    assert np.linalg.norm(inner - [3.0, -1.5], axis=-1).mean() < 0.5
    # content near the right edge moves out of view (u = +3): occluded by definition
    assert out["occlusion"][:, :, -1].all()
    assert out["occlusion"][:, 16:-16, 16:-16].mean() < 0.05
    assert 0 < out["confidence"].min() and out["confidence"].max() <= 1


def test_labeler_udf_keeps_metadata_drops_frames(frames):
    labeler = Labeler(LabelerConfig(model="dis"))
    batch = {"video_id": np.array(["a", "a", "b"], object), "chunk": np.array(["0-1", "0-1", "0-0"], object),
             "frame0": np.array([0, 1, 0], np.int32), "image0": frames[:3], "image1": frames[1:4]}
    outs = list(labeler(batch))
    assert [o["video_id"].tolist() for o in outs] == [["a", "a"], ["b"]]
    assert all("image0" not in o and o["flow"].shape[1:] == (96, 128, 2) for o in outs)
    assert outs[0]["model"].tolist() == ["dis", "dis"] and outs[0]["checkpoint"].tolist() == ["", ""]


def test_bad_inputs_raise_with_the_shapes():
    model = load_model("dis")
    with pytest.raises(ValueError, match="expected two uint8 arrays"):
        label_pairs(model, np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        LabelerConfig(batch_size=0)
