"""How the label arrays are stored: the flow encodings of the output (``--flow-encoding``).

``int16`` (default): flow as round(flow × flow_scale) in int16, flow_scale = 64 per row: the
precision of KITTI's flow PNGs (steps of 1/64 px, error ≤ 1/128 px) over ±511 px; a row whose
|flow| goes beyond gets the largest power of two that fits (coarser steps, never clipping), and a
non-finite value is stored as −32768 (read back as NaN). Confidence as round(confidence × 255)
in uint8. In Parquet the flow list of a row is channel-planar (all u, then all v: 2×H×W) and
delta-encoded, so neighbouring pixels of one channel follow each other: with zstd it takes
25-45 % fewer bytes than the same values stored H×W×2 (byte-stream-split), measured on the
real test videos.

``float16``: flow and confidence in float16, exactly as the labeler hands them over (H×W×2
flow in Parquet), byte-stream-split encoded. Its steps grow with the value: 1/64 px from 16 px,
1/8 px from 128 px.

Occlusion is uint8 0/1 in both (plain + zstd: a few hundredths of a byte per pixel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # the decode and write stages never import torch (zero-GPU tasks may see GPUs)
    import torch

FLOW_ENCODINGS = ("int16", "float16")
DEFAULT_FLOW_ENCODING = "int16"
FLOW_SCALE = 64  # int16 units per pixel
INVALID_FLOW = np.iinfo(np.int16).min  # a non-finite flow value; finite ones stay within ±32767
_INT16_MAX = np.iinfo(np.int16).max

# encoding → array column → (numpy dtype, arrow type) as stored
STORED_TYPES = {
    "int16": {
        "flow": (np.int16, pa.int16()),
        "occlusion": (np.uint8, pa.uint8()),
        "confidence": (np.uint8, pa.uint8()),
    },
    "float16": {
        "flow": (np.float16, pa.float16()),
        "occlusion": (np.uint8, pa.uint8()),
        "confidence": (np.float16, pa.float16()),
    },
}
SCALE_COLUMN = "flow_scale"  # int32 per row, int16 encoding only: flow = stored / flow_scale
PEAK_KEY = "flow_peak"  # encode_on_device's per-row largest |flow|, checked on the host, never stored


def check_encoding(encoding: str) -> str:
    if encoding not in FLOW_ENCODINGS:
        raise ValueError(f"flow_encoding: expected one of {FLOW_ENCODINGS}, got {encoding!r}")
    return encoding


def transfer_dtype(encoding: str) -> np.dtype:
    """What the labeler's ``label_pairs`` should return for ``encoding``: float32 for int16, so
    the flow is rounded once to the 1/64 px grid (float16 first would add up to 1/32 px at
    64-128 px); float16 for float16 (stored as is)."""
    return np.dtype(np.float32 if check_encoding(encoding) == "int16" else np.float16)


def quantize_flow(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N×H×W×2 float flow (pixels) → (N×H×W×2 int16 = round(flow × scale), N int32 scales).

    scale is :data:`FLOW_SCALE` unless a row's largest |value| would overflow int16; then the
    largest power of two that fits. Non-finite values become :data:`INVALID_FLOW`.
    """
    flow = np.asarray(flow, np.float32)
    n = flow.shape[0]
    peak = np.abs(flow).reshape(n, -1).max(axis=1, initial=0.0)
    finite = np.isfinite(peak)
    if not finite.all():
        peak = np.where(np.isfinite(flow), np.abs(flow), 0).reshape(n, -1).max(axis=1, initial=0.0)
    scale = np.full(n, FLOW_SCALE, np.int32)
    large = peak * FLOW_SCALE > _INT16_MAX
    if large.any():
        # The largest power of two p with peak · p ≤ 32767: frexp's exponent is exact where log2 may round up.
        scale[large] = np.maximum(1, np.ldexp(1.0, np.frexp(_INT16_MAX / peak[large])[1] - 1)).astype(np.int32)
        if (peak[large] * scale[large] > _INT16_MAX).any():
            raise ValueError(
                f"flow: expected |values| ≤ {_INT16_MAX} px for int16 storage, got {peak.max():.0f} px; "
                "use flow_encoding='float16'"
            )
    stored = np.rint(flow * scale.astype(np.float32).reshape((n,) + (1,) * (flow.ndim - 1)))
    if not finite.all():
        stored = np.where(np.isfinite(stored), stored, INVALID_FLOW)
    return stored.astype(np.int16), scale


