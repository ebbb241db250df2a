"""The one input/output convention every flow model in flowlabel follows.

Images go in as float tensors B×3×H×W, RGB, values in [0, 255], any H and W.
Flow comes out as float32 B×2×H×W in pixels of the input, frame0 → frame1,
channel 0 = u (+x, right), channel 1 = v (+y, down).

Subclasses implement :meth:`FlowModel.predict` on inputs already padded to a
multiple of ``pad_multiple``; padding, input checks and cropping live here only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Padding:
    """Replicate padding to a multiple of ``multiple``, and the crop that undoes it.

    ``mode="sintel"`` splits the padding evenly between both sides of each axis;
    ``mode="kitti"`` splits the width padding evenly but pads height only at the bottom,
    as RAFT's InputPadder does for KITTI.
    """

    height: int
    width: int
    multiple: int
    mode: str = "sintel"

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) in pixels."""
        ph = (-self.height) % self.multiple
        pw = (-self.width) % self.multiple
        if self.mode == "kitti":
            return pw // 2, pw - pw // 2, 0, ph
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pads
        if left == right == top == bottom == 0:
            return x
        return F.pad(x, (left, right, top, bottom), mode="replicate")

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        left, _, top, _ = self.pads
        return x[..., top : top + self.height, left : left + self.width]


class PairFlows(NamedTuple):
    """Flows of P frame pairs: ``forward`` (frame0 → frame1) and ``backward`` (frame1 → frame0),
    each P×2×H×W float in pixels; ``confidence``: P×H×W in (0, 1] for the forward flow from the
    model's own uncertainty, or None for models that predict none."""

    forward: torch.Tensor
    backward: torch.Tensor
    confidence: torch.Tensor | None = None


def check_frames(frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> None:
    """Raise unless ``frames`` is float N×3×H×W and ``index0``/``index1`` are equal-length 1-D
    integer tensors of positions in [0, N)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames: expected a tensor N×3×H×W, got {getattr(frames, 'shape', type(frames).__name__)}")
    if not frames.is_floating_point():
        raise ValueError(f"frames: expected a float tensor with values in [0, 255], got {frames.dtype}")
    n = frames.shape[0]
    for name, index in (("index0", index0), ("index1", index1)):
        if not isinstance(index, torch.Tensor) or index.ndim != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name}: expected a 1-D integer tensor, got {getattr(index, 'shape', index)}")
        if index.numel() and not frames.is_meta and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"{name}: expected positions in [0, {n}), got {index.tolist()}")
    if index0.shape != index1.shape:
        raise ValueError(f"expected index0 and index1 of one length, got {index0.numel()} and {index1.numel()}")


def frames_used(frames: torch.Tensor, *indices: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The frames of N×3×H×W ``frames`` (or N×… features) that ``indices`` point at, each once and in
    order, and each index remapped to positions among them: a model encodes those frames once,
    whatever pairs they form. When every frame is used, ``frames`` and ``indices`` come back as they are."""
    used, inverse = torch.unique(torch.cat(indices), return_inverse=True)
    if used.numel() == frames.shape[0]:
        return frames, indices
    return frames[used], tuple(inverse.split([index.numel() for index in indices]))


def check_pair(image0: torch.Tensor, image1: torch.Tensor) -> None:
    """Raise ValueError unless both images are float B×3×H×W of the same shape."""
    for name, img in (("image0", image0), ("image1", image1)):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(img).__name__}")
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"{name}: expected shape B×3×H×W, got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor with values in [0, 255], got {img.dtype}")
    if image0.shape != image1.shape:
        raise ValueError(
            f"expected image0 and image1 of the same shape, got {tuple(image0.shape)} and {tuple(image1.shape)}"
        )


