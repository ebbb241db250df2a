"""The label stage: frame pairs → forward flow, occlusion and confidence.

``label_pairs`` is the plain function (tests call it directly); ``Labeler`` is the callable
class Ray Data runs in an actor pool: its ``__init__`` loads the model once per actor, on
the GPU Ray assigned to it, or on the CPU when it has none.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from models import FlowModel, load_model

from .chunks import iter_chunks
from .consistency import ConsistencyParams, consistency
from .encoding import DEFAULT_FLOW_ENCODING, check_encoding, encode_labels, transfer_dtype
from .frame_labels import FrameLabelOptions

IMAGE_COLUMNS = ("image0", "image1")
_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


@dataclass(frozen=True)
class LabelerConfig:
    """model: registry name; checkpoint: URI (None for classical models); overrides: model
    config changes (e.g. iters=12); batch_size: pairs per forward pass; precision: fp32, bf16, fp16."""

    model: str = "dis"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    precision: str = "fp32"
    consistency: ConsistencyParams = ConsistencyParams()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", dict(self.overrides))  # a copy; plain dict so it pickles to actors
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected ≥ 1, got {self.batch_size}")

    def load(self, device: str | torch.device = "cpu",
             storage_options: Mapping[str, Any] | None = None) -> FlowModel:
        return load_model(self.model, self.checkpoint, device, checkpoint_sha256=self.checkpoint_sha256,
                          precision=self.precision, storage_options=storage_options, **self.overrides)


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


def placement(device: torch.device) -> str:
    """Where this labeler runs, as JSON: Ray actor id, node IP, the GPU ids Ray assigned
    (``ray.get_gpu_ids()``) and the torch device used; it travels with each chunk into the
    write summary so the run's record shows which GPUs did the work."""
    import json

    import ray

    if not ray.is_initialized():
        return json.dumps({"actor": "local", "node": "", "gpu_ids": [], "device": str(device)})
    context = ray.get_runtime_context()
    return json.dumps({"actor": context.get_actor_id() or "driver", "node": ray.util.get_node_ip_address(),
                       "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(device)})


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float32 on ``device``; moves uint8 (4× fewer bytes) then converts."""
    with warnings.catch_warnings():
        # Ray hands batches out of its read-only object store; the tensor is only read
        # (converted to float or pinned, both copies), never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float()


@torch.inference_mode()
def label_pairs(model: FlowModel, image0: np.ndarray, image1: np.ndarray, batch_size: int = 4,
                params: ConsistencyParams = ConsistencyParams(),
                out_dtype: np.dtype | type = np.float16) -> dict[str, np.ndarray]:
    """N×H×W×3 uint8 RGB pairs → {'flow': N×H×W×2 (pixels, frame0 → frame1),
    'occlusion': N×H×W uint8 (1 = occluded or leaves the frame), 'confidence': N×H×W in (0, 1]}.

    Flow and confidence are float16 by default (the output contract); scoring passes
    ``out_dtype=np.float32`` so metrics see the model's float32 flow, not a rounded copy.
    """
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in _TORCH_DTYPES:
        raise ValueError(f"out_dtype: expected float16 or float32, got {out_dtype}")
    dtype = _TORCH_DTYPES[out_dtype]  # converted on the device: float16 halves the bytes copied back
    if image0.shape != image1.shape or image0.ndim != 4 or image0.shape[-1] != 3 or image0.dtype != np.uint8:
        raise ValueError(f"expected two uint8 arrays N×H×W×3 of one shape, got {image0.shape} {image0.dtype} "
                         f"and {image1.shape} {image1.dtype}")
    device = next(iter(model.parameters()), torch.empty(0)).device
    outputs: dict[str, list[np.ndarray]] = {"flow": [], "occlusion": [], "confidence": []}
    for start in range(0, len(image0), batch_size):
        a = _to_device(image0[start:start + batch_size], device)
        b = _to_device(image1[start:start + batch_size], device)
        forward, backward = model.bidirectional(a, b)
        occlusion, confidence = consistency(forward, backward, params)
        outputs["flow"].append(forward.permute(0, 2, 3, 1).to(dtype).cpu().numpy())
        outputs["occlusion"].append(occlusion.to(torch.uint8).cpu().numpy())
        outputs["confidence"].append(confidence.to(dtype).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


class Labeler:
    """Ray Data UDF (``map_batches(Labeler, fn_constructor_kwargs=…, batch_size=None)``).

    Yields one output batch per input chunk: the input's columns without the frames, plus
    flow, occlusion, confidence, model, checkpoint and ``labeled_on`` (see :func:`placement`).
    Flow and confidence leave already in the sink's ``flow_encoding`` (see pipeline.encoding):
    rounded once from float32, and as few bytes as the files will hold cross the object store.
    """

    def __init__(self, config: LabelerConfig, storage_options: Mapping[str, Any] | None = None,
                 frame_labels: FrameLabelOptions | None = None, flow_encoding: str = DEFAULT_FLOW_ENCODING):
        self.config = config
        self.flow_encoding = check_encoding(flow_encoding)
        self.device = assigned_device()
        if self.device.type == "cpu":
            # OpenCV (DIS, Farnebäck) sizes its thread pool to the machine, torch to the CPUs Ray
            # gave this actor (OMP_NUM_THREADS): match them, or N actors on N CPUs run N × cores threads.
            cv2.setNumThreads(torch.get_num_threads())
        self.model = config.load(self.device, storage_options)
        # --frame-labels: classes of frame0 from the frames this actor already holds (pipeline.frame_labels).
        self.frame_labeler = frame_labels.load(self.device, storage_options) if frame_labels else None
        self.placement = placement(self.device)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for rows in iter_chunks(batch):
            labels = label_pairs(self.model, rows["image0"], rows["image1"], self.config.batch_size,
                                 self.config.consistency, out_dtype=transfer_dtype(self.flow_encoding))
            out = {name: column for name, column in rows.items() if name not in IMAGE_COLUMNS}
            n = len(out["frame0"])
            out["model"] = np.full(n, self.config.model, object)
            out["checkpoint"] = np.full(n, self.model.checkpoint_sha256, object)
            if self.frame_labeler is not None:
                out.update(self.frame_labeler(rows))
            out["labeled_on"] = np.full(n, self.placement, object)  # not written: the sinks keep the schema's columns
            out.update(encode_labels(labels, self.flow_encoding))
            yield out
