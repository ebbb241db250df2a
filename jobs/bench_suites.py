"""The measurements behind ``flowlabel bench``: decode, model, pipeline and output suites.

Each suite returns plain JSON-able records; :mod:`jobs.bench` runs them and writes the report.
Wall-clock time on a shared machine is noisy, so every timing is the minimum over repeats and
comes with the process CPU time (all threads) of the same run; rates "per CPU-second" do not
depend on what else the machine is doing, rates "per second" do.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.read.datasource import ReadOptions, read_unit
from pipeline.read.decode import DecodeOptions
from pipeline.read.plan import ReadUnit, plan_units
from pipeline.read.sources import list_sources

from .bench_model import time_min
from .synthetic import Motion, write_translating_video

DECODE_SIZES = {"1080p": (1080, 1920), "540p": (540, 960)}
PIPELINE_SIZE = (540, 960)
PIPELINE_FRAMES = 31  # 30 pairs per video: two chunks at the default --chunk-mb
MOTION = Motion(2.0, 1.0)


def cached_video(folder: Path, height: int, width: int, frames: int, seed: int = 0) -> Path:
    """A known-motion H.264 MP4 (see :mod:`jobs.synthetic`), generated once per cache folder."""
    path = folder / f"translate_{width}x{height}_{frames}f_seed{seed}.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}-{path.name}"
        write_translating_video(tmp, height, width, frames, MOTION, seed=seed)
        os.replace(tmp, path)
    return path


def _unit(
    uri: str, storage_options: Mapping[str, Any] | None = None, decode: DecodeOptions = DecodeOptions()
) -> ReadUnit:
    sources, errors = list_sources([uri], storage_options)
    if errors or len(sources) != 1:
        raise FileNotFoundError(f"expected one video at {uri}, got {len(sources)} ({errors})")
    [unit] = plan_units(sources, decode, storage_options=storage_options)
    return unit


def _count_pairs(unit: ReadUnit, options: ReadOptions, storage_options: Mapping[str, Any] | None = None) -> int:
    return sum(int((batch["pair_with"] >= 0).sum()) for batch in read_unit(unit, options, storage_options))


# ----------------------------------------------------------------------------- decode


def decode_suite(
    cache: Path, *, repeats: int, frames: int, s3: bool, thread_settings: Sequence[int] = (1, 0)
) -> list[dict[str, Any]]:
    """Frames/s of the real reader (``read_unit``: decode, RGB conversion, chunking) on generated
    1080p and 540p H.264, from local disk and (``s3``) from a SeaweedFS on loopback.

    ``thread_settings``: FFmpeg decoder threads per read task (0 = FFmpeg's choice, one per core).
    """
    videos = {label: cached_video(cache / "decode", h, w, frames) for label, (h, w) in DECODE_SIZES.items()}
    rows = []
    for label, path in videos.items():
        for threads in thread_settings:
            rows.append(_decode_row(label, "local disk", str(path), None, threads, repeats))
    if s3:
        import s3fs

        from infra.local_s3 import LocalS3

        with LocalS3(bucket="flowlabel-bench") as server:
            fs = s3fs.S3FileSystem(**server.storage_options)
            for label, path in videos.items():
                key = f"{server.bucket}/decode/{path.name}"
                fs.put_file(str(path), key)
                for threads in thread_settings:
                    rows.append(
                        _decode_row(label, "SeaweedFS S3", f"s3://{key}", server.storage_options, threads, repeats)
                    )
    return rows


def _decode_row(
    size: str, where: str, uri: str, storage_options: Mapping[str, Any] | None, threads: int, repeats: int
) -> dict[str, Any]:
    unit = _unit(uri, storage_options)
    options = ReadOptions(decode_threads=threads)
    pairs = _count_pairs(unit, options, storage_options)  # warm: page cache, connections, codec init
    timing = time_min(lambda: _count_pairs(unit, options, storage_options), repeats)
    frames = pairs + 1
    return {
        "size": size,
        "source": where,
        "decode_threads": threads or "auto",
        "frames": frames,
        "repeats": repeats,
        "wall_s": timing.wall_s,
        "cpu_s": timing.cpu_s,
        "frames_per_s": frames / timing.wall_s,
        "frames_per_cpu_s": frames / timing.cpu_s,
        "cpu_note": "client process only" if storage_options else "",
    }


# ----------------------------------------------------------------------------- pipeline


def pipeline_corpus(cache: Path, videos: int) -> list[Path]:
    h, w = PIPELINE_SIZE
    return [cached_video(cache / "pipeline", h, w, PIPELINE_FRAMES, seed=i) for i in range(videos)]


def end_to_end(
    videos: Sequence[Path], work: Path, sizes: Sequence[int], sink_options: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``run_label`` with DIS on the connected Ray, once per corpus size (the first ``n`` videos);
    the difference between two sizes is the steady state, start-up (actors, model load,
    planning) cancelling out."""
    from pipeline.write.sinks import SinkOptions

    from .label import LabelJob, run_label

    runs = []
    for n in sizes:
        load = os.getloadavg()[0]
        result = run_label(
            LabelJob(inputs=tuple(str(v) for v in videos[:n]), sink=SinkOptions(str(work / f"e2e-{n}"), **sink_options))
        )
        if result.exit_code != 0:
            raise RuntimeError(f"the benchmark corpus failed to label: {result.errors}")
        runs.append(
            {
                "videos": n,
                "pairs": result.pairs,
                "seconds": result.seconds,
                "load_at_start": load,
                "stats": result.stats,
            }
        )
    return runs


STAGES = ("decode", "label", "write")


def stages_alone(
    videos: Sequence[Path], work: Path, processes: int, pairs: int, sink_options: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each stage alone, without Ray, one after the other: ``processes`` single-threaded worker
    processes run it at the same time (the machine's capacity for that stage). decode:
    ``read_unit`` over the corpus, split between the workers; label and write: the pipeline's
    ``Labeler`` (DIS) and ``write_batch`` on one chunk, repeated to about ``pairs`` in all."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited threads or Ray state
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(
            target=_stage_worker,
            args=(
                i,
                processes,
                [str(v) for v in videos],
                str(work / str(i)),
                pairs // processes,
                dict(sink_options),
                barrier,
                results,
            ),
        )
        for i in range(processes)
    ]
    for p in workers:
        p.start()
    done: list[dict[str, Any]] = []
    try:
        # Every worker reports each stage, or one error and stops (the others then see a broken barrier).
        while len(done) < processes * len(STAGES) and sum("error" in d for d in done) < processes:
            done.append(results.get(timeout=900))
    finally:
        for p in workers:
            p.join(timeout=60)
    errors = [f"{d['stage']}: {d['error']}" for d in done if "error" in d]
    if errors:
        raise RuntimeError(f"stage workers failed: {errors}")
    out = {}
    for stage in STAGES:
        runs = [d for d in done if d["stage"] == stage]
        handled, cpu = sum(d["pairs"] for d in runs), sum(d["cpu_s"] for d in runs)
        wall = max(d["end"] for d in runs) - min(d["start"] for d in runs)
        out[stage] = {
            "processes": processes,
            "pairs": handled,
            "wall_s": wall,
            "cpu_s": cpu,
            "pairs_per_s": handled / wall,
            "cpu_s_per_pair": cpu / handled,
            "load_at_start": max(d["load"] for d in runs),
        }
    return out


def _stage_worker(
    index: int, processes: int, videos: list[str], work: str, pairs: int, sink_options: dict[str, Any], barrier, results
) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    for stage in STAGES:
        try:
            mine = videos[index::processes] if stage == "decode" else videos[:1]
            run = _stage_runner(stage, mine, Path(work), pairs, sink_options)
            barrier.wait()  # start together
            load, start, cpu = os.getloadavg()[0], time.time(), time.process_time()
            handled = run()
            end, cpu = time.time(), time.process_time() - cpu
            barrier.wait()  # nobody prepares the next stage while another still runs this one
            results.put({"stage": stage, "pairs": handled, "start": start, "end": end, "cpu_s": cpu, "load": load})
        except Exception as exc:  # noqa: BLE001 — reported to the parent, which raises
            barrier.abort()
            results.put({"stage": stage, "error": f"{type(exc).__name__}: {exc}"})
            return


def _stage_runner(
    stage: str, videos: list[str], work: Path, pairs: int, sink_options: Mapping[str, Any]
) -> Callable[[], int]:
    """Prepare one stage's input outside the timed region; return the timed work (→ pairs done).
    The label and write stages run the pipeline's own UDFs (``Labeler``, ``write_batch``)."""
    options = ReadOptions(decode_threads=1)
    units = [_unit(v) for v in videos]
    if stage == "decode":
        return lambda: sum(_count_pairs(u, options) for u in units)
    from pipeline.label.labeler import Labeler, LabelerConfig
    from pipeline.write.sinks import SinkOptions, write_batch

    chunk = next(read_unit(units[0], options))
    sink = SinkOptions(str(work), **sink_options)
    labeler = Labeler(LabelerConfig(model="dis"), flow_encoding=sink.flow_encoding)  # as run_label builds it
    repeats = max(1, math.ceil(pairs / int((chunk["pair_with"] >= 0).sum())))
    if stage == "label":
        return lambda: sum(len(out["frame0"]) for _ in range(repeats) for out in labeler(chunk))
    [rows] = list(labeler(chunk))

    def write() -> int:
        for i in range(repeats):
            write_batch({**rows, "chunk": np.full(len(rows["chunk"]), f"bench-{i:04d}", object)}, sink)
        return repeats * len(rows["frame0"])

    return write


def _labeled_rows(batch: Mapping[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
    """DIS labels of one chunk of frame rows, flow in float32 (the model's own, before storage)."""
    from pipeline.chunks import pair_rows
    from pipeline.label.labeler import label_pairs

    rows, index0, index1 = pair_rows(batch)
    labels = label_pairs(model, batch["image"][index0], batch["image"][index1], out_dtype=np.float32)
    n = len(index0)
    return {**rows, "model": np.full(n, "dis", object), "checkpoint": np.full(n, "", object), **labels}


# ----------------------------------------------------------------------------- output


def output_suite(videos_dir: Path, *, pairs_per_video: int, encodings: Sequence[str]) -> list[dict[str, Any]]:
    """Bytes per pixel of flow + occlusion + confidence in the Parquet files, and the flow
    precision the storage encoding loses (stored vs the model's float32 flow), per real video
    and encoding; DIS labels, the frames of each video's first ``pairs_per_video`` pairs."""
    import pyarrow.parquet as pq

    from models import load_model
    from pipeline.encoding import encode_labels
    from pipeline.schema import arrays_from_table
    from pipeline.write.sinks import SinkOptions, encode_parquet

    model = load_model("dis")
    rows = []
    for path in real_videos(videos_dir):
        read = ReadOptions(decode=DecodeOptions(max_pairs=pairs_per_video))
        chunks = [_labeled_rows(b, model) for b in read_unit(_unit(str(path), decode=read.decode), read)]
        if not chunks:
            continue
        for encoding in encodings:
            sink = SinkOptions("unused", **_encoding_option(encoding))
            sizes = {"flow": 0, "occlusion": 0, "confidence": 0, "file": 0}
            errors, pixels = [], 0
            for chunk in chunks:
                data = encode_parquet({**chunk, **encode_labels(chunk, sink.flow_encoding)}, sink)
                stored = pq.ParquetFile(io.BytesIO(data))
                for name, size in _column_sizes(stored.metadata).items():
                    if name in sizes:
                        sizes[name] += size
                sizes["file"] += len(data)
                flow = arrays_from_table(stored.read())["flow"].astype(np.float32)
                errors.append(np.abs(flow - chunk["flow"]))
                pixels += chunk["flow"].shape[0] * chunk["flow"].shape[1] * chunk["flow"].shape[2]
            error = np.concatenate([e.ravel() for e in errors])
            h, w = chunks[0]["flow"].shape[1:3]
            rows.append(
                {
                    "video": path.name,
                    "size": f"{w}×{h}",
                    "pairs": sum(len(c["frame0"]) for c in chunks),
                    "encoding": encoding,
                    "pixels": pixels,
                    "bytes": sizes,
                    "labels_bytes_per_pixel": (sizes["flow"] + sizes["occlusion"] + sizes["confidence"]) / pixels,
                    "file_bytes_per_pixel": sizes["file"] / pixels,
                    "flow_bytes_per_pixel": sizes["flow"] / pixels,
                    "max_abs_flow_px": float(np.abs(np.concatenate([c["flow"].ravel() for c in chunks])).max()),
                    "flow_error_max_px": float(error.max()),
                    "flow_error_mean_px": float(error.mean()),
                }
            )
    return rows


def real_videos(folder: Path) -> list[Path]:
    """The decodable multi-frame videos of the shared real corpus (see its README)."""
    skip = ("broken__", "bbb_sunflower_QCIF")  # damaged on purpose; a single frame
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in {".mp4", ".mov", ".webm", ".ts", ".gif", ".avi", ".mkv"} and not p.name.startswith(skip)
    )


def _encoding_option(encoding: str) -> dict[str, str]:
    return {"flow_encoding": encoding}


def _column_sizes(metadata) -> dict[str, int]:
    """Compressed bytes per top-level column, over all row groups."""
    sizes: dict[str, int] = {}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + column.total_compressed_size
    return sizes