class FlowModel(nn.Module):
    """Base class: checks inputs, pads, calls :meth:`predict`, crops the flow back.

    Class attributes a subclass may set:
      pad_multiple: spatial size the network needs (8 for RAFT, 16/32 for GMFlow).
      pad_mode: "sintel" (centre) or "kitti" (height padded at the bottom), as the official evaluation uses.
      native_bidirectional: True when :meth:`bidirectional` costs one pass, not two.
      predicts_confidence: True when :meth:`pairs` returns the model's own per-pixel confidence.
    Instance attribute set by ``load_model(precision=...)``:
      autocast_dtype: torch.bfloat16 / torch.float16 to run :meth:`predict` under CUDA autocast;
      None (default) runs in float32. On CPU it is ignored: flowlabel's CPU path stays float32.
    """

    pad_multiple: int = 1
    pad_mode: str = "sintel"
    native_bidirectional: bool = False
    predicts_confidence: bool = False
    autocast_dtype: torch.dtype | None = None

    def _autocast(self, x: torch.Tensor):
        if self.autocast_dtype is None or x.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """Padded B×3×H×W float images in [0, 255] → B×2×H×W float flow in pixels."""
        raise NotImplementedError

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward flow on padded inputs. Default: one batched call of :meth:`predict`
        on (image0, image1) and (image1, image0) stacked along the batch axis."""
        b = image0.shape[0]
        flow = self.predict(torch.cat([image0, image1]), torch.cat([image1, image0]))
        return flow[:b], flow[b:]

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        """Both flows of the pairs (frames[index0[i]], frames[index1[i]]) on padded N×3×H×W frames.

        Default: gather the pairs and call :meth:`predict_bidirectional`. Models whose encoders look
        at one frame at a time override it to encode each frame once, across pairs and directions.
        """
        return PairFlows(*self.predict_bidirectional(frames[index0], frames[index1]))

    def _padding(self, image0: torch.Tensor) -> Padding:
        return Padding(image0.shape[-2], image0.shape[-1], self.pad_multiple, self.pad_mode)

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float RGB in [0, 255] (both frames) → B×2×H×W float32 flow, frame0 → frame1, pixels."""
        check_pair(image0, image1)
        padding = self._padding(image0)
        with self._autocast(image0):
            flow = self.predict(padding.pad(image0), padding.pad(image1))
        return padding.crop(flow).float()

    def bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward (0 → 1) and backward (1 → 0) flow, each B×2×H×W float32 in pixels."""
        check_pair(image0, image1)
        padding = self._padding(image0)
        with self._autocast(image0):
            fwd, bwd = self.predict_bidirectional(padding.pad(image0), padding.pad(image1))
        return padding.crop(fwd).float(), padding.crop(bwd).float()

    def pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        """Flows of P pairs of a run of N frames (N×3×H×W float RGB in [0, 255]): pair i is
        (frames[index0[i]], frames[index1[i]]). Each frame is padded once and, for models that
        override :meth:`predict_pairs`, encoded once. Returns float32 P×2×H×W flows in pixels
        (and P×H×W confidence for models that predict one)."""
        check_frames(frames, index0, index1)
        padding = self._padding(frames)
        with self._autocast(frames):
            out = self.predict_pairs(padding.pad(frames), index0, index1)
        confidence = None if out.confidence is None else padding.crop(out.confidence).float()
        return PairFlows(padding.crop(out.forward).float(), padding.crop(out.backward).float(), confidence)


class PairwiseFlowModel(FlowModel):
    """A model whose encoders look at one frame at a time (RAFT, DEQ-Flow): a subclass implements
    :meth:`_flows` on a run of frames, and single pairs, both directions and runs of pairs all go
    through it, so each frame is encoded once whichever way the model is called."""

    def _flows(self, frames: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """M×2×H×W flow from frames[first[i]] to frames[second[i]] (padded N×3×H×W frames)."""
        raise NotImplementedError

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """Padded B×3×H×W RGB in [0, 255] → B×2×H×W flow in pixels."""
        index = torch.arange(image0.shape[0], device=image0.device)
        return self._flows(torch.cat([image0, image1]), index, index + image0.shape[0])

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward B×2×H×W flow; each image is encoded once for both directions."""
        index = torch.arange(image0.shape[0], device=image0.device)
        flows = self.predict_pairs(torch.cat([image0, image1]), index, index + image0.shape[0])
        return flows.forward, flows.backward

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        """Both flows of P pairs; the 2P flows (forward pairs, then backward) are one batch of :meth:`_flows`."""
        p = index0.numel()
        flow = self._flows(frames, torch.cat([index0, index1]), torch.cat([index1, index0]))
        return PairFlows(flow[:p], flow[p:])
