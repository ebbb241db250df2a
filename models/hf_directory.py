"""HuggingFace model directories (config.json + weights) from a local path or any fsspec URI, offline.

Models whose checkpoints carry their own architecture (``config.json``) are loaded through
``transformers`` rather than re-implemented: the directory is read from wherever it lives
(copied to a temporary local folder first when it is remote, only the files needed), its
weights file is hashed and verified, and ``from_pretrained`` runs with ``local_files_only=True``
so that nothing is ever fetched from the Hub. Loading is strict: a missing, unexpected or
misshapen weight raises :class:`~models.checkpoint.CheckpointError` instead of transformers'
warning and random initialization.

``transformers`` is imported lazily: importing :mod:`models` stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from .checkpoint import CheckpointError

CONFIG_FILE = "config.json"
# Preferred first: safetensors never unpickles; transformers also prefers it when both are present.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SIDE_FILES = ("preprocessor_config.json",)


@dataclass(frozen=True)
class Pretrained:
    """A loaded directory: the model in eval mode, the sha256 of its weights file, its name
    (``model.safetensors`` or ``pytorch_model.bin``) and the side files found (parsed JSON)."""

    model: torch.nn.Module
    sha256: str
    weights_file: str
    side_files: Mapping[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path, block: int = 2**22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def local_directory(uri: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """A local folder holding the model directory at ``uri``: the folder itself when it is local,
    else a temporary copy of config.json, one weights file and the side files (removed on exit)."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    if not fs.isdir(path):
        raise FileNotFoundError(
            f"checkpoint directory not found: {uri} (expected a folder with {CONFIG_FILE} "
            f"and one of {list(WEIGHT_FILES)})"
        )
    if isinstance(fs, LocalFileSystem):
        yield Path(path)
        return
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    weights = next((name for name in WEIGHT_FILES if name in names), None)
    wanted = [name for name in (CONFIG_FILE, weights, *SIDE_FILES) if name and name in names]
    with tempfile.TemporaryDirectory(prefix="flowlabel-hf-") as tmp:
        for name in wanted:
            fs.get_file(posixpath.join(path, name), str(Path(tmp) / name))
        yield Path(tmp)


def weights_file(folder: Path, uri: str) -> Path:
    """The directory's single-file weights, safetensors preferred."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{uri}: expected a HuggingFace model directory with {CONFIG_FILE} and one of "
        f"{list(WEIGHT_FILES)} (sharded checkpoints are not supported), got {found}"
    )


def load_pretrained(
    model_class: type,
    uri: str,
    *,
    expected_sha256: str | None = None,
    equivalent_sha256: Collection[str] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> Pretrained:
    """Load ``model_class`` (a ``transformers`` PreTrainedModel) from the directory at ``uri``.

    ``expected_sha256`` is checked against the weights file; ``equivalent_sha256`` lists digests
    accepted in its place (the same release serialized another way, e.g. its pytorch_model.bin
    beside the model.safetensors whose digest the registry records).
    """
    with local_directory(uri, storage_options) as folder:
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"{uri}: expected a HuggingFace model directory with {CONFIG_FILE}, got none")
        weights = weights_file(folder, uri)
        digest = file_sha256(weights)
        accepted = {d.lower() for d in (expected_sha256, *equivalent_sha256) if d}
        if expected_sha256 and digest not in accepted:
            raise CheckpointError(f"{uri}/{weights.name}: expected sha256 {expected_sha256}, got {digest}")
        config = json.loads((folder / CONFIG_FILE).read_text())
        architectures = config.get("architectures") or []
        if architectures and model_class.__name__ not in architectures:
            raise CheckpointError(
                f"{uri}: expected a {model_class.__name__} checkpoint, its {CONFIG_FILE} names {architectures}"
            )
        model, info = model_class.from_pretrained(
            str(folder),
            local_files_only=True,
            output_loading_info=True,
            use_safetensors=weights.suffix == ".safetensors",
            dtype=torch.float32,
        )
        side = {name: json.loads((folder / name).read_text()) for name in SIDE_FILES if (folder / name).is_file()}
    problems = {
        kind: sorted(map(str, info.get(kind) or ()))
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        details = "; ".join(
            f"{kind.replace('_', ' ')}: {', '.join(keys[:10])}" + (" …" if len(keys) > 10 else "")
            for kind, keys in problems.items()
        )
        raise CheckpointError(f"{uri} does not match {model_class.__name__}; {details}")
    return Pretrained(model.eval(), digest, weights.name, side)
