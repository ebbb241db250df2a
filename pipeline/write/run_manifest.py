"""``_flowlabel.json``: the record of a labeling run beside its data (no secrets in it)."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from typing import Any

from pipeline.storage import filesystem, join, write_atomic

MANIFEST_NAME = "_flowlabel.json"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the output."""
    import av
    import cv2
    import numpy
    import pyarrow
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "pyarrow": pyarrow.__version__, "av": av.__version__, "opencv": cv2.__version__,
            "numpy": numpy.__version__}


def write_manifest(out: str, manifest: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """Replace ``out/_flowlabel.json`` atomically."""
    fs, root = filesystem(out, storage_options)
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    write_atomic(fs, join(root, MANIFEST_NAME), data)


def read_manifest(out: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest at ``out``, or None when there is none."""
    fs, root = filesystem(out, storage_options)
    path = join(root, MANIFEST_NAME)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))
