"""``_flowlabel.json``: the record of a labeling run beside its data (no secrets in it)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from datetime import datetime, timezone
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

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "av": av.__version__,
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
    }


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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


class RunProgress:
    """``_flowlabel.json`` kept current during a run (atomic replace, at most every ``every_s``):
    status, units planned and settled and pairs labeled so far, then the final counts. A run plans its
    inputs as it goes: ``units_total`` counts the units planned so far."""

    def __init__(
        self,
        out: str,
        manifest: dict[str, Any],
        storage_options: Mapping[str, Any],
        every_s: float = 10.0,
    ):
        self._out, self._manifest, self._so = out, manifest, storage_options
        self._total = self._before = 0
        self._every = every_s
        self._pairs, self._last = 0, 0.0

    def planned(self, units: int, settled_before: int) -> None:
        """``units`` more were planned, ``settled_before`` of them settled by an earlier run."""
        self._total += units
        self._before += settled_before

    def write(self, status: str, counts: Mapping[str, Any] | None = None, **fields: Any) -> None:
        now = time.time()
        body = {
            **self._manifest,
            "status": status,
            "updated_at": utc_now(),
            "seconds": round(now - datetime.fromisoformat(self._manifest["started_at"]).timestamp(), 3),
        }
        body["counts"] = (
            dict(counts) if counts else {"units_total": self._total, "pairs": self._pairs, "units_done": self._before}
        )
        body.update(fields)
        write_manifest(self._out, body, self._so)
        self._last = now

    def update(self, pairs: int, settled_this_run: int) -> None:
        self._pairs += pairs
        if time.time() - self._last >= self._every:
            self.write(
                "running",
                {"units_total": self._total, "units_done": self._before + settled_this_run, "pairs": self._pairs},
            )
