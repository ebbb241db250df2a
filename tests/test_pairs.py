"""FlowModel.pairs over a run of frames: the same flows as the pairwise path, each frame encoded once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import models.classical
from models import FlowModel, PairFlows, get_spec, list_models, load_model
from tests.test_registry import TEST_OVERRIDES

# The modules that look at one frame on its own, per model; pairs() must run each of them once per
# frame of the run. A new model must add its entry here (an empty tuple when it has none).
GRAY = "to_gray_uint8"  # the classical models' per-frame step, a function rather than a module
ENCODERS = {
    "dis": (GRAY,),
    "farneback": (GRAY,),
    "raft_large": ("fnet", "cnet"),
    "raft_small": ("fnet", "cnet"),
    "deqflow_b": ("fnet", "cnet"),
    "deqflow_h": ("fnet", "cnet"),
    "deqflow_h_v1": ("fnet", "cnet"),
    "deqflow_t": ("fnet", "cnet"),
    "gmflow": ("backbone",),
    "gmflow_refine": ("backbone",),
    "perceiver_io": (),  # windows of both frames together: nothing per frame to share
    "searaft_s": ("fnet",),  # its context encoder reads both frames: per pair and direction
    "searaft_m": ("fnet",),
    "searaft_l": ("fnet",),
    "unimatch_scale1": ("backbone",),
    "unimatch_scale2": ("backbone",),
    "unimatch_scale2_regrefine6": ("backbone",),
}

# (index0, index1) of the pairs, and how many distinct frames of the 4-frame run they use.
RUNS = {
    "stride1": ([0, 1, 2], [1, 2, 3], 4),
    "stride2": ([0, 1], [2, 3], 4),
    "backward_repeated_unused": ([3, 1, 3], [1, 3, 1], 2),  # frames 0 and 2 unused
}
# DEQ-Flow's wide update block dominates this file's time: two solver steps are enough to compare paths.
FEWER_STEPS = {"eval_f_thres": 2}


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """A run of 4 frames, 37×53 (odd: the contract pads and crops), moving 1 px down and 2 px right per frame."""
    torch.manual_seed(0)
    base = torch.rand(3, 37, 53) * 255
    return torch.stack([torch.roll(base, shifts=(k, 2 * k), dims=(1, 2)) for k in range(4)])


@pytest.fixture(scope="module")
def built() -> dict[str, FlowModel]:
    """Models built once for the module (Perceiver IO's takes seconds), by name."""
    return {}


def _model(built: dict[str, FlowModel], name: str) -> FlowModel:
    if name not in built:
        torch.manual_seed(0)
        config = {**TEST_OVERRIDES[name], **(FEWER_STEPS if name.startswith("deqflow") else {})}
        built[name] = load_model(name, random_init=get_spec(name).needs_weights, **config)
    return built[name]


def test_every_registered_model_declares_its_per_frame_encoders():
    assert sorted(ENCODERS) == list_models()


@contextlib.contextmanager
def _counting_frames(model: FlowModel, names: tuple[str, ...]) -> Iterator[dict[str, int]]:
    """Frames each per-frame encoder receives inside the block (the batch sizes of its inputs, summed)."""
    seen = dict.fromkeys(names, 0)
    handles = []
    with pytest.MonkeyPatch.context() as patch:
        for name in names:
            if name == GRAY:

                def counting(images, convert=models.classical.to_gray_uint8):
                    seen[GRAY] += images.shape[0]
                    return convert(images)

                patch.setattr(models.classical, GRAY, counting)
            else:

                def hook(module, inputs, output, name=name):
                    seen[name] += inputs[0].shape[0]

                handles.append(getattr(model, name).register_forward_hook(hook))
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", list_models())
def test_pairs_equal_the_pairwise_path_and_encode_each_frame_once(name, run, frames, built):
    """Bit for bit: the encoders treat each frame on its own (instance norm, batch norm with running
    statistics) and the per-pair steps run on the same 2P batch, in the same order, as bidirectional().
    Only the encoders' batch size differs (N frames against 2P images), and at these sizes oneDNN's
    convolutions give each image the same result whatever its batch. That is not guaranteed: at
    440×1024 it switches kernels between batches of 8 and 16 (4e-6 apart in RAFT-small's features,
    3.6e-4 px in the flow after 12 iterations): should this fail on another CPU by such rounding only,
    the indexing is still right."""
    model = _model(built, name)
    index0, index1, used = torch.tensor(RUNS[run][0]), torch.tensor(RUNS[run][1]), RUNS[run][2]
    encoders = ENCODERS[name]
    with torch.inference_mode():
        with _counting_frames(model, encoders) as in_pairs:
            out = model.pairs(frames, index0, index1)
        with _counting_frames(model, encoders) as in_bidirectional:
            forward, backward = model.bidirectional(frames[index0], frames[index1])
    assert isinstance(out, PairFlows)
    assert out.forward.shape == out.backward.shape == (len(index0), 2, 37, 53)
    assert out.forward.dtype == out.backward.dtype == torch.float32
    assert torch.isfinite(out.forward).all() and torch.isfinite(out.backward).all()
    assert torch.equal(out.forward, forward) and torch.equal(out.backward, backward)
    if out.confidence is not None:
        assert out.confidence.shape == (len(index0), 37, 53)
        assert ((out.confidence > 0) & (out.confidence <= 1)).all()
    # Each frame of the run once; the gathered pairs: each of their 2P images once (not per direction).
    assert in_pairs == dict.fromkeys(encoders, used)
    assert in_bidirectional == dict.fromkeys(encoders, 2 * len(index0))


@pytest.mark.parametrize("name", [n for n in list_models() if "cnet" in ENCODERS.get(n, ())])
def test_one_direction_runs_the_context_encoder_on_the_first_frames_only(name, frames, built):
    model = _model(built, name)
    with torch.inference_mode(), _counting_frames(model, ("fnet", "cnet")) as seen:
        model(frames[:3], frames[1:])
    assert seen == {"fnet": 6, "cnet": 3}


class ColourShift(FlowModel):
    """A plugin that implements only ``predict``: flow (mean R of image1 − mean R of image0, mean G of
    image0) everywhere, so each pair and direction has its own value. Needs inputs padded to 8."""

    pad_multiple = 8

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        if image0.shape[-2] % 8 or image0.shape[-1] % 8:
            raise ValueError(f"expected padded inputs, got {tuple(image0.shape)}")
        self.batches.append(image0.shape[0])
        u = image1[:, 0].mean((1, 2)) - image0[:, 0].mean((1, 2))
        v = image0[:, 1].mean((1, 2))
        return torch.stack([u, v], dim=1)[:, :, None, None].expand(-1, -1, *image0.shape[-2:])


def test_a_plugin_with_only_predict_works_through_pairs(frames):
    model = ColourShift()
    index0, index1 = torch.tensor([0, 1, 3]), torch.tensor([1, 3, 0])
    with torch.inference_mode():
        out = model.pairs(frames, index0, index1)
    padded = model._padding(frames).pad(frames)  # the means are over the padded frames the plugin sees
    red, green = padded[:, 0].mean((1, 2)), padded[:, 1].mean((1, 2))
    for i, (a, b) in enumerate(zip(index0.tolist(), index1.tolist())):
        torch.testing.assert_close(out.forward[i, :, 17, 29], torch.stack([red[b] - red[a], green[a]]))
        torch.testing.assert_close(out.backward[i, :, 17, 29], torch.stack([red[a] - red[b], green[b]]))
    assert out.forward.shape == out.backward.shape == (3, 2, 37, 53) and out.confidence is None
    assert model.batches == [6]  # one call: the pairs of both directions stacked
