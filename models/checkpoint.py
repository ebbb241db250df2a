"""Reading checkpoints from any fsspec URI, verifying them, and loading them strictly."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

import fsspec
import torch
from torch import nn

SAFETENSORS_SUFFIXES = (".safetensors",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, wrong digest, or wrong keys."""


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole checkpoint file at ``uri`` (local path or any fsspec URI)."""
    try:
        with fsspec.open(uri, "rb", **dict(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {uri}") from None


def is_directory(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when ``uri`` (local path or fsspec URI) names a folder, e.g. a HuggingFace model directory."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs.isdir(path)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_state_dict(data: bytes, name: str) -> dict[str, Any]:
    """Deserialize with safetensors or ``torch.load(weights_only=True)``; never unpickles code."""
    if name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError…
        raise CheckpointError(
            f"{name}: expected a PyTorch or safetensors checkpoint, could not load it: {exc}"
        ) from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{name}: expected a mapping of tensors, got {type(state).__name__}")
    return dict(state)


def load_checkpoint(
    uri: str,
    expected_sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Read, verify and deserialize a checkpoint → (state_dict, sha256 of the file)."""
    data = read_bytes(uri, storage_options)
    digest = sha256_hex(data)
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(f"{uri}: expected sha256 {expected_sha256}, got {digest}")
    return parse_state_dict(data, uri), digest


def _short_list(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(model: nn.Module, state: Mapping[str, Any], name: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(
        f"{k} (expected {tuple(own[k].shape)}, got {tuple(state[k].shape)})"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        if misshapen:
            parts.append(f"wrong shapes: {_short_list(misshapen)}")
        raise CheckpointError(f"{name} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
