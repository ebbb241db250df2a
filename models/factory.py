"""``load_model``: registry name (+ checkpoint) → a ready :class:`FlowModel` in eval mode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint import is_directory, load_checkpoint, load_strict
from .contract import FlowModel
from .plugins import BUILTIN, PluginRegistry, check_contract, is_import_path
from .registry import ModelSpec

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(
    registry: Mapping[str, ModelSpec],
    name: str,
    checkpoint: str | None = None,
    device: str | torch.device | None = None,
    *,
    checkpoint_sha256: str | None = None,
    random_init: bool = False,
    precision: str = "fp32",
    storage_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> FlowModel:
    """Build ``name`` with its default config, the checkpoint's official settings, then ``overrides``.

    ``checkpoint`` is a local path or fsspec URI; it is verified against ``checkpoint_sha256`` or
    the registry's digest when either is known. A learned model without a checkpoint raises,
    unless ``random_init=True`` (tests, speed benchmarks). ``precision`` is "fp32", "bf16" or
    "fp16": the latter two run the network under CUDA autocast (ignored on CPU).

    ``name`` may be a plugin (see :mod:`models.plugins`) when ``registry`` is a PluginRegistry: an
    entry-point model or an import path ``package.module:Name`` (whose weights are optional: its
    own initialisation, or ``checkpoint``). Plugins are probed once on ``device`` before returning.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {precision!r}")
    spec = registry[name]
    known = spec.find_checkpoint(checkpoint) if checkpoint else None
    config = {**spec.default_config, **(known.eval_config if known else {}), **overrides}
    if checkpoint and not spec.needs_weights and not is_import_path(name):
        raise ValueError(f"{name} takes no checkpoint, got {checkpoint!r}")
    expected_sha256 = checkpoint_sha256 or (known.sha256 if known else None)
    if checkpoint and spec.load_checkpoint is not None and is_directory(checkpoint, storage_options):
        # A directory checkpoint holds its own architecture (HuggingFace config.json): it builds the model.
        model, digest = spec.load_checkpoint(checkpoint, config, expected_sha256, storage_options)
    else:
        model = spec.builder(**config)
        digest = ""
        if checkpoint:
            digest = _load_weights(spec, model, checkpoint, expected_sha256, storage_options)
        elif spec.needs_weights and not random_init:
            files = ", ".join(f"{c.filename} ({c.url})" for c in spec.checkpoints) or "none registered"
            raise ValueError(
                f"{name} needs a checkpoint (official files: {files}); pass checkpoint=URI, or random_init=True"
            )
    model.checkpoint_sha256 = digest
    model.config = config
    model.model_name = name
    model.autocast_dtype = PRECISIONS[precision]
    model = model.eval().to(device or "cpu")
    if isinstance(registry, PluginRegistry) and registry.origin(name) != BUILTIN:
        # Built-in models are held to the contract by the tests; a plugin is checked where it runs.
        check_contract(model, name)
    return model


def _load_weights(
    spec: ModelSpec, model: FlowModel, uri: str, sha256: str | None, storage_options: Mapping[str, Any] | None
) -> str:
    """Load a state_dict checkpoint into ``model`` strictly; returns the file's sha256."""
    state, digest = load_checkpoint(uri, sha256, storage_options)
    load_strict(model, spec.convert(state), name=uri)
    return digest
