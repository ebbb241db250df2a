"""Reading and writing optical-flow ground-truth formats and benchmark images, through fsspec.

Every reader returns numpy arrays in one convention:
  flow  H×W×2 float32, pixels, frame0 → frame1, channel 0 = u (+x, right), 1 = v (+y, down);
  valid H×W bool, True where the ground truth is defined. Flow at invalid pixels is set to 0,
        so that arithmetic on the whole array stays finite (the raw files hold 1e10, NaN or garbage there);
  image H×W×3 uint8 RGB.

Formats:
  .flo   Middlebury (Baker et al., IJCV 2011): float32 magic 202021.25, int32 width, height,
         then height·width·(u, v) float32, little-endian. Unknown flow is |u| or |v| > 1e9.
  .png   KITTI 16-bit flow (Geiger et al.; also HD1K): R = u·64 + 2¹⁵, G = v·64 + 2¹⁵, B = valid.
  .pfm   Portable float map (FlyingThings3D optical_flow): "PF" (3 channels) or "Pf" (1), a negative
         scale for little-endian data, rows stored bottom to top.

URIs are local paths or any fsspec URI (s3://, memory://, …); ``storage_options`` go to the filesystem.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from pipeline.storage import filesystem, retry_io, write_atomic

FLO_MAGIC = 202021.25
# Middlebury's flowIO.h: values above this mark unknown flow; its writers use 1e10.
UNKNOWN_FLOW_THRESHOLD = 1e9
UNKNOWN_FLOW_VALUE = 1e10
KITTI_SCALE = 64.0
KITTI_OFFSET = 2.0**15

_FLO_HEADER = np.dtype([("magic", "<f4"), ("width", "<i4"), ("height", "<i4")])
_PFM_HEADER = re.compile(rb"\A(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


# ----------------------------------------------------------------------------- bytes through fsspec


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole file at ``uri``; FileNotFoundError names the URI."""
    fs, path = filesystem(uri, storage_options)
    try:
        return retry_io(lambda: fs.cat_file(path))  # one GET on object stores, no size lookup first
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {uri}") from None