def encode_on_device(
    flow: torch.Tensor, occlusion: torch.Tensor, confidence: torch.Tensor, encoding: str
) -> dict[str, torch.Tensor]:
    """The stored arrays of ``encoding``, computed where the tensors are (the GPU in a labeler), so
    only the stored bytes cross to the host: the same values as :func:`encode_labels` on the host.

    flow: N×2×H×W float (pixels); occlusion: N×H×W bool; confidence: N×H×W float in (0, 1].
    Returns {'flow': N×H×W×2, 'occlusion': N×H×W uint8, 'confidence': N×H×W} in the stored dtypes
    (for int16 plus ``flow_scale``, N int32, and ``flow_peak``, N float32 largest finite |value|:
    :func:`check_device_encoding` raises on the host where int16 could not hold a row).
    """
    import torch

    flow = flow.permute(0, 2, 3, 1)
    out = {"occlusion": occlusion.to(torch.uint8)}
    if check_encoding(encoding) == "float16":
        return {**out, "flow": flow.to(torch.float16).contiguous(), "confidence": confidence.to(torch.float16)}
    flow = flow.float()
    n = flow.shape[0]
    magnitude = flow.abs().reshape(n, -1)
    peak = magnitude.nan_to_num(0.0, posinf=0.0).amax(1) if n and magnitude.numel() else flow.new_zeros(n)
    # Per row: 64, or the largest power of two p with peak · p ≤ 32767 (as quantize_flow; frexp is exact).
    fits = torch.ldexp(torch.ones_like(peak), torch.frexp(_INT16_MAX / peak).exponent - 1).clamp_(min=1)
    scale = torch.where(peak * FLOW_SCALE > _INT16_MAX, fits, torch.full_like(peak, FLOW_SCALE))
    stored = torch.round(flow * scale.view(n, 1, 1, 1))
    stored = torch.where(stored.isfinite(), stored, torch.full_like(stored, INVALID_FLOW))
    return {
        **out,
        "flow": stored.clamp_(-_INT16_MAX - 1, _INT16_MAX).to(torch.int16),
        SCALE_COLUMN: scale.to(torch.int32),
        PEAK_KEY: peak,
        "confidence": torch.round(confidence.float().clamp(0, 1) * 255).to(torch.uint8),
    }


