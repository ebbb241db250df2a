"""The label stage as plain functions (no Ray): known motion in, flow/occlusion/confidence out;
frames once, encoding on the device, two threads, running out of memory, the model's confidence."""

import threading

import numpy as np
import pytest
import torch

from jobs.synthetic import Motion, translating_frames
from models import FlowModel, PairFlows, load_model
from pipeline.chunks import pair_rows
from pipeline.encoding import encode_labels
from pipeline.label.labeler import Labeler, LabelerConfig, label_frames, label_pairs, split_at_chunks


@pytest.fixture(scope="module")
def frames():
    return np.stack(translating_frames(96, 128, 5, Motion(3.0, -1.5), seed=7))


@pytest.mark.parametrize("model", ["dis", "farneback"])
def test_label_pairs_recovers_translation(frames, model):
    out = label_pairs(load_model(model), frames[:-2], frames[1:-1], batch_size=2)
    assert out["flow"].shape == (3, 96, 128, 2) and out["flow"].dtype == np.float16
    assert out["occlusion"].shape == (3, 96, 128) and out["occlusion"].dtype == np.uint8
    assert out["confidence"].dtype == np.float16
    inner = out["flow"].astype(np.float32)[:, 16:-16, 16:-16]
    assert np.linalg.norm(inner - [3.0, -1.5], axis=-1).mean() < 0.5
    # content near the right edge moves out of view (u = +3): occluded by definition
    assert out["occlusion"][:, :, -1].all()
    assert out["occlusion"][:, 16:-16, 16:-16].mean() < 0.05
    assert out["confidence"].min() > 0 and out["confidence"].max() <= 1


@pytest.mark.parametrize("encoding", ["int16", "float16"])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_frames_once_stores_what_the_pairwise_path_stores(frames, encoding, batch_size):
    """Stride 2 over 5 frames: the run's pairs, labeled on the device and encoded there, equal
    the pairs labeled one by one in float32 and encoded on the host, byte for byte."""
    model = load_model("dis")
    index0, index1 = np.array([0, 1, 2]), np.array([2, 3, 4])
    stored = label_frames(model, frames, index0, index1, batch_size, flow_encoding=encoding)
    pairwise = label_pairs(model, frames[index0], frames[index1], 1, out_dtype=np.float32)
    expected = encode_labels(pairwise, encoding)
    assert sorted(stored) == sorted(expected)
    for name, value in expected.items():
        assert stored[name].dtype == value.dtype and np.array_equal(stored[name], value), name


def chunk(frames: np.ndarray, indices: list[int], partners: dict[int, int], chunk_id: str = "c") -> dict:
    """Frame rows as the reader sends them: pairs ride on their frame0 rows."""
    m = len(indices)
    row = {f: i for i, f in enumerate(indices)}
    pair_with = np.full(m, -1, np.int32)
    ordinal = np.full(m, -1, np.int64)
    for k, (f0, f1) in enumerate(sorted(partners.items())):
        pair_with[row[f0]], ordinal[row[f0]] = row[f1], 10 + k
    return {
        "video_id": np.full(m, "v", object),
        "chunk": np.full(m, chunk_id, object),
        "frame": np.array(indices, np.int32),
        "time": np.array(indices, np.float64) / 30,
        "pair_with": pair_with,
        "ordinal": ordinal,
        "image": frames[:m],
    }


def test_pair_rows_turns_frame_rows_into_pairs(frames):
    # Frames 4, 5, 7, 8 (6 failed to decode): pairs 4→5 and 7→8 only, none across the gap.
    rows, index0, index1 = pair_rows(chunk(frames, [4, 5, 7, 8], {4: 5, 7: 8}))
    assert index0.tolist() == [0, 2] and index1.tolist() == [1, 3]
    assert rows["frame0"].tolist() == [4, 7] and rows["frame1"].tolist() == [5, 8]
    assert rows["t0"].tolist() == [4 / 30, 7 / 30] and rows["t1"].tolist() == [5 / 30, 8 / 30]
    assert rows["ordinal"].tolist() == [10, 11] and rows["video_id"].tolist() == ["v", "v"]
    assert "image" not in rows and "pair_with" not in rows


