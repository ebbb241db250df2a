"""``flowlabel viz``: pictures a person can read, of labels, benchmark pairs and flow files.

Three sources, one look (Middlebury flow colours with a colour key, occlusion white, confidence
white = 1, a caption on every tile):

  viz labels URI   chunks written by ``flowlabel label`` (Parquet or npz; a file or the whole output):
                   per video, PNG panels frame0 | flow | occlusion | confidence, and with --mp4 one
                   MP4 of every pair in order (frames decoded again from each row's ``source``);
  viz pair BENCH   a benchmark pair: frames, ground truth and, with --model, the prediction, its
                   end-point error, occlusion and confidence;
  viz flow FILE    a .flo / KITTI .png / .pfm flow file, optionally beside its first frame.
"""

from __future__ import annotations

import argparse
import io
import posixpath
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from fsspec.core import strip_protocol

from pipeline.encoding import decode_labels
from pipeline.evaluate import pictures
from pipeline.evaluate.datasets import Sample, load_pair
from pipeline.evaluate.flowio import read_flow, read_image
from pipeline.evaluate.metrics import endpoint_error
from pipeline.evaluate.scoring import BENCHMARK_INFO, list_benchmark
from pipeline.label.labeler import LabelerConfig, label_pairs
from pipeline.read.decode import DecodeReport, decode_image, iter_video_frames
from pipeline.read.sources import list_sources
from pipeline.schema import ARRAY_COLUMNS, arrays_from_table
from pipeline.storage import filesystem, join, scrub, write_atomic
from pipeline.write.sinks import NPZ_DIR

from .options import add_model_options, add_storage_options, labeler_config

EXIT_OK, EXIT_FAILED = 0, 1
GRID_COLUMNS = 2
ERROR_SCALE_PX = 3.0  # EPE pictures saturate at the KITTI outlier threshold
MIN_TILE_WIDTH = 320


# ----------------------------------------------------------------------------- panels


def flow_tile(flow: np.ndarray, max_radius: float, valid: np.ndarray | None = None, title: str = "flow") -> np.ndarray:
    """Colour-coded flow with its key and a caption giving the scale."""
    picture = pictures.with_colour_key(pictures.flow_to_rgb(flow, valid, max_radius))
    return pictures.with_caption(picture, f"{title} (rim of key = {max_radius:.1f} px)")


