"""Classical OpenCV flow models that need no weights: DIS (Kroeger et al. 2016) and Farnebäck (2003)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .contract import FlowModel, PairFlows, frames_used
from .registry import ModelSpec

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


_LUMA = np.float32([0.299, 0.587, 0.114])  # BT.601, as cv2.COLOR_RGB2GRAY


def to_gray_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W float RGB in [0, 255] → B×H×W uint8 luma, round(0.299 R + 0.587 G + 0.114 B).

    Works on the H×W×3 view, which the labeler's frames (decoded H×W×3 uint8, converted to
    float channels-last) give without a copy, in float32 with the sum in R, G, B order: the
    same luma, bit for bit, as the torch expression this replaced, at a tenth of its time
    (DIS's scores depend on single grey levels).
    """
    rgb = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    gray = np.empty(rgb.shape[:3], np.uint8)
    for k, image in enumerate(rgb):
        r, g, b = cv2.split(image)  # contiguous planes: numpy is slow on the interleaved ones
        luma = np.multiply(r, _LUMA[0], out=r)
        luma += np.multiply(g, _LUMA[1], out=g)
        luma += np.multiply(b, _LUMA[2], out=b)
        gray[k] = np.clip(np.rint(luma, out=luma), 0, 255, out=luma)
    return gray


class OpenCVFlow(FlowModel):
    """Runs an OpenCV dense-flow algorithm pair by pair on the CPU, whatever the input device."""

    def _flow_one(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        return self._flows(to_gray_uint8(image0), to_gray_uint8(image1), image0.device)

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Each frame is converted to gray once for both directions (the default would stack
        # the pairs and convert each frame twice: 15 % of DIS's time at 960×540).
        gray0, gray1 = to_gray_uint8(image0), to_gray_uint8(image1)
        return self._flows(gray0, gray1, image0.device), self._flows(gray1, gray0, image0.device)

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        # Each frame of the run is converted to grey once, across its pairs and both directions.
        frames, (index0, index1) = frames_used(frames, index0, index1)
        gray = to_gray_uint8(frames)
        gray0, gray1 = gray[index0.cpu().numpy()], gray[index1.cpu().numpy()]
        return PairFlows(self._flows(gray0, gray1, frames.device), self._flows(gray1, gray0, frames.device))

    def _flows(self, gray0: np.ndarray, gray1: np.ndarray, device: torch.device) -> torch.Tensor:
        """B×H×W uint8 pairs → B×2×H×W float32 flow on ``device``."""
        flows = np.stack([self._flow_one(a, b) for a, b in zip(gray0, gray1)])  # B×H×W×2
        return torch.from_numpy(flows).permute(0, 3, 1, 2).to(device)


class DISFlow(OpenCVFlow):
    """Dense Inverse Search; ``preset`` is one of ultrafast, fast, medium."""

    def __init__(self, *, preset: str = "medium"):
        super().__init__()
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset: expected one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self._dis = None

    def _flow_one(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        if self._dis is None:  # created lazily: cv2 objects do not pickle, models cross Ray by value
            self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
        return self._dis.calc(gray0, gray1, None)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_dis"] = None
        return state


@dataclass(frozen=True)
class FarnebackParams:
    pyr_scale: float = 0.5
    levels: int = 5
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


class FarnebackFlow(OpenCVFlow):
    """Farnebäck polynomial-expansion flow with OpenCV's recommended parameters."""

    def __init__(self, **params: float):
        super().__init__()
        self.params = FarnebackParams(**params)

    def _flow_one(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        p = self.params
        return cv2.calcOpticalFlowFarneback(
            gray0, gray1, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, 0
        )


SPECS = (
    ModelSpec(
        name="dis",
        builder=DISFlow,
        description="OpenCV Dense Inverse Search (Kroeger et al., ECCV 2016); CPU, no weights",
        default_config={"preset": "medium"},
        needs_weights=False,
    ),
    ModelSpec(
        name="farneback",
        builder=FarnebackFlow,
        description="OpenCV Farnebäck polynomial expansion (SCIA 2003); CPU, no weights",
        default_config={},
        needs_weights=False,
    ),
)
