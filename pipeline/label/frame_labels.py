"""Frame labels: per-pair image classes of frame0, added to the flow rows (``--frame-labels``).

Runs inside the flow labeler actors (:class:`pipeline.label.labeler.Labeler`) on the frames they
already hold, so frames travel through Ray once. The columns are
:data:`pipeline.schema.FRAME_LABEL_COLUMNS`; they exist only when this labeler is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.perceiver_labels import get_labeler


@dataclass(frozen=True)
class FrameLabelOptions:
    """labeler: record name (``perceiver_image_classifier``); checkpoint: its model directory (URI);
    top_k: classes kept per frame; every: label frame0 of every N-th pair of a video (its 1st,
    N+1-th, … pair; the others get nulls); batch_size: frames per forward pass."""

    labeler: str
    checkpoint: str
    checkpoint_sha256: str | None = None
    top_k: int = 5
    every: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        get_labeler(self.labeler, "frame")
        if not self.checkpoint:
            raise ValueError(f"frame labels ({self.labeler}): expected a checkpoint directory, got none")
        if self.top_k < 1:
            raise ValueError(f"frame labels top_k: expected ≥ 1, got {self.top_k}")
        if self.every < 1:
            raise ValueError(f"frame labels every: expected ≥ 1, got {self.every}")
        if self.batch_size < 1:
            raise ValueError(f"frame labels batch_size: expected ≥ 1, got {self.batch_size}")

    def load(
        self, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None
    ) -> FrameLabeler:
        spec = get_labeler(self.labeler, "frame")
        classifier, sha256 = spec.load(
            self.checkpoint,
            sha256=self.checkpoint_sha256,
            k=self.top_k,
            batch_size=self.batch_size,
            device=device,
            storage_options=storage_options,
        )
        return FrameLabeler(classifier, self.every, sha256)


class FrameLabeler:
    """Rows of one chunk (``image0`` N×H×W×3 uint8, ``ordinal``) → the frame-label columns, N×k each."""

    def __init__(self, classifier: Any, every: int, checkpoint_sha256: str):
        self.classifier, self.every, self.checkpoint_sha256 = classifier, every, checkpoint_sha256

    def __call__(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, k = len(rows["ordinal"]), self.classifier.k
        out = {
            "frame_classes": np.full((n, k), -1, np.int32),
            "frame_class_names": np.full((n, k), "", object),
            "frame_class_probs": np.full((n, k), np.nan, np.float32),
        }
        chosen = np.flatnonzero(np.asarray(rows["ordinal"]) % self.every == 0)
        if len(chosen):
            top = self.classifier(np.asarray(rows["image0"])[chosen])
            out["frame_classes"][chosen, : top.ids.shape[1]] = top.ids
            out["frame_class_names"][chosen, : top.ids.shape[1]] = top.names
            out["frame_class_probs"][chosen, : top.ids.shape[1]] = top.probs
        # Fixed-width strings travel through Ray Data as a tensor column; object arrays of str would not.
        out["frame_class_names"] = out["frame_class_names"].astype(str)
        return out
