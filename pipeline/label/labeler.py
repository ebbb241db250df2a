"""The label stage: runs of frames → forward flow, occlusion and confidence of their pairs.

``label_frames`` and ``label_pairs`` are plain functions (tests and scoring call them directly);
``Labeler`` is the callable class Ray Data runs in an actor pool: its ``__init__`` loads the model
once per actor, on the GPU Ray assigned to it, or on the CPU when it has none.

Each chunk's frames cross to the device once (uint8, through pinned memory on a copy stream);
the model encodes each frame once (``FlowModel.pairs``); consistency, the motion summaries
(:func:`pipeline.label.motion.pair_motion`, from the float flow) and the stored encoding run on the
device, so only the stored bytes and the summary columns come back (on a side stream); with
``store="summary"`` only the summary columns do. Two chunks are in flight per
actor (Ray Data's concurrent calls): one thread's host work, unpacking the next chunk and packing
the last one's rows, overlaps the device work of the other, and a lock keeps one chunk at a time on
the device.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from models import FlowModel, load_model
from models.contract import PairFlows
from pipeline.chunks import iter_chunks, pair_rows
from pipeline.encoding import DEFAULT_FLOW_ENCODING, check_device_encoding, check_encoding, encode_on_device
from pipeline.label.consistency import ConsistencyParams, consistency
from pipeline.label.frame_labels import FrameLabelOptions
from pipeline.label.motion import SUMMARY_COLUMNS, pair_motion
from pipeline.read.datasource import ReadOptions
from pipeline.schema import check_store

CONFIDENCE_SOURCES = ("consistency", "model")
_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}
_MOTION_KEY = "_motion"  # the summary columns stacked P×17 on the device, so they cross in one copy
FINISH_PIXELS = 2**22  # pixels of pairs whose labels are encoded and summarised together (64 MiB of flow)


@dataclass(frozen=True)
class LabelerConfig:
    """model: registry name or ``package.module:Name``; checkpoint: URI (None for classical models);
    overrides: model config changes (e.g. iters=12); batch_size: pairs per forward pass; precision:
    fp32, bf16, fp16; confidence: "consistency" (forward-backward, every model) or "model" (the
    model's own uncertainty, for models that predict one)."""

    model: str = "dis"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    precision: str = "fp32"
    consistency: ConsistencyParams = ConsistencyParams()
    confidence: str = "consistency"

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", dict(self.overrides))  # a copy; plain dict so it pickles to actors
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected ≥ 1, got {self.batch_size}")
        if self.confidence not in CONFIDENCE_SOURCES:
            raise ValueError(f"confidence: expected one of {CONFIDENCE_SOURCES}, got {self.confidence!r}")

    def load(self, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None) -> FlowModel:
        model = load_model(
            self.model,
            self.checkpoint,
            device,
            checkpoint_sha256=self.checkpoint_sha256,
            precision=self.precision,
            storage_options=storage_options,
            **self.overrides,
        )
        if self.confidence == "model" and not getattr(model, "predicts_confidence", False):
            raise ValueError(
                f"--confidence model: {self.model} predicts no uncertainty; "
                "use --confidence consistency, or a model that predicts one (e.g. searaft_*)"
            )
        return model


def assigned_device() -> torch.device:
    """The GPU Ray assigned to this worker (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    try:
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:
        gpu_ids = []
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def model_device(model: FlowModel) -> torch.device:
    """Where the model computes: the device of its first parameter or buffer (CPU for none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def placement(device: torch.device) -> str:
    """Where this labeler runs, as JSON: Ray actor id, node IP, the GPU ids Ray assigned
    (``ray.get_gpu_ids()``) and the torch device used; it travels with each chunk into the
    write summary so the run's record shows which GPUs did the work."""
    import json

    import ray

    if not ray.is_initialized():
        return json.dumps({"actor": "local", "node": "", "gpu_ids": [], "device": str(device)})
    context = ray.get_runtime_context()
    return json.dumps(
        {
            "actor": context.get_actor_id() or "driver",
            "node": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "device": str(device),
        }
    )


@dataclass
class Transfer:
    """Tensors on their way to the host; ``done``: the CUDA event that marks their arrival."""

    tensors: dict[str, torch.Tensor]
    done: Any = None

    def numpy(self) -> dict[str, np.ndarray]:
        """The arrays, once they have arrived (waits for this transfer only)."""
        if self.done is not None:
            self.done.synchronize()
        return {k: t.numpy() for k, t in self.tensors.items()}


class DeviceQueue:
    """Copies to and from one device, and the order of work on it.

    On CUDA: frames go up through pinned memory on a copy stream, compute runs on its own stream
    after them, and results come back into pinned memory on a third stream, each chunk's marked
    by a :class:`Transfer`'s event. On the CPU everything is synchronous. On torch's meta device
    (the feed benchmark's stand-in accelerator) work is dispatched but not computed, and results
    come back as zeros of the right shapes and dtypes.
    """

    def __init__(self, device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        self.upload = torch.cuda.Stream(device) if cuda else None
        self.compute = torch.cuda.Stream(device) if cuda else None
        self.download = torch.cuda.Stream(device) if cuda else None

    def to_device(self, images: np.ndarray) -> torch.Tensor:
        """N×H×W×3 uint8 → N×3×H×W float32 on the device; uint8 crosses (4× fewer bytes than float)."""
        with warnings.catch_warnings():
            # Ray hands batches out of its read-only object store; the tensor is only read (copied).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            host = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cpu":
            return host.permute(0, 3, 1, 2).float()
        staged = torch.empty(host.shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        staged.copy_(host)  # the host's share of an upload: one pass over the frames
        if self.upload is None:
            return staged.to(self.device).permute(0, 3, 1, 2).float()
        with torch.cuda.stream(self.upload):
            frames = staged.to(self.device, non_blocking=True)
        self.compute.wait_stream(self.upload)
        frames.record_stream(self.compute)
        with torch.cuda.stream(self.compute):
            return frames.permute(0, 3, 1, 2).float()

    def stream(self):
        """Context in which device work is queued (the compute stream on CUDA)."""
        return torch.cuda.stream(self.compute) if self.compute is not None else contextlib.nullcontext()

    def to_host(self, tensors: Mapping[str, torch.Tensor]) -> Transfer:
        """Start copying ``tensors`` back to the host (see :class:`Transfer`)."""
        if self.device.type == "meta":
            return Transfer({k: torch.zeros(t.shape, dtype=t.dtype) for k, t in tensors.items()})
        if self.download is None:
            return Transfer(dict(tensors))
        self.download.wait_stream(self.compute)
        out = {}
        with torch.cuda.stream(self.download):
            for key, tensor in tensors.items():
                tensor.record_stream(self.download)
                out[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                out[key].copy_(tensor, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        return Transfer(out, done)


def _device_labels(
    flows: PairFlows, params: ConsistencyParams, confidence_source: str, model: FlowModel
) -> tuple[torch.Tensor, ...]:
    """``model``'s flows of P pairs on the device → (flow P×2×H×W, occlusion P×H×W bool, confidence P×H×W),
    on the device."""
    occlusion, confidence = consistency(flows.forward, flows.backward, params)
    if confidence_source == "model":
        if flows.confidence is None:
            raise ValueError(f"confidence='model': {type(model).__name__} returned no confidence of its own")
        confidence = flows.confidence
    return flows.forward, occlusion, confidence


class DeviceLabeler:
    """One model on one device: a chunk's frames and pairs → its labels, on the device.

    ``batch_size`` pairs per forward pass; halved for the rest of the run when CUDA runs out of memory.
    """

    def __init__(
        self,
        model: FlowModel,
        batch_size: int,
        params: ConsistencyParams = ConsistencyParams(),
        confidence: str = "consistency",
    ):
        self.model, self.batch_size, self.params, self.confidence = model, batch_size, params, confidence
        self.queue = DeviceQueue(model_device(model))
        self.lock = threading.Lock()  # one chunk on the device at a time; the other thread does host work

    @torch.inference_mode()
    def run(self, images: np.ndarray, index0: np.ndarray, index1: np.ndarray, finish: Any) -> Transfer:
        """M×H×W×3 uint8 frames and P pairs (rows of frame0 and frame1) → ``finish(flow, occlusion,
        confidence)`` of every pair on the device, concatenated, on its way to the host."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"frames: expected uint8 M×H×W×3, got {images.shape} {images.dtype}")
        frames = self.queue.to_device(images)
        with self.lock, self.queue.stream():
            passes = _joined(self._forward_passes(frames, index0, index1))
            parts = [finish(*_device_labels(flows, self.params, self.confidence, self.model)) for flows in passes]
            merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
            return self.queue.to_host(merged)

    def _forward_passes(self, frames: torch.Tensor, index0: np.ndarray, index1: np.ndarray) -> Iterator[PairFlows]:
        """Flows of ``batch_size`` pairs at a time, each pass given only the run of frames it uses."""
        start = 0
        while start < len(index0):
            size = self.batch_size
            i0, i1 = index0[start : start + size], index1[start : start + size]
            first, last = int(min(i0.min(), i1.min())), int(max(i0.max(), i1.max()))
            try:
                flows = self.model.pairs(
                    frames[first : last + 1],
                    torch.as_tensor(i0 - first, device=frames.device),
                    torch.as_tensor(i1 - first, device=frames.device),
                )
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                torch.cuda.empty_cache()
                self.batch_size = size // 2
                warnings.warn(
                    f"out of device memory at {size} pairs per pass: continuing with {self.batch_size}", stacklevel=2
                )
                continue
            yield flows
            start += len(i0)


def _joined(passes: Iterator[PairFlows], pixels: int = FINISH_PIXELS) -> Iterator[PairFlows]:
    """The flows of consecutive forward passes joined up to ``pixels`` pixels of pairs: consistency, the
    motion summaries and the encoding then run once over many small pairs (short clips), not once per
    few of them, while large frames still finish pass by pass."""
    held: list[PairFlows] = []
    count = 0
    for flows in passes:
        held.append(flows)
        count += flows.forward.shape[0] * flows.forward.shape[-2] * flows.forward.shape[-1]
        if count >= pixels:
            yield _cat(held)
            held, count = [], 0
    if held:
        yield _cat(held)


def _cat(parts: list[PairFlows]) -> PairFlows:
    if len(parts) == 1:
        return parts[0]
    return PairFlows(*(None if part[0] is None else torch.cat(part) for part in zip(*parts)))


def label_frames(
    model: FlowModel,
    images: np.ndarray,
    index0: np.ndarray,
    index1: np.ndarray,
    batch_size: int = 4,
    params: ConsistencyParams = ConsistencyParams(),
    flow_encoding: str = DEFAULT_FLOW_ENCODING,
    confidence: str = "consistency",
    motion: bool = False,
) -> dict[str, np.ndarray]:
    """A run of M frames (M×H×W×3 uint8 RGB) and P pairs (frame rows ``index0[i]`` → ``index1[i]``)
    → the stored arrays of ``flow_encoding`` (see :func:`pipeline.encoding.encode_labels`):
    'flow' P×H×W×2, 'occlusion' P×H×W uint8 (1 = occluded or leaves the frame), 'confidence' P×H×W
    (and 'flow_scale' for int16); ``motion``: also the P float32 motion summary columns
    (:data:`pipeline.label.motion.SUMMARY_COLUMNS`)."""
    labeler = DeviceLabeler(model, batch_size, params, confidence)
    return _labels(labeler, images, index0, index1, check_encoding(flow_encoding), motion)


def _finisher(encoding: str | None, motion: bool):
    """What the device keeps of each pass's (flow, occlusion, confidence): the stored arrays of
    ``encoding`` (None: none) and, with ``motion``, the summary columns stacked P×17."""

    def finish(flow: torch.Tensor, occlusion: torch.Tensor, confidence: torch.Tensor) -> dict[str, torch.Tensor]:
        out = encode_on_device(flow, occlusion, confidence, encoding) if encoding else {}
        if motion:
            out[_MOTION_KEY] = torch.stack(list(pair_motion(flow, occlusion, confidence).values()), 1)
        return out

    return finish


def _host_columns(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host arrays of a :func:`_finisher` transfer → stored arrays (checked) and P-length summary columns."""
    stacked = arrays.pop(_MOTION_KEY, None)
    if stacked is not None:
        arrays.update({name: np.ascontiguousarray(stacked[:, i]) for i, name in enumerate(SUMMARY_COLUMNS)})
    return check_device_encoding(arrays) if "flow" in arrays else arrays


def _labels(
    labeler: DeviceLabeler,
    images: np.ndarray,
    index0: np.ndarray,
    index1: np.ndarray,
    encoding: str | None,
    motion: bool,
) -> dict[str, np.ndarray]:
    """The stored arrays of ``encoding`` (None: none, nothing dense crosses to the host) and, with
    ``motion``, the summary columns of a run of frames' pairs."""
    transfer = labeler.run(images, np.asarray(index0), np.asarray(index1), _finisher(encoding, motion))
    return _host_columns(transfer.numpy())


@torch.inference_mode()
def label_pairs(
    model: FlowModel,
    image0: np.ndarray,
    image1: np.ndarray,
    batch_size: int = 4,
    params: ConsistencyParams = ConsistencyParams(),
    out_dtype: np.dtype | type = np.float16,
    confidence: str = "consistency",
    motion: bool = False,
) -> dict[str, np.ndarray]:
    """N×H×W×3 uint8 RGB pairs → {'flow': N×H×W×2 (pixels, frame0 → frame1),
    'occlusion': N×H×W uint8 (1 = occluded or leaves the frame), 'confidence': N×H×W in (0, 1]},
    flow and confidence in ``out_dtype`` (scoring and viz take float32, not the stored encoding);
    ``confidence``: "consistency" or "model" (see :class:`LabelerConfig`); ``motion``: also the N float32
    motion summary columns (:data:`pipeline.label.motion.SUMMARY_COLUMNS`, from the float32 flow)."""
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in _TORCH_DTYPES:
        raise ValueError(f"out_dtype: expected float16 or float32, got {out_dtype}")
    if image0.shape != image1.shape or image0.ndim != 4 or image0.shape[-1] != 3 or image0.dtype != np.uint8:
        raise ValueError(
            f"expected two uint8 arrays N×H×W×3 of one shape, got {image0.shape} {image0.dtype} "
            f"and {image1.shape} {image1.dtype}"
        )
    n, dtype = len(image0), _TORCH_DTYPES[out_dtype]
    if n == 0:
        raise ValueError("expected at least one pair, got 0")
    labeler = DeviceLabeler(model, batch_size, params, confidence)

    summaries = _finisher(None, motion)

    def finish(flow, occlusion, confidence):
        return {
            "flow": flow.permute(0, 2, 3, 1).to(dtype),
            "occlusion": occlusion.to(torch.uint8),
            "confidence": confidence.to(dtype),
            **summaries(flow, occlusion, confidence),
        }

    # Pair i is (frame i, frame k + i) of each pass's 2k frames: every frame crosses once.
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        a, b = image0[start : start + batch_size], image1[start : start + batch_size]
        k = len(a)
        transfer = labeler.run(np.concatenate([a, b]), np.arange(k), np.arange(k) + k, finish)
        for name, value in _host_columns(transfer.numpy()).items():
            out.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def split_at_chunks(rows: dict[str, np.ndarray], ends: list[int], max_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """Pair rows of consecutive chunks (chunk i ends before row ``ends[i]``) in parts of whole chunks, each of
    at most ``max_bytes`` or one chunk. Ray Data joins a task's yields into blocks and cuts a joined block
    that outgrows its target by rows, which must never split a chunk (jobs.cluster.block_bytes); a yield per
    chunk would pay Ray's block conversion per short clip."""
    row_bytes = sum(np.asarray(column).nbytes for column in rows.values()) / max(1, ends[-1])
    start = 0
    for i, end in enumerate(ends):
        if i + 1 == len(ends) or (ends[i + 1] - start) * row_bytes > max_bytes:
            yield {name: column[start:end] for name, column in rows.items()}
            start = end


class Labeler:
    """Ray Data UDF (``map_batches(Labeler, fn_constructor_kwargs=…, batch_size=None)``).

    Takes chunks of frame rows (:func:`pipeline.read.datasource.chunk_batch`) and yields their pair rows
    in parts of whole chunks of at most ``yield_bytes`` (:func:`split_at_chunks`), one row per pair: the
    chunk's columns, frame0/frame1/t0/t1/ordinal, the motion summary columns, the stored flow, occlusion
    and confidence (already in the sink's ``flow_encoding``; none with ``store="summary"``), model,
    checkpoint and ``labeled_on`` (see :func:`placement`). Safe to call from two threads at once.
    """

    def __init__(
        self,
        config: LabelerConfig,
        storage_options: Mapping[str, Any] | None = None,
        frame_labels: FrameLabelOptions | None = None,
        flow_encoding: str = DEFAULT_FLOW_ENCODING,
        store: str = "dense",
        yield_bytes: int = ReadOptions.chunk_bytes,
    ):
        self.config = config
        self.yield_bytes = yield_bytes
        self.flow_encoding = check_encoding(flow_encoding)
        self.store = check_store(store)
        device = assigned_device()
        if device.type == "cpu":
            # OpenCV (DIS, Farnebäck) sizes its thread pool to the machine, torch to the CPUs Ray
            # gave this actor (OMP_NUM_THREADS): match them, or N actors on N CPUs run N × cores threads.
            cv2.setNumThreads(torch.get_num_threads())
        self.model = config.load(device, storage_options)
        self.device = DeviceLabeler(self.model, config.batch_size, config.consistency, config.confidence)
        # --frame-labels: classes of frame0 from the frames this actor already holds (pipeline.label.frame_labels).
        self.frame_labeler = frame_labels.load(device, storage_options) if frame_labels else None
        self.placement = placement(self.device.queue.device)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        # The chunks of a block (short clips share one) go to the device together, one size at a time:
        # a call per six-frame clip would pay the device round trip and the per-pass overheads per clip.
        chunks = list(iter_chunks(batch))
        for _, run in itertools.groupby(chunks, key=lambda frames: np.shape(frames["image"])[1:]):
            run = list(run)
            ends = np.cumsum([np.count_nonzero(np.asarray(frames["pair_with"]) >= 0) for frames in run])
            yield from split_at_chunks(self.label_chunks(run), ends.tolist(), self.yield_bytes)

    def label_chunk(self, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Frame rows of one chunk → its pair rows with labels."""
        return self.label_chunks([frames])

    def label_chunks(self, chunks: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Frame rows of chunks of one frame size → their pair rows with labels, in order."""
        parts = [pair_rows(frames) for frames in chunks]
        offsets = np.cumsum([0] + [len(frames["frame"]) for frames in chunks[:-1]])
        out = {name: np.concatenate([rows[name] for rows, _, _ in parts]) for name in parts[0][0]}
        index0 = np.concatenate([i0 + offset for (_, i0, _), offset in zip(parts, offsets)])
        index1 = np.concatenate([i1 + offset for (_, _, i1), offset in zip(parts, offsets)])
        images = np.concatenate([np.asarray(f["image"]) for f in chunks]) if len(chunks) > 1 else chunks[0]["image"]
        images = np.asarray(images)
        encoding = self.flow_encoding if self.store == "dense" else None  # summary: no arrays leave the device
        stored = _labels(self.device, images, index0, index1, encoding, motion=True)
        n = len(index0)
        out["model"] = np.full(n, self.config.model, object)
        out["checkpoint"] = np.full(n, self.model.checkpoint_sha256, object)
        if self.frame_labeler is not None:
            out.update(self.frame_labeler({"image0": images[index0], "ordinal": out["ordinal"]}))
        out["labeled_on"] = np.full(n, self.placement, object)  # not written: the sinks keep the schema's columns
        out.update(stored)
        return out