def test_labeler_udf_labels_the_chunks_of_a_block_together(frames):
    """A block's chunks of one frame size are labeled together (each pair from its own chunk's frames) and
    yielded in parts of whole chunks, in order: Ray Data may cut a yield by rows, never between yields. A
    chunk of another size is labeled apart."""
    labeler = Labeler(LabelerConfig(model="dis", batch_size=2))
    a, b = chunk(frames, [0, 1, 2, 3], {0: 1, 1: 2, 2: 3}, "a"), chunk(frames[3:], [0, 1], {0: 1}, "b")
    small = {**chunk(frames, [0, 1], {0: 1}, "c"), "image": frames[:2, :48, :64]}
    batch = {k: np.concatenate([a[k], b[k]]) for k in a}
    assert [o["chunk"].tolist() for o in labeler(batch)] == [["a", "a", "a", "b"]]  # within yield_bytes
    labeler.yield_bytes = 3 * 96 * 128 * 6  # the labels of 3 pairs: a, then b
    outs = list(labeler(batch))
    assert [o["chunk"].tolist() for o in outs] == [["a", "a", "a"], ["b"]]
    both = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    assert both["frame0"].tolist() == [0, 1, 2, 0] and both["frame1"].tolist() == [1, 2, 3, 1]
    assert "image" not in both and both["flow"].shape == (4, 96, 128, 2) and both["flow"].dtype == np.int16
    assert both["model"].tolist() == ["dis"] * 4 and both["checkpoint"].tolist() == [""] * 4
    image0, image1 = frames[[0, 1, 2, 3]], frames[[1, 2, 3, 4]]  # b's pair is frames 3 → 4
    expected = encode_labels(label_pairs(labeler.model, image0, image1, out_dtype=np.float32), "int16")
    assert np.array_equal(both["flow"], expected["flow"])
    assert np.array_equal(both["confidence"], expected["confidence"])
    mixed = list(
        labeler(
            {
                k: np.array([*a[k], *small[k]], dtype=object) if k == "image" else np.concatenate([a[k], small[k]])
                for k in a
            }
        )
    )
    assert [o["chunk"].tolist() for o in mixed] == [["a"] * 3, ["c"]] and mixed[1]["flow"].shape == (1, 48, 64, 2)


def test_split_at_chunks_yields_whole_chunks_within_the_bytes():
    rows = {"x": np.arange(10, dtype=np.int64)}  # 8 bytes a row; chunks end at rows 2, 5, 6 and 10
    parts = [part["x"].tolist() for part in split_at_chunks(rows, [2, 5, 6, 10], max_bytes=48)]
    assert parts == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]  # 6 rows fit in 48 bytes; the last chunk alone
    parts = [part["x"].tolist() for part in split_at_chunks(rows, [2, 5, 6, 10], max_bytes=8)]
    assert parts == [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]  # a chunk over the bytes is still whole


def test_labeler_gives_the_same_rows_from_two_threads(frames):
    """Ray Data runs two chunks per actor at once: the device lock keeps them apart."""
    labeler = Labeler(LabelerConfig(model="dis", batch_size=1))
    chunks = [chunk(frames, [0, 1, 2, 3, 4], {0: 1, 1: 2, 2: 3, 3: 4}, str(i)) for i in range(4)]
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, labeler.label_chunk(chunks[i]))) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = labeler.label_chunk(chunks[0])
    for i in range(4):
        assert np.array_equal(results[i]["flow"], alone["flow"]) and results[i]["chunk"][0] == str(i)


