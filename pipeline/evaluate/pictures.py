"""Pictures of flow, occlusion and confidence, as H×W×3 uint8 RGB arrays, and PNG writing through fsspec.

Flow uses the Middlebury colour coding of Baker et al., "A Database and Evaluation Methodology for
Optical Flow" (IJCV 2011): hue from the direction on a 55-entry colour wheel, saturation from the
magnitude divided by a maximum radius; vectors longer than that radius are darkened to 75 %, and
unknown flow is black.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from pipeline.evaluate.flowio import write_bytes

# Segment lengths of the wheel (red→yellow, yellow→green, green→cyan, cyan→blue, blue→magenta,
# magenta→red); chosen by Baker et al. to be perceptually even.
WHEEL_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))
ROBUST_PERCENTILE = 99.0


def colour_wheel() -> np.ndarray:
    """The 55×3 Middlebury colour wheel, RGB values 0–255 (float64), starting at red."""
    # Each segment ramps one channel while another is held at 255: (held, ramped, rising?).
    ramps = {
        "RY": (0, 1, True),
        "YG": (1, 0, False),
        "GC": (1, 2, True),
        "CB": (2, 1, False),
        "BM": (2, 0, True),
        "MR": (0, 2, False),
    }
    rows = []
    for name, length in WHEEL_SEGMENTS:
        held, ramped, rising = ramps[name]
        step = np.floor(255 * np.arange(length) / length)
        seg = np.zeros((length, 3))
        seg[:, held] = 255
        seg[:, ramped] = step if rising else 255 - step
        rows.append(seg)
    return np.concatenate(rows)


_WHEEL = colour_wheel()
_WHEEL.flags.writeable = False


def robust_max_radius(
    flow: np.ndarray, valid: np.ndarray | None = None, percentile: float = ROBUST_PERCENTILE
) -> float:
    """The ``percentile`` of ‖flow‖ over valid pixels (pixels): a maximum that a few outliers cannot set."""
    radius = np.hypot(flow[..., 0], flow[..., 1])
    known = np.isfinite(radius) if valid is None else (valid & np.isfinite(radius))
    return float(np.percentile(radius[known], percentile)) if known.any() else 0.0


def flow_to_rgb(flow: np.ndarray, valid: np.ndarray | None = None, max_radius: float | None = None) -> np.ndarray:
    """H×W×2 flow (pixels) → H×W×3 uint8 RGB in the Middlebury colour coding.

    ``max_radius`` (pixels) maps to full saturation; None uses :func:`robust_max_radius`. Pixels that
    are not ``valid`` or not finite are black.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow: expected an H×W×2 array, got shape {flow.shape}")
    known = np.isfinite(flow).all(axis=2)
    if valid is not None:
        if valid.shape != flow.shape[:2]:
            raise ValueError(f"valid: expected shape {flow.shape[:2]}, got {valid.shape}")
        known &= valid
    if max_radius is None:
        max_radius = robust_max_radius(flow, known)
    if not max_radius > 0:  # zero or NaN: a still field is drawn white, not divided by zero
        max_radius = 1.0
    # float64 like the reference implementations, so colours match them bit for bit.
    u = np.where(known, flow[..., 0], 0) / max_radius
    v = np.where(known, flow[..., 1], 0) / max_radius
    radius = np.hypot(u, v)

    n = len(_WHEEL)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)  # 0 … n−1 around the wheel
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (position - k0)[..., None]
    wheel = _WHEEL / 255  # scaled before blending, as Middlebury's code does: same rounding
    colour = (1 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    rgb = np.floor(255 * colour).astype(np.uint8)
    rgb[~known] = 0
    return rgb


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """H×W bool (e.g. occlusion, True = occluded) → H×W×3 uint8: white where set, black elsewhere."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an H×W array, got shape {mask.shape}")
    return np.repeat((mask * np.uint8(255))[..., None], 3, axis=2)


def confidence_to_rgb(confidence: np.ndarray) -> np.ndarray:
    """H×W confidence in [0, 1] (or uint8 0–255) → H×W×3 uint8 gray: white = confident, black = not."""
    confidence = np.asarray(confidence)
    if confidence.ndim != 2:
        raise ValueError(f"confidence: expected an H×W array, got shape {confidence.shape}")
    if confidence.dtype == np.uint8:
        gray = confidence
    else:
        gray = np.rint(np.clip(np.nan_to_num(confidence.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def panel(
    frame0: np.ndarray,
    flow: np.ndarray,
    occlusion: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    *,
    valid: np.ndarray | None = None,
    max_radius: float | None = None,
) -> np.ndarray:
    """Side by side: frame0 | flow | occlusion | confidence, as H×(k·W)×3 uint8; absent maps are left out."""
    frame0 = np.asarray(frame0)
    if frame0.ndim != 3 or frame0.shape[2] != 3 or frame0.dtype != np.uint8:
        raise ValueError(f"frame0: expected an H×W×3 uint8 array, got {frame0.dtype} with shape {frame0.shape}")
    tiles = [frame0, flow_to_rgb(flow, valid, max_radius)]
    if occlusion is not None:
        tiles.append(mask_to_rgb(occlusion))
    if confidence is not None:
        tiles.append(confidence_to_rgb(confidence))
    for tile in tiles[1:]:
        if tile.shape != frame0.shape:
            raise ValueError(f"panel: expected every map of size {frame0.shape[:2]}, got {tile.shape[:2]}")
    return np.concatenate(tiles, axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """H×W×3 uint8 RGB (or H×W gray) → PNG bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image: expected H×W×3 or H×W uint8, got {image.dtype} with shape {image.shape}")
    ok, buf = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"image: OpenCV could not encode an array of shape {image.shape}")
    return buf.tobytes()


