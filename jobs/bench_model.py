"""Model speed for ``flowlabel bench``: pairs/s and peak memory of every registered model.

Each measurement runs in a fresh interpreter (``python -m jobs.bench_model '<json>'``), so its
peak memory is its own and a crash or an overrun costs only that row. This module imports
nothing heavy at the top: the worker loads only torch and the model it measures.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_SIZES = {"436×1024": (436, 1024), "1080p": (1080, 1920)}


@dataclass(frozen=True)
class Timing:
    """Minimum wall and process CPU seconds over ``repeats`` runs (CPU counts every thread)."""

    wall_s: float
    cpu_s: float
    repeats: int


def time_min(fn: Callable[[], Any], repeats: int) -> Timing:
    """Run ``fn`` ``repeats`` times; the minimum is the run least disturbed by other processes."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(min(walls), min(cpus), repeats)


def model_suite(models: Sequence[str], *, device: str, quick: bool, budget_s: float) -> list[dict[str, Any]]:
    """Pairs/s and peak memory of ``label_pairs`` (forward + backward flow, occlusion, confidence)
    per model, size and precision, at batch 1 and at the best batch found.

    On CPU a warm probe at a quarter of the first size's width and height estimates each size's
    time (linear in pixels from the latest measurement, a lower bound for models with all-pairs
    correlation or global attention); a size whose estimate exceeds ``budget_s`` per pair is
    skipped with that reason, and so is a size or batch whose memory, extrapolated from the
    previous size (quadratic in pixels, as an all-pairs correlation volume grows), would pass
    half of the memory available: the machine may be shared. The best batch is the one with the
    fewest CPU-seconds per pair on CPU (wall clock there depends on the machine's load), the
    most pairs/s on a GPU.
    """
    precisions = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32",)
    rows = []
    for name in models:
        rows += _model_rows(name, device, precisions, quick, budget_s)
    return rows


def _model_rows(name: str, device: str, precisions: Sequence[str], quick: bool, budget_s: float) -> list[dict]:
    from models import get_spec

    if not get_spec(name).needs_weights:
        precisions = ("fp32",)  # classical models run OpenCV on the CPU: no autocast
    batches = (2, 4, 8, 16) if device == "cuda" else ((4,) if quick else (2, 4))
    rows: list[dict[str, Any]] = []
    seconds_per_pixel, basis = None, ""  # per pair, from the latest measurement: the next estimate
    measured: tuple[int, int] | None = None  # (pixels, peak bytes) of the latest measured size
    memory_limit = available_memory_bytes() / 2
    if device == "cpu":
        first_h, first_w = next(iter(MODEL_SIZES.values()))
        probe_h, probe_w = first_h // 4, first_w // 4
        probe = run_worker(
            dict(
                model=name,
                height=probe_h,
                width=probe_w,
                batch=1,
                precision="fp32",
                device=device,
                repeats=1,
                warmup=True,
            ),
            timeout=budget_s if quick else budget_s / 2,
        )
        if "error" in probe:
            reason = f"the {probe_w}×{probe_h} probe did not finish: {probe['error']}"
            return [_skipped(name, size, p, reason) for size in MODEL_SIZES for p in precisions]
        seconds_per_pixel = probe["wall_s"] / (probe_h * probe_w)
        basis = f"{probe_w}×{probe_h} probe, {probe['wall_s']:.1f} s"
    for size, (h, w) in MODEL_SIZES.items():
        for precision in precisions:
            estimate = seconds_per_pixel * h * w if seconds_per_pixel is not None else 0.0
            if device == "cpu" and estimate > budget_s:
                rows.append(
                    _skipped(
                        name,
                        size,
                        precision,
                        f"estimated ≥ {estimate:.0f} s per pair on CPU, over the {budget_s:.0f} s "
                        f"budget (linear in pixels from the {basis})",
                    )
                )
                continue
            memory = measured[1] * (h * w / measured[0]) ** 2 if device == "cpu" and measured else 0.0
            if memory > memory_limit:
                rows.append(
                    _skipped(
                        name,
                        size,
                        precision,
                        f"estimated {memory / 2**30:.1f} GiB (quadratic in pixels from the previous "
                        f"size) > half of the {2 * memory_limit / 2**30:.0f} GiB available",
                    )
                )
                continue
            slow = estimate > budget_s / 3
            repeats = 1 if slow else (2 if estimate > 2 else 3) + (0 if quick else 2)
            spec = dict(
                model=name, height=h, width=w, precision=precision, device=device, repeats=repeats, warmup=not slow
            )
            one = run_worker({**spec, "batch": 1}, timeout=3 * budget_s + 60)
            if "error" in one:
                rows.append(_skipped(name, size, precision, one["error"]))
                continue
            if device == "cpu":
                seconds_per_pixel, basis = one["wall_s"] / (h * w), f"{w}×{h} run, {one['wall_s']:.1f} s"
                measured = (h * w, one["peak_bytes"])
            best = one
            for batch in batches:
                if device == "cpu" and (
                    one["wall_s"] * batch * (spec["repeats"] + 1) > budget_s or one["peak_bytes"] * batch > memory_limit
                ):
                    break
                result = run_worker({**spec, "batch": batch}, timeout=3 * budget_s + 60)
                if "error" in result or _speed(result, device) < 1.05 * _speed(best, device):
                    break  # out of memory, or no faster: a larger batch will not be either
                best = result
            rows.append(
                {"model": name, "size": size, "precision": precision, "batch1": one, "best": best, "skipped": ""}
            )
    return rows


