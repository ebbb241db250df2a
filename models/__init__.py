"""Flow models behind one contract (see :mod:`models.contract`) and one registry.

>>> from models import load_model, list_models
>>> m = load_model("dis")
>>> flow = m(image0, image1)   # B×3×H×W float RGB [0, 255] → B×2×H×W float32 pixels
"""

from __future__ import annotations

from typing import Any

from . import classical, deqflow, gmflow, perceiver, raft, unimatch
from .checkpoint import CheckpointError
from .contract import FlowModel, Padding, PairFlows
from .factory import load_model as _load_model
from .registry import Checkpoint, ModelSpec, Registry

REGISTRY = Registry(classical.SPECS + raft.SPECS + deqflow.SPECS + gmflow.SPECS + perceiver.SPECS + unimatch.SPECS)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry record of ``name``; KeyError lists the known names."""
    return REGISTRY[name]


def load_model(name: str, checkpoint: str | None = None, device: Any = None, **kwargs: Any) -> FlowModel:
    """See :func:`models.factory.load_model`."""
    return _load_model(REGISTRY, name, checkpoint, device, **kwargs)


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FlowModel",
    "ModelSpec",
    "Padding",
    "PairFlows",
    "REGISTRY",
    "get_spec",
    "list_models",
    "load_model",
]