def write_bytes(uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` to ``uri`` all at once (one PUT on object stores, a rename on local disk)."""
    fs, path = filesystem(uri, storage_options)
    write_atomic(fs, path, data)


def _suffix(uri: str) -> str:
    return posixpath.splitext(uri.split("?", 1)[0])[1].lower()


# ----------------------------------------------------------------------------- checks


def _check_flow(flow: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow: expected an H×W×2 array, got shape {flow.shape}")
    if valid is None:
        valid = np.isfinite(flow).all(axis=2)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != flow.shape[:2]:
        raise ValueError(f"valid: expected shape {flow.shape[:2]}, got {valid.shape}")
    return flow.astype(np.float32, copy=False), valid


def _known(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flow with unknown pixels zeroed, valid) for flow that marks unknown pixels by huge or NaN values."""
    with np.errstate(invalid="ignore"):
        valid = (np.abs(flow) <= UNKNOWN_FLOW_THRESHOLD).all(axis=2)  # NaN compares False → invalid
    flow = np.where(valid[..., None], flow, np.float32(0)).astype(np.float32, copy=False)
    return flow, valid


# ----------------------------------------------------------------------------- Middlebury .flo


def decode_flo(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """.flo bytes → (flow H×W×2 float32, valid H×W bool); unknown flow (|u| or |v| > 1e9, NaN) is invalid."""
    if len(data) < _FLO_HEADER.itemsize:
        raise ValueError(f".flo: expected at least a 12-byte header, got {len(data)} bytes")
    header = np.frombuffer(data, _FLO_HEADER, count=1)[0]
    if header["magic"] != np.float32(FLO_MAGIC):
        raise ValueError(f".flo: expected magic {FLO_MAGIC}, got {float(header['magic'])!r}")
    width, height = int(header["width"]), int(header["height"])
    expected = _FLO_HEADER.itemsize + 8 * width * height
    if width <= 0 or height <= 0 or len(data) != expected:
        raise ValueError(f".flo: expected {expected} bytes for {width}×{height}, got {len(data)}")
    flow = np.frombuffer(data, "<f4", count=2 * width * height, offset=_FLO_HEADER.itemsize)
    return _known(flow.reshape(height, width, 2).astype(np.float32))


def encode_flo(flow: np.ndarray, valid: np.ndarray | None = None) -> bytes:
    """H×W×2 flow → .flo bytes; invalid pixels (``~valid``, default: non-finite) are written as 1e10."""
    flow, valid = _check_flow(flow, valid)
    height, width = flow.shape[:2]
    body = np.where(valid[..., None], flow, np.float32(UNKNOWN_FLOW_VALUE)).astype("<f4")
    header = np.array([(FLO_MAGIC, width, height)], dtype=_FLO_HEADER)
    return header.tobytes() + body.tobytes()


# ----------------------------------------------------------------------------- KITTI 16-bit PNG


def decode_kitti_flow(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """KITTI flow PNG bytes → (flow H×W×2 float32, valid H×W bool); u = (R − 2¹⁵)/64, valid = B > 0."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise ValueError("KITTI flow: expected a PNG file, could not decode it")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"KITTI flow: expected a 16-bit 3-channel PNG, got {bgr.dtype} with shape {bgr.shape}")
    valid = bgr[..., 0] > 0
    # OpenCV returns B, G, R; R holds u and G holds v. Integers and /64 are exact in float32.
    uv = bgr[..., [2, 1]].astype(np.float32)
    flow = (uv - np.float32(KITTI_OFFSET)) / np.float32(KITTI_SCALE)
    flow[~valid] = 0
    return flow, valid


def encode_kitti_flow(flow: np.ndarray, valid: np.ndarray | None = None) -> bytes:
    """H×W×2 flow → KITTI 16-bit PNG bytes, rounded to 1/64 px and clipped to ±512 px as the devkit does.

    Invalid pixels are written as (0, 0, 0), the devkit's representation.
    """
    flow, valid = _check_flow(flow, valid)
    safe = np.where(valid[..., None], flow, np.float32(0))
    uv = np.clip(np.rint(safe.astype(np.float64) * KITTI_SCALE + KITTI_OFFSET), 0, 65535).astype(np.uint16)
    bgr = np.empty(flow.shape[:2] + (3,), np.uint16)
    bgr[..., 0] = valid
    bgr[..., 1] = uv[..., 1]
    bgr[..., 2] = uv[..., 0]
    bgr[~valid] = 0
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"KITTI flow: OpenCV could not encode an array of shape {bgr.shape}")
    return buf.tobytes()


# ----------------------------------------------------------------------------- PFM


def decode_pfm(data: bytes) -> np.ndarray:
    """PFM bytes → float32 array H×W (``Pf``) or H×W×3 (``PF``), rows top to bottom."""
    match = _PFM_HEADER.match(data)
    if match is None:
        raise ValueError(f"PFM: expected a header 'PF|Pf <width> <height> <scale>', got {data[:32]!r}")
    kind, width, height, scale = match.group(1), int(match.group(2)), int(match.group(3)), float(match.group(4))
    channels = 3 if kind == b"PF" else 1
    # The sign of the scale is the byte order: negative = little-endian (PFM specification).
    dtype = "<f4" if scale < 0 else ">f4"
    count = width * height * channels
    if len(data) - match.end() < 4 * count:
        got = len(data) - match.end()
        raise ValueError(f"PFM: expected {4 * count} data bytes for {width}×{height}×{channels}, got {got}")
    array = np.frombuffer(data, dtype, count=count, offset=match.end())
    array = array.reshape((height, width, channels) if channels == 3 else (height, width))
    return np.ascontiguousarray(array[::-1], dtype=np.float32)


def encode_pfm(array: np.ndarray) -> bytes:
    """H×W or H×W×3 float array → little-endian PFM bytes (rows bottom to top, scale −1)."""
    array = np.asarray(array)
    if array.ndim == 2:
        kind = b"Pf"
    elif array.ndim == 3 and array.shape[2] == 3:
        kind = b"PF"
    else:
        raise ValueError(f"PFM: expected an H×W or H×W×3 array, got shape {array.shape}")
    height, width = array.shape[:2]
    header = kind + b"\n%d %d\n-1\n" % (width, height)
    return header + np.ascontiguousarray(array[::-1], dtype="<f4").tobytes()


def decode_pfm_flow(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """FlyingThings3D flow PFM bytes → (flow H×W×2, valid H×W); the third (zero) channel is dropped.

    A few FlyingThings3D flows hold NaN or huge values; those pixels are invalid.
    """
    array = decode_pfm(data)
    if array.ndim != 3:
        raise ValueError(f"PFM flow: expected a 3-channel 'PF' file, got shape {array.shape}")
    return _known(array[..., :2])


def encode_pfm_flow(flow: np.ndarray, valid: np.ndarray | None = None) -> bytes:
    """H×W×2 flow → 3-channel PFM bytes as FlyingThings3D stores it (third channel 0, invalid = NaN)."""
    flow, valid = _check_flow(flow, valid)
    out = np.zeros(flow.shape[:2] + (3,), np.float32)
    out[..., :2] = np.where(valid[..., None], flow, np.float32(np.nan))
    return encode_pfm(out)


# ----------------------------------------------------------------------------- images and masks


def decode_image(data: bytes) -> np.ndarray:
    """PNG / PPM / JPEG bytes → H×W×3 uint8 RGB.

    Gray is replicated to three channels, alpha is dropped, 16-bit is reduced to its high byte
    (as OpenCV's own 8-bit conversion does). EXIF orientation is not applied.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("image: expected PNG, PPM or JPEG bytes, could not decode them")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"image: expected 8- or 16-bit integer pixels, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels in (3, 4):
        return np.ascontiguousarray(image[..., 2::-1])  # B, G, R[, A] → R, G, B
    raise ValueError(f"image: expected 1, 3 or 4 channels, got {channels}")


def decode_mask(data: bytes) -> np.ndarray:
    """Binary mask image bytes (e.g. Sintel occlusions/invalid, 0 or 255) → H×W bool, True where set."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("mask: expected an image file, could not decode it")
    half = 128 if image.dtype == np.uint8 else 32768
    if image.ndim == 3:
        image = image[..., :3].max(axis=2)
    return image >= half


# ----------------------------------------------------------------------------- by URI

_FLOW_DECODERS = {".flo": decode_flo, ".png": decode_kitti_flow, ".pfm": decode_pfm_flow}
_FLOW_ENCODERS = {".flo": encode_flo, ".png": encode_kitti_flow, ".pfm": encode_pfm_flow}


def decode_flow(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode flow bytes by the suffix of ``name``: .flo, .png (KITTI) or .pfm."""
    suffix = _suffix(name)
    if suffix not in _FLOW_DECODERS:
        raise ValueError(f"{name}: expected a flow file ending in {sorted(_FLOW_DECODERS)}, got {suffix!r}")
    try:
        return _FLOW_DECODERS[suffix](data)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def read_flow(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flow H×W×2 float32 pixels, valid H×W bool) from a .flo, KITTI .png or .pfm file."""
    return decode_flow(read_bytes(uri, storage_options), uri)


def write_flow(
    uri: str,
    flow: np.ndarray,
    valid: np.ndarray | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write H×W×2 flow as .flo, KITTI .png or .pfm, chosen by the suffix of ``uri``."""
    suffix = _suffix(uri)
    if suffix not in _FLOW_ENCODERS:
        raise ValueError(f"{uri}: expected a flow file ending in {sorted(_FLOW_ENCODERS)}, got {suffix!r}")
    write_bytes(uri, _FLOW_ENCODERS[suffix](flow, valid), storage_options)


def read_image(uri: str, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """H×W×3 uint8 RGB image from a PNG, PPM or JPEG file."""
    try:
        return decode_image(read_bytes(uri, storage_options))
    except ValueError as exc:
        raise ValueError(f"{uri}: {exc}") from None


def read_mask(uri: str, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """H×W bool mask from a binary mask image."""
    try:
        return decode_mask(read_bytes(uri, storage_options))
    except ValueError as exc:
        raise ValueError(f"{uri}: {exc}") from None
