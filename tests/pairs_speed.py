"""Encoding each frame once: RAFT-small labels a run of consecutive frames in both directions,
through ``pairs()`` against the pairwise paths, CPU float32. A measuring script for
BENCHMARKS.md, like official_speed.py beside it:

    .venv/bin/python -m tests.pairs_speed --frames 5 --iters 12 --threads 1 --repeats 5

Input: the shared Sintel clean alley_1 frames 1–4 at 436×1024 (padded to 440×1024), played
forward then back (1 2 3 4 3 2 …) to make a run of ``--frames``; weights: the real raft-small
checkpoint; pairs (k, k+1). Paths timed, per pair, in rounds alternating the three:
  pairwise       the pairs gathered and stacked with their swapped copies, each pair and direction
                 encoded on its own (FlowModel's default predict_bidirectional: fnet sees 4P images)
  bidirectional  model.bidirectional on the gathered pairs (each image encoded once: fnet sees 2P)
  pairs          model.pairs on the run (each frame encoded once: fnet sees N = P + 1)
Reported: median, min and max seconds per pair over ``--repeats`` rounds after a warm-up, and the
share of the time spent in the two encoders (fnet, cnet), from forward hooks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from models import FlowModel, load_model
from models.raft import RAFT


def sintel_run(n: int) -> torch.Tensor:
    """N×3×436×1024 float RGB in [0, 255]: alley_1 clean frames 1 2 3 4 3 2 1 2 … (ping-pong)."""
    from tests.raft_reference import SINTEL_CLEAN, read_rgb

    frames = [read_rgb(SINTEL_CLEAN / f"frame_000{i}.png")[0] for i in (1, 2, 3, 4)]
    cycle = frames + frames[-2:0:-1]
    return torch.stack([cycle[k % len(cycle)] for k in range(n)])


def pairwise(model: FlowModel, frames: torch.Tensor, index0: torch.Tensor, index1: torch.Tensor):
    """The path before frames were encoded once: stacked pairs, each through the encoders on its own."""
    padding = model._padding(frames)
    image0, image1 = padding.pad(frames[index0]), padding.pad(frames[index1])
    forward, backward = FlowModel.predict_bidirectional(model, image0, image1)
    return padding.crop(forward), padding.crop(backward)


class EncoderClock:
    """Wall-clock seconds spent inside ``model.fnet`` and ``model.cnet``, from forward hooks."""

    def __init__(self, model: RAFT):
        self.seconds = 0.0
        for encoder in (model.fnet, model.cnet):
            encoder.register_forward_pre_hook(self._start)
            encoder.register_forward_hook(self._stop)

    def _start(self, module, inputs) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, module, inputs, output) -> None:
        self.seconds += time.perf_counter() - self._t0


def measure(paths: dict[str, Callable], clock: EncoderClock, pairs: int, repeats: int) -> dict[str, dict]:
    """Per path: seconds per pair (median, min, max) and the encoders' share of the time."""
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    encoder: dict[str, list[float]] = {name: [] for name in paths}
    flows = {}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, path in paths.items():
                clock.seconds = 0.0
                start = time.perf_counter()
                flows[name] = path()
                if round_:
                    seconds[name].append((time.perf_counter() - start) / pairs)
                    encoder[name].append(clock.seconds / pairs)
    reference = flows["pairwise"]
    return {
        name: {
            "median_s_per_pair": statistics.median(times),
            "min_s_per_pair": min(times),
            "max_s_per_pair": max(times),
            "encoders_share": statistics.median(encoder[name]) / statistics.median(times),
            "max_abs_diff_px": max(float((a - b).abs().max()) for a, b in zip(flows[name], reference)),
        }
        for name, times in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tests.raft_reference import RAFT_SMALL

    model = load_model("raft_small", checkpoint=str(RAFT_SMALL), iters=args.iters)
    frames = sintel_run(args.frames)
    index0 = torch.arange(args.frames - 1)
    index1 = index0 + 1
    paths = {
        "pairwise": lambda: pairwise(model, frames, index0, index1),
        "bidirectional": lambda: model.bidirectional(frames[index0], frames[index1]),
        "pairs": lambda: tuple(model.pairs(frames, index0, index1)[:2]),
    }
    rows = measure(paths, EncoderClock(model), len(index0), args.repeats)
    base = rows["pairwise"]["median_s_per_pair"]
    for name, row in rows.items():
        row = {
            "path": name,
            "frames": args.frames,
            "size": "436×1024",
            "iters": args.iters,
            "threads": args.threads,
            "repeats": args.repeats,
            **row,
            "speedup_vs_pairwise": base / row["median_s_per_pair"],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
