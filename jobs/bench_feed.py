"""``flowlabel bench --suite feed``: how busy the pipeline keeps an accelerator, measured without one.

A stand-in accelerator (:class:`StandIn`, loaded through the plugin path as
``jobs.bench_feed:StandIn``) holds a fake GPU that a local Ray declares, for ``ms_per_pair`` per
pair, using no CPU, while decoding, host work and writing run as in a real run. Its device is
torch's meta device: the labeler's device stage (model, consistency, quantisation) is dispatched
as on a GPU but computes nothing, so ``ms_per_pair`` stands for all of the device's work; results
come back to the host as zeros of the stored shapes and dtypes (the writer then compresses zeros:
its CPU per pair here is a lower bound, the ``write`` row of the pipeline suite gives it on real
labels). Each stand-in logs when it held the device; the busy fraction is that time over the
steady span (the middle 80 % of the pairs, by the time they were labeled).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models import FlowModel, PairFlows

FEED_SIZES = ((540, 960), (1080, 1920))
FEED_MS = (20.0, 50.0, 200.0)
FEED_GPUS = (1, 2)
VIDEO_FRAMES = 61  # 60 pairs per generated video
STEADY = (0.1, 0.9)  # the share of pairs before the steady span starts and ends
# The stand-in labels a whole chunk per pass: dispatching the device stage to the meta device runs
# torch's Python decompositions (grid_sample's most), CPU a GPU's asynchronous launches do not cost.
STANDIN_BATCH = 64
# A GPU actor asks Ray for one CPU by default: two stand-ins would take both of this machine's
# cores and leave none for the read and write tasks (the run then waits forever). A stand-in's
# host work (unpacking and packing chunks) needs far less.
STANDIN_CPUS = 0.25


class StandIn(FlowModel):
    """A fake accelerator: holds the device ``ms_per_pair`` per pair, computes nothing (meta tensors).

    ``trace``: a folder where each process appends one JSON line per device call: start and end
    (seconds since the epoch), pairs, and the process's CPU seconds so far.
    """

    def __init__(self, ms_per_pair: float = 50.0, trace: str = ""):
        super().__init__()
        if ms_per_pair < 0:
            raise ValueError(f"ms_per_pair: expected ≥ 0, got {ms_per_pair}")
        self.ms_per_pair, self.trace = float(ms_per_pair), trace
        self.register_buffer("device_anchor", torch.empty(0, device="meta"))

    def _apply(self, fn, recurse=True):  # stays on the meta device whatever .to() asks
        return self

    def _hold(self, pairs: int) -> None:
        start = time.time()
        time.sleep(self.ms_per_pair * pairs / 1000)
        end = time.time()
        if self.trace:
            with open(Path(self.trace) / f"standin-{os.getpid()}.jsonl", "a") as f:
                f.write(json.dumps([start, end, pairs, time.process_time()]) + "\n")

    def predict(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """Plain calls (the plugin check's probe): zero flow where the images are."""
        self._hold(len(image0))
        return torch.zeros(len(image0), 2, *image0.shape[-2:], device=image0.device)

    def predict_bidirectional(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both directions of a pair count as one pair's device time, as in :meth:`predict_pairs`."""
        self._hold(len(image0))
        flow = torch.zeros(len(image0), 2, *image0.shape[-2:], device=image0.device)
        return flow, flow.clone()

    def predict_pairs(self, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor) -> PairFlows:
        self._hold(len(index0))
        flow = torch.zeros(len(index0), 2, *frames.shape[-2:], device=frames.device)  # free on meta
        return PairFlows(flow, torch.zeros_like(flow))


def read_traces(folder: Path) -> list[list[tuple[float, float, int, float]]]:
    """One list of (start, end, pairs, cpu_s) per stand-in process, in time order."""
    out = []
    for path in sorted(folder.glob("standin-*.jsonl")):
        calls = [tuple(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        out.append(sorted(calls))
    return out


def steady_window(traces: Sequence[Sequence[tuple]], steady: tuple[float, float] = STEADY) -> tuple[float, float]:
    """(start, end) of the steady span: from the end of the call that completes the first
    ``steady[0]`` share of all pairs to the start of the first call past the ``steady[1]`` share."""
    calls = sorted(c for t in traces for c in t)
    total = sum(c[2] for c in calls)
    done, start, end = 0, None, calls[-1][1]
    for call in calls:
        if start is None and done + call[2] >= steady[0] * total:
            start = call[1]
        if done >= steady[1] * total:
            end = call[0]
            break
        done += call[2]
    return start, end


def busy_in(calls: Sequence[tuple], start: float, end: float) -> tuple[float, float]:
    """(device-held seconds, pairs) of ``calls`` within [start, end], pairs pro rata."""
    held = pairs = 0.0
    for s, e, n, _ in calls:
        overlap = max(0.0, min(e, end) - max(s, start))
        held += overlap
        pairs += n * overlap / (e - s) if e > s else (n if start <= s <= end else 0)
    return held, pairs


def feed_row(
    traces: list[list[tuple]], stats: dict[str, Any], *, ms: float, gpus: int, size: tuple[int, int], cores: int
) -> dict[str, Any]:
    """One report row from the stand-ins' traces and the run's per-stage stats."""
    start, end = steady_window(traces)
    span = end - start
    # Stand-ins that held the device in the window: the driver's start-up probe (one call) is not one.
    held = [h for h in (busy_in(t, start, end) for t in traces) if h[0] > 0]
    pairs = stats["pairs"]
    stages = {s["stage"]: s for s in stats.get("stages", [])}
    label_cpu = sum(t[-1][3] - t[0][3] for t in traces if len(t) > 1)
    label_pairs = sum(c[2] for t in traces if len(t) > 1 for c in t[1:])
    cpu = {
        "read": stages.get("read", {}).get("cpu_seconds", 0.0) / pairs,
        "label": label_cpu / max(label_pairs, 1),
        "write": stages.get("write", {}).get("cpu_seconds", 0.0) / pairs,
    }
    frame_bytes = size[0] * size[1] * 3
    need = sum(cpu.values()) * 1000 / ms * gpus
    return {
        "size": f"{size[1]}×{size[0]}",
        "ms_per_pair": ms,
        "gpus": gpus,
        "pairs": pairs,
        "busy": sum(h for h, _ in held) / (span * len(held)) if span > 0 else None,
        "pairs_per_s": sum(p for _, p in held) / span if span > 0 else None,
        "ideal_pairs_per_s": gpus * 1000 / ms,
        "cpu_s_per_pair": cpu,
        "cores_needed": need,
        "cores": cores,
        "cores_suffice": need <= cores,
        "object_store_bytes_per_pair": {k: stages.get(k, {}).get("bytes_out", 0) / pairs for k in ("read", "label")},
        "read_frames_per_pair": stages.get("read", {}).get("bytes_out", 0) / pairs / frame_bytes,
        "steady_span_s": span,
        "seconds": stats.get("seconds"),
    }


def pairs_for(ms: float, gpus: int, quick: bool) -> int:
    """Pairs per row: about 12 s of device time per GPU (6 s in quick mode), 120 to 960 pairs."""
    seconds = 6 if quick else 12
    return int(min(960, max(120, seconds * 1000 / ms * gpus)))


def run_row(
    videos: Sequence[Path],
    work: Path,
    *,
    ms: float,
    gpus: int,
    size: tuple[int, int],
    model: str = "jobs.bench_feed:StandIn",
) -> dict[str, Any]:
    """Label ``videos`` with the stand-in on the connected Ray; the report row."""
    from pipeline.label.labeler import LabelerConfig
    from pipeline.write.sinks import SinkOptions

    from .cluster import ClusterOptions
    from .label import LabelJob, run_label

    trace = work / "trace"
    trace.mkdir(parents=True)
    overrides = {"ms_per_pair": ms, "trace": str(trace)} if model.endswith(":StandIn") else {}
    job = LabelJob(
        inputs=tuple(str(v) for v in videos),
        sink=SinkOptions(str(work / "out")),
        labeler=LabelerConfig(model=model, overrides=overrides, batch_size=STANDIN_BATCH),
        cluster=ClusterOptions(min_actors=gpus, cpus_per_actor=STANDIN_CPUS),
    )
    result = run_label(job)
    if result.exit_code != 0:
        raise RuntimeError(f"the feed corpus failed to label: {result.errors}")
    return feed_row(read_traces(trace), result.stats, ms=ms, gpus=gpus, size=size, cores=os.cpu_count() or 1)


def feed_suite(
    cache: Path,
    work: Path,
    *,
    quick: bool,
    sizes: Sequence[tuple[int, int]] = FEED_SIZES,
    ms_list: Sequence[float] = FEED_MS,
    gpus_list: Sequence[int] = FEED_GPUS,
    pairs: int | None = None,
) -> list[dict[str, Any]]:
    """Every (GPUs, size, ms per pair) row; one local Ray per GPU count, declaring that many fake
    GPUs. ``pairs`` per row (default :func:`pairs_for`)."""
    import ray

    from .bench_suites import cached_video
    from .cluster import ClusterOptions, connect

    rows = []
    for gpus in gpus_list:
        if ray.is_initialized():
            ray.shutdown()
        connect(ClusterOptions(local_gpus=gpus))
        try:
            for size in sizes:
                for ms in ms_list:
                    count = -(-(pairs or pairs_for(ms, gpus, quick)) // (VIDEO_FRAMES - 1))
                    videos = [cached_video(cache / "feed", *size, VIDEO_FRAMES, seed=i) for i in range(count)]
                    rows.append(run_row(videos, work / f"g{gpus}-{size[1]}-{ms:g}", ms=ms, gpus=gpus, size=size))
        finally:
            ray.shutdown()
    return rows


def real_feed_suite(
    cache: Path, work: Path, *, models: Sequence[str], checkpoint: str | None, quick: bool
) -> list[dict[str, Any]]:
    """With ``--device cuda``: each model labels the 960×540 corpus on the machine's real GPUs;
    pairs/s and per-stage CPU from Ray Data's stats (no stand-in trace, so no busy fraction)."""
    import ray

    from pipeline.label.labeler import LabelerConfig
    from pipeline.write.sinks import SinkOptions

    from .bench_suites import cached_video
    from .cluster import ClusterOptions, connect
    from .label import LabelJob, run_label

    size, rows = FEED_SIZES[0], []
    videos = [cached_video(cache / "feed", *size, VIDEO_FRAMES, seed=i) for i in range(4 if quick else 8)]
    connect(ClusterOptions())
    try:
        for name in models:
            job = LabelJob(
                inputs=tuple(str(v) for v in videos),
                sink=SinkOptions(str(work / f"real-{name}")),
                labeler=LabelerConfig(model=name, checkpoint=checkpoint),
            )
            result = run_label(job)
            label = next((s for s in result.stats.get("stages", []) if s["stage"] == "label"), {})
            rows.append(
                {
                    "model": name,
                    "size": f"{size[1]}×{size[0]}",
                    "pairs": result.pairs,
                    "pairs_per_s": result.pairs_per_second,
                    "label_stage": label,
                    "gpus": int(ray.cluster_resources().get("GPU", 0)),
                }
            )
    finally:
        ray.shutdown()
    return rows


def feed_table(rows: list[dict[str, Any]]) -> list[str]:
    """The feed suite's markdown table."""
    lines = [
        "## feed",
        "",
        "Stand-in accelerator (`jobs.bench_feed.StandIn`, torch's meta device): it holds a fake "
        "Ray GPU T ms per pair and uses no CPU; T stands for all device work (model, consistency, "
        "quantisation), which the labeler dispatches to the meta device without computing it. busy = its "
        "device-held time over the steady span (middle 80 % of the pairs); CPU-s per pair: read and write "
        "tasks from Ray Data's stats, the labeler actor's process CPU between its first and last call "
        "(the writer compresses zero labels here: a lower bound); cores needed = Σ CPU-s/pair × pairs/s "
        "at 1000/T per GPU.",
        "",
    ]
    if rows and "model" in rows[0]:
        lines += ["| model | size | GPUs | pairs | pairs/s | labeler busy |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['model']} | {r['size']} | {r['gpus']} | {r['pairs']} | {r['pairs_per_s']:.2f} | "
            f"{r['label_stage'].get('utilisation', float('nan')):.2f} |"
            for r in rows
        ]
        return lines + [""]
    lines += [
        "| frames | T ms/pair | GPUs | pairs | busy | pairs/s (ideal) | CPU-s/pair read / label / write | "
        "cores needed (have) | object store B/pair read / label | frames sent per pair |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, o = r["cpu_s_per_pair"], r["object_store_bytes_per_pair"]
        enough = "" if r["cores_suffice"] else " — more than the machine has"
        lines.append(
            f"| {r['size']} | {r['ms_per_pair']:g} | {r['gpus']} | {r['pairs']} | {r['busy']:.2f} | "
            f"{r['pairs_per_s']:.1f} ({r['ideal_pairs_per_s']:.0f}) | {c['read']:.3f} / {c['label']:.3f} / "
            f"{c['write']:.3f} | {r['cores_needed']:.1f} ({r['cores']}){enough} | "
            f"{o['read'] / 1e6:.2f} MB / {o['label'] / 1e6:.2f} MB | {r['read_frames_per_pair']:.2f} |"
        )
    return lines + [""]