def check_device_encoding(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host arrays of :func:`encode_on_device` → the stored arrays; raises as :func:`quantize_flow`
    for a row whose flow int16 cannot hold (|flow| > 32767 px)."""
    peak = arrays.pop(PEAK_KEY, None)
    if peak is not None and (peak * arrays[SCALE_COLUMN] > _INT16_MAX).any():
        raise ValueError(
            f"flow: expected |values| ≤ {_INT16_MAX} px for int16 storage, got {peak.max():.0f} px; "
            "use flow_encoding='float16'"
        )
    return arrays


def dequantize_flow(stored: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quantize_flow`: float32 flow in pixels, NaN where invalid."""
    stored = np.asarray(stored)
    flow = stored.astype(np.float32) / np.asarray(scale, np.float32).reshape((-1,) + (1,) * (stored.ndim - 1))
    invalid = stored == INVALID_FLOW
    if invalid.any():
        flow[invalid] = np.nan
    return flow


def encode_labels(labels: Mapping[str, np.ndarray], encoding: str) -> dict[str, np.ndarray]:
    """{'flow': N×H×W×2, 'occlusion': N×H×W, 'confidence': N×H×W} → the stored arrays of
    ``encoding`` (plus ``flow_scale`` for int16). Arrays already in that encoding pass through:
    the labeler encodes before the data crosses Ray, the sink may get either."""
    check_encoding(encoding)
    flow, confidence = np.asarray(labels["flow"]), np.asarray(labels["confidence"])
    out = {"occlusion": np.asarray(labels["occlusion"], np.uint8)}
    if encoding == "float16":
        if flow.dtype.kind != "f" or confidence.dtype.kind != "f":
            raise ValueError(
                f"float16 encoding: expected float flow and confidence, got {flow.dtype} and "
                f"{confidence.dtype} (already stored in another encoding?)"
            )
        return {
            **out,
            "flow": flow.astype(np.float16, copy=False),
            "confidence": confidence.astype(np.float16, copy=False),
        }
    if flow.dtype == np.int16:
        if SCALE_COLUMN not in labels or confidence.dtype != np.uint8:
            raise ValueError(
                f"int16 flow: expected a {SCALE_COLUMN} column and uint8 confidence, got "
                f"{sorted(labels)} and {confidence.dtype}"
            )
        return {**out, "flow": flow, SCALE_COLUMN: np.asarray(labels[SCALE_COLUMN], np.int32), "confidence": confidence}
    if flow.dtype.kind != "f":
        raise ValueError(f"flow: expected float pixels or int16 (already encoded), got {flow.dtype}")
    stored, scale = quantize_flow(flow)
    return {
        **out,
        "flow": stored,
        SCALE_COLUMN: scale,
        "confidence": np.rint(np.clip(confidence.astype(np.float32, copy=False), 0, 1) * 255).astype(np.uint8),
    }


def check_stored(rows: Mapping[str, np.ndarray], encoding: str) -> None:
    """Raise ValueError unless the arrays of ``rows`` are already stored in ``encoding`` (what
    :func:`encode_labels` and the labeler give): the files are written from them as they are."""
    check_encoding(encoding)
    for name, (dtype, _) in STORED_TYPES[encoding].items():
        got = np.asarray(rows[name]).dtype
        if got != dtype:
            raise ValueError(
                f"{name}: expected the stored {encoding} array ({np.dtype(dtype)}), got {got}; "
                "pass the labels through encode_labels first"
            )
    if encoding == "int16" and SCALE_COLUMN not in rows:
        raise ValueError(f"int16 flow: expected a {SCALE_COLUMN} column beside it, got columns {sorted(rows)}")


def decode_labels(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Stored arrays (either encoding, told apart by the flow dtype) → flow in pixels and
    confidence in [0, 1] (float32 from int16 / uint8, float16 as stored), occlusion as is."""
    out: dict[str, np.ndarray] = {}
    if "flow" in columns:
        flow = np.asarray(columns["flow"])
        out["flow"] = dequantize_flow(flow, columns[SCALE_COLUMN]) if flow.dtype == np.int16 else flow
    if "confidence" in columns:
        confidence = np.asarray(columns["confidence"])
        out["confidence"] = confidence.astype(np.float32) / 255 if confidence.dtype == np.uint8 else confidence
    if "occlusion" in columns:
        out["occlusion"] = np.asarray(columns["occlusion"])
    return out


def flow_magnitude_sum(stored: Mapping[str, np.ndarray]) -> float:
    """Σ |flow| in pixels over every pixel of stored rows, non-finite values left out."""
    flow = np.asarray(stored["flow"])
    magnitude = np.hypot(flow[..., 0], flow[..., 1], dtype=np.float32)
    if flow.dtype != np.int16:
        return float(magnitude[np.isfinite(magnitude)].sum(dtype=np.float64))  # NaN and ±inf alike
    if (flow == INVALID_FLOW).any():
        magnitude[(flow[..., 0] == INVALID_FLOW) | (flow[..., 1] == INVALID_FLOW)] = 0
    return float((magnitude.reshape(len(flow), -1).sum(1) / np.asarray(stored[SCALE_COLUMN], np.float64)).sum())


def parquet_options(schema: pa.Schema, encoding: str) -> dict[str, Any]:
    """``pq.write_table`` arguments for a file of ``schema``, chosen for bytes and for the
    writer's CPU (CPU the labelers lack): int16 flow delta-encoded, float16 flow byte-stream-split
    (flow values overflow a dictionary); confidence byte-stream-split in both encodings; the 0/1
    occlusion plain (zstd gets it within 0.02 B/px of a dictionary, in 40 % less time);
    statistics only for the per-row columns (nobody filters on the min/max of the arrays)."""
    check_encoding(encoding)
    # uint8 confidence is an INT32 column in Parquet: byte-stream-split leaves its three zero
    # bytes in runs for zstd, 0.7 % smaller than a dictionary on the real videos and 20 % less
    # of the writer's Parquet time (BENCHMARKS.md, optimisation log).
    special = {
        "flow.list.element": "DELTA_BINARY_PACKED" if encoding == "int16" else "BYTE_STREAM_SPLIT",
        "occlusion.list.element": "PLAIN",
        "confidence.list.element": "BYTE_STREAM_SPLIT",
    }
    leaves = {f.name: f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in schema}
    return {
        "use_dictionary": [leaf for leaf in leaves.values() if leaf not in special],
        "write_statistics": [name for name, leaf in leaves.items() if leaf == name],
        "column_encoding": {leaf: special[leaf] for leaf in leaves.values() if leaf in special},
    }