class Fussy(FlowModel):
    """Runs out of device memory on more than two pairs per pass; flow = (1, 2) px everywhere."""

    def __init__(self):
        super().__init__()
        self.passes: list[int] = []

    def predict(self, image0, image1):
        if len(image0) > 4:  # bidirectional: both directions of two pairs
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.passes.append(len(image0) // 2)
        flow = torch.zeros(len(image0), 2, *image0.shape[-2:])
        flow[:, 0], flow[:, 1] = 1.0, 2.0
        return flow


def test_out_of_device_memory_halves_the_batch(frames):
    model = Fussy()
    model.checkpoint_sha256 = ""
    with pytest.warns(UserWarning, match="continuing with 2"):
        stored = label_frames(model, frames, np.arange(4), np.arange(1, 5), batch_size=8, flow_encoding="float16")
    assert model.passes == [2, 2]
    assert stored["flow"].shape == (4, 96, 128, 2) and (stored["flow"] == np.float16([1, 2])).all()


class Confident(FlowModel):
    """Zero flow, and a confidence that is the pair's frame0 brightness / 255."""

    predicts_confidence = True

    def predict(self, image0, image1):
        return torch.zeros(len(image0), 2, *image0.shape[-2:])

    def predict_pairs(self, frames, index0, index1):
        flows = super().predict_pairs(frames, index0, index1)
        return PairFlows(flows.forward, flows.backward, frames[index0].mean(1) / 255)


def test_confidence_from_the_model(frames):
    model = Confident()
    model.checkpoint_sha256 = ""
    stored = label_frames(model, frames, np.array([0, 1]), np.array([1, 2]), confidence="model")
    expected = np.rint(frames[:2].astype(np.float32).mean(-1) / 255 * 255).astype(np.uint8)
    assert np.abs(stored["confidence"].astype(int) - expected).max() <= 1
    consistency = label_frames(model, frames, np.array([0, 1]), np.array([1, 2]))
    assert (consistency["confidence"] == 255).all()  # zero flow both ways: ρ = 0, exp(−ρ) = 1


def test_confidence_model_needs_a_model_that_predicts_one():
    with pytest.raises(ValueError, match="dis predicts no uncertainty"):
        LabelerConfig(model="dis", confidence="model").load()
    with pytest.raises(ValueError, match="confidence: expected one of"):
        LabelerConfig(confidence="mixed")


class Standin(FlowModel):
    """A model on torch's meta device: shapes flow through, nothing is computed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.empty(0, device="meta"))

    def predict(self, image0, image1):
        return torch.empty(len(image0), 2, *image0.shape[-2:], device="meta")


def test_meta_device_returns_zeros_of_the_stored_shapes(frames):
    model = Standin()
    model.checkpoint_sha256 = ""
    stored = label_frames(model, frames, np.arange(3), np.arange(1, 4), batch_size=2)
    assert stored["flow"].shape == (3, 96, 128, 2) and stored["flow"].dtype == np.int16
    assert stored["confidence"].dtype == np.uint8 and stored["flow_scale"].tolist() == [0, 0, 0]


def test_bad_inputs_raise_with_the_shapes():
    model = load_model("dis")
    with pytest.raises(ValueError, match="expected two uint8 arrays"):
        label_pairs(model, np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="frames: expected uint8"):
        label_frames(model, np.zeros((2, 8, 8), np.uint8), np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="batch_size"):
        LabelerConfig(batch_size=0)


def test_passes_are_joined_up_to_a_pixel_budget():
    """Small pairs finish (consistency, summaries, encoding) together; large ones pass by pass."""
    from models.contract import PairFlows
    from pipeline.label.labeler import _joined

    passes = [PairFlows(torch.full((2, 2, 4, 5), float(i)), torch.zeros(2, 2, 4, 5)) for i in range(5)]
    joined = list(_joined(iter(passes), pixels=100))  # 40 px per pass: the third reaches 120 ≥ 100
    assert [len(j.forward) for j in joined] == [6, 4]
    assert joined[0].forward[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2] and joined[1].confidence is None
    assert [len(j.forward) for j in _joined(iter(passes), pixels=1)] == [2] * 5