def _speed(result: Mapping[str, Any], device: str) -> float:
    return 1 / result["cpu_s_per_pair"] if device == "cpu" else result["pairs_per_s"]


def _skipped(model: str, size: str, precision: str, reason: str) -> dict[str, Any]:
    return {"model": model, "size": size, "precision": precision, "batch1": None, "best": None, "skipped": reason}


def run_worker(spec: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`measure_model` in a fresh interpreter; ``{"error": …}`` when it fails or overruns."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.bench_model", json.dumps(dict(spec))],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def measure_model(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One (model, size, batch, precision) measurement in this process: random-init weights and
    the registry's default config, known-motion frames. Peak memory: CUDA's max allocated, or on
    CPU the growth of the process's max RSS over the runs (tracemalloc does not see torch)."""
    import torch

    from models import load_model
    from pipeline.label.labeler import label_pairs

    from .synthetic import Motion, translating_frames

    device = torch.device(spec["device"])
    h, w, batch = int(spec["height"]), int(spec["width"]), int(spec["batch"])
    model = load_model(spec["model"], device=device, random_init=True, precision=spec["precision"])
    frames = np.stack(translating_frames(h, w, 2, Motion(2.0, 1.0)))
    image0, image1 = np.repeat(frames[:1], batch, 0), np.repeat(frames[1:], batch, 0)

    def run() -> None:
        label_pairs(model, image0, image1, batch_size=batch)  # returns numpy: waits for the GPU

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_before_run()
    warmup_s = time_min(run, 1).wall_s if spec.get("warmup", True) else None
    timing = time_min(run, int(spec.get("repeats", 3)))
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes() - rss_before
    return {
        "batch": batch,
        "wall_s": timing.wall_s,
        "cpu_s": timing.cpu_s,
        "repeats": timing.repeats,
        "warmup_s": warmup_s,
        "pairs_per_s": batch / timing.wall_s,
        "cpu_s_per_pair": timing.cpu_s / batch,
        "peak_bytes": int(max(peak, 0)),
        "peak_kind": "CUDA max allocated" if cuda else "peak RSS growth",
        "threads": torch.get_num_threads(),
    }


def _rss_before_run() -> int:
    """Resident bytes now, with the process's peak reset to it (Linux ``clear_refs``): building the
    input frames must not hide a smaller inference peak. Elsewhere: the max RSS so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return _status_bytes("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _peak_rss_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f"{field} not in /proc/self/status")


def available_memory_bytes() -> int:
    """MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m jobs.bench_model '<json spec>'", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(measure_model(json.loads(sys.argv[1]))))