def write_png(uri: str, image: np.ndarray, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write an RGB or gray uint8 image as PNG to a local path or any fsspec URI."""
    write_bytes(uri, encode_png(image), storage_options)


# ----------------------------------------------------------------------------- composing pictures

CAPTION_BACKGROUND = (32, 32, 32)
CAPTION_TEXT = (255, 255, 255)


def colour_key(size: int) -> np.ndarray:
    """size×size×3 uint8 legend of :func:`flow_to_rgb`: the colour of each direction and length, white
    at the centre (no motion), saturated at the rim (the maximum radius); black outside the disc."""
    if size < 3:
        raise ValueError(f"size: expected ≥ 3 pixels, got {size}")
    c = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = np.stack([(xs - c) / c, (ys - c) / c], axis=-1)  # +x right, +y down, as flow
    return flow_to_rgb(flow, np.hypot(flow[..., 0], flow[..., 1]) <= 1, max_radius=1.0)


def with_colour_key(tile: np.ndarray, fraction: float = 0.22) -> np.ndarray:
    """A copy of a flow picture with :func:`colour_key` in its top-right corner (a fraction of its shorter side)."""
    size = int(min(tile.shape[:2]) * fraction)
    out = tile.copy()
    if size >= 9:
        key = colour_key(size)
        corner = out[2 : 2 + size, -size - 2 : -2]
        inside = key.any(axis=2, keepdims=True)
        corner[...] = np.where(inside, key, corner)
    return out


def with_caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` (H×W×3 uint8) under a dark strip with ``text``; the font scales with the tile width."""
    tile = np.asarray(tile)
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
        raise ValueError(f"tile: expected an H×W×3 uint8 array, got {tile.dtype} with shape {tile.shape}")
    width = tile.shape[1]
    scale = float(np.clip(width / 900, 0.35, 0.9))
    thickness = 1 if scale < 0.6 else 2
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    # Shrink long captions to the tile rather than cut them off.
    if text_w > width - 8:
        scale *= (width - 8) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    strip = np.full((text_h + baseline + 10, width, 3), CAPTION_BACKGROUND, np.uint8)
    cv2.putText(strip, text, (4, text_h + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, CAPTION_TEXT, thickness, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def tile_grid(tiles: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tiles (H×W×3 uint8, any sizes) in rows of ``columns``, each cell the size of the largest tile,
    separated by ``gap`` black pixels; empty cells stay black."""
    if not tiles or columns < 1:
        raise ValueError(f"expected at least one tile and ≥ 1 column, got {len(tiles)} tiles, {columns} columns")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    out = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), np.uint8)
    for i, tile in enumerate(tiles):
        y, x = (i // columns) * (h + gap), (i % columns) * (w + gap)
        out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return out


def encode_mp4(frames: list[np.ndarray], fps: float = 10.0) -> bytes:
    """H×W×3 uint8 RGB pictures (one size) → H.264 MP4 bytes (yuv420p, so players everywhere read it).

    Odd sizes are padded by one black row / column: 4:2:0 chroma needs even dimensions.
    """
    import fractions
    import io

    import av

    if not frames:
        raise ValueError("encode_mp4: expected at least one frame, got none")
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape or f.dtype != np.uint8 for f in frames):
        raise ValueError(f"encode_mp4: expected uint8 frames of one shape {frames[0].shape}")
    even_h, even_w = h + h % 2, w + w % 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for image in frames:
            padded = np.zeros((even_h, even_w, 3), np.uint8)
            padded[:h, :w] = image
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def error_to_rgb(error: np.ndarray, max_error: float, valid: np.ndarray | None = None) -> np.ndarray:
    """H×W end-point error (pixels) → H×W×3 uint8 heat map (OpenCV's inferno colour map: black at 0,
    yellow at ``max_error`` and above); pixels that are not ``valid`` are black."""
    error = np.asarray(error, dtype=np.float32)
    if error.ndim != 2:
        raise ValueError(f"error: expected an H×W array, got shape {error.shape}")
    if not max_error > 0:
        raise ValueError(f"max_error: expected a positive number of pixels, got {max_error}")
    level = np.rint(np.clip(np.nan_to_num(error) / max_error, 0, 1) * 255).astype(np.uint8)
    rgb = cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)[..., ::-1].copy()
    if valid is not None:
        rgb[~np.asarray(valid, bool)] = 0
    return rgb