def enlarge(image: np.ndarray, min_width: int = MIN_TILE_WIDTH) -> np.ndarray:
    """``image`` repeated by the smallest integer factor that makes it ≥ ``min_width`` wide, so that
    small videos' pixels and captions stay readable; pixels are copied, never interpolated."""
    factor = -(-min_width // image.shape[1])
    if factor <= 1:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def label_panel(
    flow: np.ndarray,
    occlusion: np.ndarray,
    confidence: np.ndarray,
    *,
    frame0: np.ndarray | None,
    title: str,
    max_radius: float,
) -> np.ndarray:
    """2×2 grid: frame0 | flow over occlusion | confidence (frame left out when not available)."""
    if flow.shape[1] < MIN_TILE_WIDTH:
        flow = enlarge(flow)  # flow values stay in pixels of the labels: only the picture grows
        occlusion, confidence = enlarge(occlusion.astype(np.uint8)).astype(bool), enlarge(confidence)
        frame0 = enlarge(frame0) if frame0 is not None else None
    tiles = []
    if frame0 is not None:
        tiles.append(pictures.with_caption(frame0, title))
    tiles.append(flow_tile(flow, max_radius, title="flow" if frame0 is not None else f"{title}: flow"))
    tiles.append(pictures.with_caption(pictures.mask_to_rgb(occlusion), f"occlusion (white): {np.mean(occlusion):.1%}"))
    tiles.append(pictures.with_caption(pictures.confidence_to_rgb(confidence), "confidence (white = 1, black = 0)"))
    return pictures.tile_grid(tiles, GRID_COLUMNS)


def pair_panel(sample: Sample, prediction: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Frames and ground truth of a benchmark pair; with ``prediction`` (flow, occlusion, confidence
    as :func:`pipeline.label.labeler.label_pairs` gives for one pair) also the prediction and its error.
    Ground truth and prediction share one colour scale."""
    r = sample.record
    tiles = [
        pictures.with_caption(sample.image0, f"{r.pair_id}: frame 0"),
        pictures.with_caption(sample.image1, "frame 1"),
    ]
    radius = pictures.robust_max_radius(sample.flow, sample.valid) if sample.flow is not None else None
    if sample.flow is not None:
        coverage = f", {sample.valid.mean():.1%} valid" if not sample.valid.all() else ""
        tiles.append(flow_tile(sample.flow, radius or 1.0, sample.valid, title="ground truth" + coverage))
    if prediction is not None:
        flow = prediction["flow"]
        radius = radius or pictures.robust_max_radius(flow)
        tiles.append(flow_tile(flow, radius or 1.0, title="prediction"))
        if sample.flow is not None:
            epe = endpoint_error(flow, sample.flow)
            mean = float(epe[sample.valid].mean()) if sample.valid.any() else float("nan")
            tiles.append(
                pictures.with_caption(
                    pictures.error_to_rgb(epe, ERROR_SCALE_PX, sample.valid),
                    f"end-point error: mean {mean:.3f} px (yellow >= {ERROR_SCALE_PX:g} px)",
                )
            )
        tiles.append(
            pictures.with_caption(
                pictures.mask_to_rgb(prediction["occlusion"].astype(bool)),
                f"predicted occlusion: {np.mean(prediction['occlusion']):.1%}",
            )
        )
        tiles.append(
            pictures.with_caption(pictures.confidence_to_rgb(prediction["confidence"]), "confidence (white = 1)")
        )
    if sample.occlusion is not None:
        tiles.append(pictures.with_caption(pictures.mask_to_rgb(sample.occlusion), "ground-truth occlusion"))
    return pictures.tile_grid(tiles, 3)


def flow_file_panel(
    flow: np.ndarray, valid: np.ndarray, *, name: str, image: np.ndarray | None = None, max_radius: float | None = None
) -> np.ndarray:
    """A flow file's colours (invalid pixels black), beside ``image`` when given."""
    radius = max_radius or pictures.robust_max_radius(flow, valid) or 1.0
    magnitude = np.hypot(flow[..., 0], flow[..., 1])[valid]
    stats = f"max |flow| {magnitude.max():.1f} px" if magnitude.size else "no valid pixel"
    tiles = [] if image is None else [pictures.with_caption(image, "frame 0")]
    if not valid.all():
        stats += f", {valid.mean():.1%} valid"
    tiles.append(flow_tile(flow, radius, valid, title=f"{name}: {stats}"))
    return pictures.tile_grid(tiles, 2)


# ----------------------------------------------------------------------------- labeled output


@dataclass
class VideoLabels:
    """Every labeled pair of one video, in frame order: flow N×H×W×2, occlusion N×H×W, confidence N×H×W."""

    video_id: str
    source: str
    frame0: np.ndarray
    frame1: np.ndarray
    t0: np.ndarray
    flow: np.ndarray
    occlusion: np.ndarray
    confidence: np.ndarray


def find_label_files(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The chunk files at ``uri``: the file itself, or every Parquet file below the folder (npz shards
    under ``_npz/`` when there is no Parquet), sorted."""
    fs, path = filesystem(uri, storage_options)
    if fs.isfile(path):
        return [path]
    files = sorted(fs.find(path))
    base = path.rstrip("/") + "/"
    # Records (_errors/, _skipped/, …) live in folders starting with "_", as pyarrow's dataset reader skips them.
    parquet = [
        f
        for f in files
        if f.endswith(".parquet") and not any(part.startswith("_") for part in f[len(base) :].split("/"))
    ]
    if parquet:
        return parquet
    npz = [f for f in files if f.endswith(".npz")]
    if not npz:
        raise FileNotFoundError(f"no labeled chunks under {uri}: expected *.parquet files or {NPZ_DIR}/**/*.npz")
    return npz


def read_label_file(fs, path: str) -> dict[str, np.ndarray]:
    """One chunk file → its columns: arrays N×H×W[×2] and per-row values (video_id restored from the path)."""
    data = fs.cat_file(path)
    if path.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            columns = {name: npz[name] for name in npz.files}
        columns.update(decode_labels(columns))  # int16 flow and uint8 confidence → pixels and [0, 1]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        columns = {
            name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names if name not in ARRAY_COLUMNS
        }
        columns.update(arrays_from_table(table))
    if "video_id" not in columns:
        match = re.search(r"video=([^/]+)", path)
        if match is None:
            raise ValueError(f"{path}: expected a video_id column or a video=<id> folder, found neither")
        columns["video_id"] = np.full(len(columns["frame0"]), match.group(1), object)
    return columns


def by_video(columns: Mapping[str, np.ndarray]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(video_id, its rows) for each video of a label file's columns: a chunk file holds one video, a
    pack (short clips) many."""
    ids = np.asarray(columns["video_id"]).astype(str)
    for vid in dict.fromkeys(ids.tolist()):
        rows = ids == vid
        yield vid, {name: np.asarray(value)[rows] for name, value in columns.items()}


def load_labels(
    uri: str, storage_options: Mapping[str, Any] | None = None, video: str | None = None
) -> list[VideoLabels]:
    """Labels at ``uri`` grouped by video (only ``video`` when given), pairs sorted by frame0."""
    fs, _ = filesystem(uri, storage_options)
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for path in find_label_files(uri, storage_options):
        for vid, columns in by_video(read_label_file(fs, path)):
            if video is None or vid == video:
                parts.setdefault(vid, []).append(columns)
    if not parts:
        raise ValueError(f"no labels of video {video!r} under {uri}" if video else f"no labels under {uri}")
    videos = []
    for vid, chunks in sorted(parts.items()):
        merged = {
            k: np.concatenate([c[k] for c in chunks]) for k in ("frame0", "frame1", "flow", "occlusion", "confidence")
        }
        t0 = np.concatenate([np.asarray(c.get("t0", np.full(len(c["frame0"]), np.nan)), np.float64) for c in chunks])
        order = np.argsort(merged["frame0"], kind="stable")
        videos.append(
            VideoLabels(
                vid,
                str(chunks[0]["source"][0]),
                merged["frame0"][order],
                merged["frame1"][order],
                t0[order],
                merged["flow"][order],
                merged["occlusion"][order],
                merged["confidence"][order],
            )
        )
    return videos


def decode_frames(
    source: str, indices: Iterable[int], size: tuple[int, int], storage_options: Mapping[str, Any] | None = None
) -> dict[int, np.ndarray]:
    """Frames ``indices`` of a video or image sequence (0-based, presentation order, as labeled),
    resized to ``size`` = (H, W) when the labels were made at a smaller size (--max-side)."""
    wanted = set(int(i) for i in indices)
    sources, errors = list_sources([source], storage_options)
    if errors or not sources:
        raise FileNotFoundError(errors[0].message if errors else f"{source}: no video or image sequence")
    src = next((s for s in sources if s.uri == source), sources[0])
    frames: dict[int, np.ndarray] = {}
    fs, path = filesystem(src.uri, storage_options)
    if src.kind == "sequence":
        for i in sorted(wanted):
            if i < len(src.frames):
                frames[i] = decode_image(fs.cat_file(strip_protocol(src.frames[i])))
    else:
        with fs.open(path, "rb") as f:
            for frame in iter_video_frames(f, DecodeReport()):
                if frame.index in wanted:
                    frames[frame.index] = frame.image
                    if len(frames) == len(wanted):
                        break
    h, w = size
    return {
        i: img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        for i, img in frames.items()
    }


def video_fps(t0: np.ndarray, default: float = 10.0) -> float:
    """Playback rate of a label video: the labeled pairs' own rate when they have times, else ``default``."""
    steps = np.diff(t0[np.isfinite(t0)])
    steps = steps[steps > 0]
    return float(np.clip(1.0 / np.median(steps), 1.0, 60.0)) if steps.size else default


def render_labels(labels: VideoLabels, frames: Mapping[int, np.ndarray], indices: Sequence[int]) -> list[np.ndarray]:
    """Panels of the pairs at positions ``indices``, with one colour scale for the whole video
    (so colours mean the same motion in every panel and the MP4 does not flicker)."""
    radius = pictures.robust_max_radius(labels.flow[:: max(1, len(labels.flow) // 32)].astype(np.float32)) or 1.0
    panels = []
    for i in indices:
        f0, f1 = int(labels.frame0[i]), int(labels.frame1[i])
        panels.append(
            label_panel(
                labels.flow[i].astype(np.float32),
                labels.occlusion[i].astype(bool),
                labels.confidence[i],
                frame0=frames.get(f0),
                title=f"frames {f0} -> {f1}",
                max_radius=radius,
            )
        )
    return panels


def viz_labels(
    uri: str,
    out: str,
    *,
    video: str | None = None,
    max_png: int = 8,
    mp4: bool = False,
    with_frames: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write PNG panels (``max_png`` per video, evenly spaced) and optionally one MP4 per video under
    ``out``; returns the written paths. A source that cannot be decoded again gives panels without frames."""
    so = dict(storage_options or {})
    fs, root = filesystem(out, so)
    written = []
    for labels in load_labels(uri, so, video):
        n = len(labels.frame0)
        frames: dict[int, np.ndarray] = {}
        if with_frames:
            try:
                frames = decode_frames(labels.source, labels.frame0, labels.flow.shape[1:3], so)
            except Exception as exc:  # pictures without frames are still worth having
                print(
                    f"flowlabel viz: frames of {labels.source} not available ({type(exc).__name__}: "
                    f"{scrub(str(exc), so)}); drawing the labels alone",
                    file=sys.stderr,
                )
        picks = sorted(set(np.linspace(0, n - 1, min(max_png, n)).round().astype(int).tolist())) if max_png > 0 else []
        for i, panel in zip(picks, render_labels(labels, frames, picks)):
            path = join(root, labels.video_id, f"{int(labels.frame0[i]):06d}-{int(labels.frame1[i]):06d}.png")
            write_atomic(fs, path, pictures.encode_png(panel))
            written.append(path)
        if mp4:
            path = join(root, f"{labels.video_id}.mp4")
            write_atomic(fs, path, pictures.encode_mp4(render_labels(labels, frames, range(n)), video_fps(labels.t0)))
            written.append(path)
    return written


# ----------------------------------------------------------------------------- benchmark pairs and flow files


def viz_pair(
    benchmark: str,
    root: str,
    patterns: Sequence[str],
    out: str,
    *,
    split: str | None = None,
    pass_name: str | None = None,
    labeler: LabelerConfig | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """One PNG per benchmark pair matching ``patterns``, with the prediction of ``labeler``'s model when given."""
    so = dict(storage_options or {})
    by_pass = list_benchmark(
        benchmark, root, split=split, passes=(pass_name,) if pass_name else (), patterns=patterns, storage_options=so
    )
    model = labeler.load("cpu", so) if labeler is not None else None
    fs, out_root = filesystem(out, so)
    written = []
    for records in by_pass.values():
        for record in records:
            sample = load_pair(record, so)
            prediction = None
            if model is not None:
                labels = label_pairs(
                    model, sample.image0[None], sample.image1[None], 1, labeler.consistency, out_dtype=np.float32
                )
                prediction = {name: values[0] for name, values in labels.items()}
            path = join(out_root, record.pair_id.replace("/", "_") + ".png")
            write_atomic(fs, path, pictures.encode_png(pair_panel(sample, prediction)))
            written.append(path)
    return written


def viz_flow_file(
    uri: str,
    out: str,
    *,
    image: str | None = None,
    max_radius: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """``out/<file name>.png`` picturing the flow file at ``uri`` (beside ``image`` when given)."""
    so = dict(storage_options or {})
    flow, valid = read_flow(uri, so)
    frame = read_image(image, so) if image else None
    if frame is not None and frame.shape[:2] != flow.shape[:2]:
        raise ValueError(f"--image: expected size {flow.shape[:2]} like {uri}, got {frame.shape[:2]}")
    name = posixpath.basename(uri.rstrip("/"))
    panel = flow_file_panel(flow, valid, name=name, image=frame, max_radius=max_radius)
    fs, root = filesystem(out, so)
    path = join(root, posixpath.splitext(name)[0] + ".png")
    write_atomic(fs, path, pictures.encode_png(panel))
    return path


# ----------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel viz {labels,pair,flow}`` (called by jobs.cli)."""
    p = subparsers.add_parser("viz", help=help)
    sub = p.add_subparsers(dest="what", required=True)

    labels = sub.add_parser(
        "labels", help="labeled chunks (Parquet/npz) → PNG panels (and with --mp4 an MP4 per video)"
    )
    labels.add_argument("uri", help="a chunk file or a `flowlabel label` output folder")
    labels.add_argument("--out", required=True, help="folder or URI for the pictures")
    labels.add_argument("--video", help="only this video_id")
    labels.add_argument("--max-png", type=int, default=8, help="PNG panels per video, evenly spaced (default 8)")
    labels.add_argument("--mp4", action="store_true", help="also one MP4 of every pair per video")
    labels.add_argument(
        "--no-frames", dest="frames", action="store_false", help="do not decode the sources again for the frame tiles"
    )
    add_storage_options(labels)
    labels.set_defaults(func=cmd_viz_labels)

    pair = sub.add_parser("pair", help="a benchmark pair: frames, ground truth, and a model's prediction")
    pair.add_argument("benchmark", choices=sorted(BENCHMARK_INFO), help="kitti is KITTI-2015")
    pair.add_argument("--root", required=True, help="dataset root in its official layout")
    pair.add_argument(
        "--pair",
        dest="pairs",
        action="append",
        required=True,
        metavar="PATTERN",
        help="pair(s) to draw, as sequence/frame, e.g. alley_1/1 (repeatable)",
    )
    pair.add_argument("--split")
    pair.add_argument("--pass", dest="pass_name", choices=("clean", "final"))
    pair.add_argument("--out", required=True, help="folder or URI for the pictures")
    add_model_options(pair, default_model=None)
    add_storage_options(pair)
    pair.set_defaults(func=cmd_viz_pair)

    flow = sub.add_parser("flow", help="a .flo, KITTI .png or .pfm flow file")
    flow.add_argument("uri", help="flow file")
    flow.add_argument("--image", help="its first frame, drawn beside it")
    flow.add_argument("--max-radius", type=float, help="flow length (px) of full saturation (default: 99th percentile)")
    flow.add_argument("--out", required=True, help="folder or URI for the picture")
    add_storage_options(flow)
    flow.set_defaults(func=cmd_viz_flow)


def _run(what: str, action, storage_options: Mapping[str, Any]) -> int:
    try:
        written = action()
    except Exception as exc:
        print(f"flowlabel viz {what}: error: {type(exc).__name__}: {scrub(str(exc), storage_options)}", file=sys.stderr)
        return EXIT_FAILED
    for path in [written] if isinstance(written, str) else written:
        print(path)
    return EXIT_OK


def cmd_viz_labels(args: argparse.Namespace) -> int:
    return _run(
        "labels",
        lambda: viz_labels(
            args.uri,
            args.out,
            video=args.video,
            max_png=args.max_png,
            mp4=args.mp4,
            with_frames=args.frames,
            storage_options=args.storage_options,
        ),
        args.storage_options,
    )


def cmd_viz_pair(args: argparse.Namespace) -> int:
    labeler = labeler_config(args) if args.model else None
    return _run(
        "pair",
        lambda: viz_pair(
            args.benchmark,
            args.root,
            args.pairs,
            args.out,
            split=args.split,
            pass_name=args.pass_name,
            labeler=labeler,
            storage_options=args.storage_options,
        ),
        args.storage_options,
    )


def cmd_viz_flow(args: argparse.Namespace) -> int:
    return _run(
        "flow",
        lambda: viz_flow_file(
            args.uri, args.out, image=args.image, max_radius=args.max_radius, storage_options=args.storage_options
        ),
        args.storage_options,
    )
