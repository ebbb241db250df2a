"""Plugin models for tests/test_plugins.py, loaded by import path (``tests.plugin_models:ShiftFlow``) and
through a fake distribution's ``flowlabel.models`` entry points; also imported inside Ray workers."""

from __future__ import annotations

import torch
from torch import nn

from models import FlowModel, ModelSpec


def _brightness_step(image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
    """B×1×1×1: mean of image1 minus mean of image0, a tenth (frames of constant value 10·k step by 1)."""
    return (image1.mean(dim=(1, 2, 3)) - image0.mean(dim=(1, 2, 3))).view(-1, 1, 1, 1) / 10


class ShiftFlow(FlowModel):
    """Implements ``predict`` only: u = scale·u0 + brightness step, v = scale·v0 everywhere."""

    pad_multiple = 8

    def __init__(self, u: float = 1.5, v: float = -0.25):
        super().__init__()
        self.register_buffer("base", torch.tensor([u, v]))
        self.scale = nn.Parameter(torch.ones(()))  # a weight, so a checkpoint has something to load

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image0.shape
        flow = (self.scale * self.base).view(1, 2, 1, 1).expand(b, 2, h, w).clone()
        flow[:, :1] += _brightness_step(image0, image1)
        return flow


class BidirectionalShift(ShiftFlow):
    """Adds ``predict_bidirectional`` with backward = −forward (the default would call predict(image1, image0))."""

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        forward = self.predict(image0, image1)
        return forward, -forward


def make_shift(u: float = 1.5, v: float = -0.25) -> ShiftFlow:
    """A factory: ShiftFlow(u, v)."""
    return ShiftFlow(u, v)


class Downsampled(ShiftFlow):
    """Bad: flow at 1/8 of the input size."""

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        return super().predict(image0, image1)[..., ::8, ::8]


class IntegerFlow(ShiftFlow):
    """Bad: integer flow."""

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        return super().predict(image0, image1).round().long()


class NanFlow(ShiftFlow):
    """Bad: NaN flow."""

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        return super().predict(image0, image1) * float("nan")


class Needs64(ShiftFlow):
    """Refuses inputs that are not a multiple of its pad_multiple (the probe must respect it)."""

    pad_multiple = 64

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        if image0.shape[-1] % 64 or image0.shape[-2] % 64:
            raise ValueError(f"expected multiples of 64, got {tuple(image0.shape)}")
        return super().predict(image0, image1)


class PlainModule(nn.Module):
    """Bad: an nn.Module, not a FlowModel."""


def make_text() -> str:
    """Bad factory: returns a string."""
    return "not a model"


NUMBER = 3

SHIFT_SPEC = ModelSpec(
    "fake_shift", ShiftFlow, "ShiftFlow from a fake distribution", default_config={"u": 2.0}, needs_weights=False
)
WEIGHTED_SPEC = ModelSpec("fake_weighted", ShiftFlow, "ShiftFlow that needs a checkpoint")
SPECS = (SHIFT_SPEC, WEIGHTED_SPEC)
CLASH = ModelSpec("dis", ShiftFlow, "a plugin that takes a built-in name", needs_weights=False)


def specs() -> list[ModelSpec]:
    """An entry point may be a callable returning the records."""
    return [ModelSpec("fake_called", make_shift, "from a callable entry point", needs_weights=False)]
