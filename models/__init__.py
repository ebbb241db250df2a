"""Flow models behind one contract (see :mod:`models.contract`) and one registry.

>>> from models import load_model, list_models
>>> m = load_model("dis")
>>> flow = m(image0, image1)   # B×3×H×W float RGB [0, 255] → B×2×H×W float32 pixels
"""

from __future__ import annotations

from typing import Any

from . import classical, deqflow, gmflow, perceiver, raft, searaft, unimatch
from .checkpoint import CheckpointError
from .contract import FlowModel, Padding, PairFlows
from .factory import load_model as _load_model
from .plugins import PluginError, PluginRegistry
from .registry import Checkpoint, ModelSpec, Registry

REGISTRY = Registry(
    classical.SPECS + raft.SPECS + deqflow.SPECS + gmflow.SPECS + perceiver.SPECS + searaft.SPECS + unimatch.SPECS
)
# Built-in models, then entry points of installed packages (read when first needed), then import paths.
MODELS = PluginRegistry(REGISTRY)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The record of ``name``: built-in, entry point or ``package.module:Name``; KeyError lists the known names."""
    return MODELS[name]


def model_origins() -> dict[str, str]:
    """Every listable model (built-in and entry points) → where it comes from ("builtin", "entry point DIST X.Y")."""
    return {name: MODELS.origin(name) for name in sorted(MODELS)}


def load_model(name: str, checkpoint: str | None = None, device: Any = None, **kwargs: Any) -> FlowModel:
    """See :func:`models.factory.load_model`; ``name`` may also be a plugin (:mod:`models.plugins`)."""
    return _load_model(MODELS, name, checkpoint, device, **kwargs)


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FlowModel",
    "MODELS",
    "ModelSpec",
    "Padding",
    "PairFlows",
    "PluginError",
    "PluginRegistry",
    "REGISTRY",
    "get_spec",
    "list_models",
    "load_model",
    "model_origins",
]
