"""``flowlabel bench``: speed and storage benchmarks → ``BENCHMARKS.json`` and ``BENCHMARKS.md``.

Suites (see :mod:`jobs.bench_suites` and :mod:`jobs.bench_model`):
  decode    frames/s of the real reader on generated 1080p / 540p H.264, local disk and SeaweedFS S3
  model     pairs/s and peak memory per registered model, 436×1024 and 1080p, batch 1 and best batch
  pipeline  steady-state pairs/s of ``run_label`` with DIS on a local Ray, next to each stage alone
  output    bytes per pixel of the stored labels and the flow precision the encoding keeps, real video
  feed      how busy the pipeline keeps an accelerator: a stand-in that holds a fake GPU T ms per pair
            (see :mod:`jobs.bench_feed`), or with ``--device cuda`` a real model on the real GPUs
  corpus    many short clips from a manifest in SeaweedFS: marginal wall time and objects written per clip,
            no-op resume, CLI start-up, driver memory against manifest rows (see :mod:`jobs.bench_corpus`)

``--quick`` is sized to run on a 2-core CPU machine in minutes; ``--device cuda`` adds the GPU
rows (bf16 / fp16 too) on a machine that has one. Text below the marker line in an existing
BENCHMARKS.md (an optimisation log, notes) is kept when the tables are rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SUITES = ("decode", "model", "pipeline", "output", "feed", "corpus")
DEFAULT_SUITES = SUITES[:4]  # feed and corpus run when asked: minutes of their own
EXIT_FAILED = 1
# CPU seconds per pair above which a model size is skipped; --quick measures the small learned
# models at the first size only and skips the rest with their estimate (minutes in all).
BUDGET_S, QUICK_BUDGET_S = 60.0, 10.0
KEEP_MARKER = "<!-- flowlabel bench: everything above is generated; text below this line is kept -->"


@dataclass(frozen=True)
class BenchOptions:
    """quick: small sizes and few repeats (minutes on 2 CPU cores); device: "cpu" or "cuda";
    budget_s: on CPU, model sizes estimated to take longer than this per pair are skipped
    (default :data:`BUDGET_S`, or :data:`QUICK_BUDGET_S` with ``quick``)."""

    quick: bool = False
    device: str = "cpu"
    suites: tuple[str, ...] = DEFAULT_SUITES
    models: tuple[str, ...] = ()
    budget_s: float | None = None
    cache_dir: str = field(default_factory=lambda: str(_default_cache()))
    videos_dir: str | None = None  # real videos for the output suite; None skips it (nothing to measure)
    s3: bool = True
    json_path: str = "BENCHMARKS.json"
    markdown_path: str = "BENCHMARKS.md"
    checkpoint: str | None = None  # feed suite with a learned model on --device cuda

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if not self.suites or set(self.suites) - set(SUITES):
            raise ValueError(f"suites: expected a non-empty subset of {SUITES}, got {self.suites}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"budget_s: expected > 0, got {self.budget_s}")

    @property
    def model_budget_s(self) -> float:
        return self.budget_s or (QUICK_BUDGET_S if self.quick else BUDGET_S)


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowlabel" / "bench"


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the selected suites; write the JSON and markdown reports; return the report."""
    from models import list_models

    from . import bench_model, bench_suites

    if options.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    cache = Path(options.cache_dir)
    report: dict[str, Any] = {"machine": machine(), "options": asdict(options), "suites": {}, "suite_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="flowlabel-bench-") as tmp:
        work = Path(tmp)
        suites = {
            "decode": lambda: bench_suites.decode_suite(
                cache, repeats=2 if options.quick else 5, frames=60, s3=options.s3
            ),
            "model": lambda: bench_model.model_suite(
                options.models or tuple(list_models()),
                device=options.device,
                quick=options.quick,
                budget_s=options.model_budget_s,
            ),
            "pipeline": lambda: _pipeline(options, cache, work),
            "output": lambda: _output(options),
            "feed": lambda: _feed(options, cache, work),
            "corpus": lambda: _corpus(options, cache),
        }
        for name in options.suites:
            start = time.perf_counter()
            try:
                report["suites"][name] = suites[name]()
            except Exception as exc:  # noqa: BLE001 — one failed suite must not lose the others' numbers
                report["suites"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report["suite_seconds"][name] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    write_reports(_merged(report, Path(options.json_path)), Path(options.json_path), Path(options.markdown_path))
    return report


def _merged(report: dict[str, Any], json_path: Path) -> dict[str, Any]:
    """The new suites' results over the previous report's: a run of some suites keeps the others'
    tables (each suite records the date and options it ran with)."""
    for name in report["suites"]:
        report.setdefault("suite_runs", {})[name] = {
            "date": report["machine"]["date"],
            "quick": report["options"]["quick"],
            "device": report["options"]["device"],
        }
    if not json_path.exists():
        return report
    previous = json.loads(json_path.read_text())
    kept = {k: v for k, v in previous.get("suites", {}).items() if k not in report["suites"]}
    if not kept:
        return report
    runs = {k: v for k, v in previous.get("suite_runs", {}).items() if k in kept}
    return {**report, "suites": {**kept, **report["suites"]}, "suite_runs": {**runs, **report["suite_runs"]}}


def _feed(options: BenchOptions, cache: Path, work: Path) -> list[dict[str, Any]]:
    from . import bench_feed

    if options.device == "cuda":
        return bench_feed.real_feed_suite(
            cache, work, models=options.models or ("raft_small",), checkpoint=options.checkpoint, quick=options.quick
        )
    return bench_feed.feed_suite(cache, work, quick=options.quick)


def _corpus(options: BenchOptions, cache: Path) -> dict[str, Any]:
    from .bench_corpus import corpus_suite

    return corpus_suite(cache, quick=options.quick)


def _output(options: BenchOptions) -> list[dict[str, Any]] | dict[str, str]:
    from pipeline.encoding import FLOW_ENCODINGS

    from . import bench_suites

    if options.videos_dir is None:
        return {"skipped": "no real videos given (--videos DIR, e.g. the videos/ folder of the project's test data)"}
    videos = Path(options.videos_dir)
    if not videos.is_dir():
        return {"skipped": f"no real videos at {videos}"}
    return bench_suites.output_suite(videos, pairs_per_video=2 if options.quick else 6, encodings=FLOW_ENCODINGS)


def _pipeline(options: BenchOptions, cache: Path, work: Path) -> dict[str, Any]:
    """End to end and each stage alone, in alternating rounds (the best of each kept), so that
    both see the same passing load of a shared machine."""
    import ray

    from . import bench_suites
    from .cluster import ClusterOptions, connect

    sizes, rounds = ((2, 8), 1) if options.quick else ((2, 10), 3)
    videos = bench_suites.pipeline_corpus(cache, sizes[1])
    connect(ClusterOptions())
    cpus = int(ray.cluster_resources().get("CPU", 1))
    alone: dict[str, dict[str, Any]] = {}
    runs: dict[int, dict[str, Any]] = {}
    for round_ in range(rounds):
        for stage, result in bench_suites.stages_alone(
            videos, work / f"alone-{round_}", cpus, pairs=120 if options.quick else 240, sink_options={}
        ).items():
            if stage not in alone or result["pairs_per_s"] > alone[stage]["pairs_per_s"]:
                alone[stage] = result
        for run in bench_suites.end_to_end(videos, work / f"e2e-{round_}", sizes, sink_options={}):
            if run["videos"] not in runs or run["seconds"] < runs[run["videos"]]["seconds"]:
                runs[run["videos"]] = run
    small, large = runs[sizes[0]], runs[sizes[1]]
    steady = (large["pairs"] - small["pairs"]) / (large["seconds"] - small["seconds"])
    slowest = min(alone, key=lambda stage: alone[stage]["pairs_per_s"])
    # Without GPUs every stage runs on the same CPUs: a perfect pipeline gets each pair's work
    # of all stages done in Σ 1/rate_alone seconds of the whole machine.
    capacity = 1 / sum(1 / r["pairs_per_s"] for r in alone.values())
    return {
        "cluster_cpus": cpus,
        "frame_size": list(bench_suites.PIPELINE_SIZE),
        "model": "dis",
        "rounds": rounds,
        "end_to_end": {"runs": [small, large], "steady_pairs_per_s": steady},
        "stages_alone": alone,
        "slowest_stage": slowest,
        "efficiency": steady / alone[slowest]["pairs_per_s"],
        "all_stages_pairs_per_s": capacity,
        "machine_efficiency": steady / capacity,
    }


# ----------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU, library versions, date and load average (at the start)."""
    from pipeline.write.run_manifest import versions

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": None,
    }
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- report


def write_reports(report: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    kept = ""
    if markdown_path.exists():
        text = markdown_path.read_text()
        if KEEP_MARKER in text:
            kept = text.split(KEEP_MARKER, 1)[1]
    markdown_path.write_text(markdown(report) + "\n" + KEEP_MARKER + (kept or "\n"))


def markdown(report: dict[str, Any]) -> str:
    m, suites, options = report["machine"], report["suites"], report["options"]
    gpu = f"{m['gpu']['name']} ({m['gpu']['memory_gib']} GiB) ×{m['gpu']['count']}" if m.get("gpu") else "none"
    mode = "quick" if options["quick"] else "full"
    lines = [
        "# flowlabel benchmarks",
        "",
        f"Generated by `flowlabel bench{' --quick' if options['quick'] else ''} --device {options['device']}` "
        f"({mode} mode) on {m['date']}.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable) |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| GPU | {gpu} |",
        f"| load average at start (1/5/15 min) | {_load(m['load_average_start'])} |",
        f"| load average at end | {_load(m.get('load_average_end', []))} |",
        "| seconds per suite | " + ", ".join(f"{k} {v:.0f}" for k, v in report.get("suite_seconds", {}).items()) + " |",
        "| versions | " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + " |",
        "",
        "Timings are the minimum over repeats (the run least disturbed by other processes); rates per "
        "CPU-second count the process's CPU time over all its threads and do not depend on the machine's "
        "load, rates per second (wall clock) do.",
        "",
    ]
    from .bench_corpus import corpus_table
    from .bench_feed import feed_table

    tables = {
        "decode": _decode_table,
        "model": lambda rows: _model_table(rows, options),
        "pipeline": _pipeline_table,
        "output": lambda rows: _output_table(rows, options),
        "feed": feed_table,
        "corpus": corpus_table,
    }
    for name, table in tables.items():
        if name not in suites:
            continue
        if isinstance(suites[name], dict) and ("error" in suites[name] or "skipped" in suites[name]):
            lines += [f"## {name}", "", f"Not run: {suites[name].get('error') or suites[name]['skipped']}", ""]
        else:
            lines += table(suites[name])
    return "\n".join(lines)


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "-"


def _decode_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Decode",
        "",
        "The real reader (`pipeline.read.datasource.read_unit`: PyAV decode, RGB, chunks of pairs) on generated "
        "H.264 MP4 (`jobs/synthetic.py`, crf 12, veryfast). Frames per CPU-second = frames/s per core.",
        "",
        "| video | from | decoder threads | frames | frames/s (wall) | frames per CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = f" ({r['cpu_note']})" if r.get("cpu_note") else ""
        out.append(
            f"| {r['size']} | {r['source']} | {r['decode_threads']} | {r['frames']} | {r['frames_per_s']:.1f} "
            f"| {r['frames_per_cpu_s']:.1f}{note} |"
        )
    return out + [""]


def _model_table(rows: list[dict[str, Any]], options: dict[str, Any]) -> list[str]:
    out = [
        "## Models",
        "",
        "`label_pairs` per pair: forward and backward flow, occlusion and confidence, outputs copied back. "
        "Random-init weights, registry default config, known-motion frames, one process per row. Peak memory: "
        "CUDA max allocated (GPU), or how far the resident set grew during the runs (CPU: Linux VmHWM, reset "
        "once the model and inputs are in memory). Best batch: fewest CPU-seconds per pair on CPU, most "
        "pairs/s on GPU.",
        "",
        "| model | size | precision | batch 1: pairs/s | CPU-s per pair | peak memory | best batch | pairs/s "
        "| CPU-s per pair | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["skipped"]:
            out.append(f"| {r['model']} | {r['size']} | {r['precision']} | skipped: {r['skipped']} | | | | | | |")
            continue
        one, best = r["batch1"], r["best"]
        out.append(
            f"| {r['model']} | {r['size']} | {r['precision']} | {one['pairs_per_s']:.3g} | "
            f"{one['cpu_s_per_pair']:.3g} | {one['peak_bytes'] / 2**20:.0f} MiB | {best['batch']} | "
            f"{best['pairs_per_s']:.3g} | {best['cpu_s_per_pair']:.3g} | {best['peak_bytes'] / 2**20:.0f} MiB |"
        )
    if options["device"] == "cpu":
        out += [
            "",
            "GPU rows (fp32, bf16, fp16) are produced by `flowlabel bench --device cuda` on a GPU machine; "
            "none was available for this run.",
        ]
    return out + [""]


def _pipeline_table(p: dict[str, Any]) -> list[str]:
    e2e, alone = p["end_to_end"], p["stages_alone"]
    h, w = p["frame_size"]
    out = [
        "## Pipeline (DIS, local Ray)",
        "",
        f"`run_label` with DIS on generated {w}×{h} H.264 videos on a local Ray with {p['cluster_cpus']} CPUs. "
        "Steady state: two corpus sizes, pairs/s = Δpairs / Δseconds (start-up cancels out). Each stage alone: "
        f"{alone['decode']['processes']} single-threaded processes without Ray, started together (the machine's "
        f"capacity for that stage). Best of {p['rounds']} alternating round(s) of all runs."
        + (
            " One round of short runs (--quick): the steady state, a difference of two of them, can be "
            "off by tens of percent on a busy machine."
            if p["rounds"] == 1
            else ""
        ),
        "",
        "| run | videos | pairs | seconds | load at start |",
        "|---|---|---|---|---|",
    ]
    for r in e2e["runs"]:
        out.append(f"| end to end | {r['videos']} | {r['pairs']} | {r['seconds']:.1f} | {r['load_at_start']:.2f} |")
    out += ["", "| stage | pairs/s | CPU-s per pair | load at start |", "|---|---|---|---|"]
    for stage, r in alone.items():
        out.append(f"| {stage} alone | {r['pairs_per_s']:.2f} | {r['cpu_s_per_pair']:.4f} | {r['load_at_start']:.2f} |")
    out += [
        f"| **pipeline, steady state** | **{e2e['steady_pairs_per_s']:.2f}** | | |",
        "",
        f"Pipeline efficiency = steady state / slowest stage alone ({p['slowest_stage']}) = **{p['efficiency']:.2f}**.",
    ]
    if "machine_efficiency" in p:
        out += [
            "",
            "Without GPUs all stages share the same CPUs, so the labeler cannot have all of them: the "
            "machine's capacity for the pipeline's whole work is 1 / Σ (1 / stage alone) = "
            f"{p['all_stages_pairs_per_s']:.2f} pairs/s, and steady state / that capacity = "
            f"**{p['machine_efficiency']:.2f}** (1.0: no stage ever waits while CPUs idle).",
        ]
    stats = e2e["runs"][-1].get("stats") or {}
    if stats.get("stages"):
        out += [
            "",
            "Ray Data per-operator stats of the larger run:",
            "",
            "| operator | span s | busy s | CPU s | CPU-s per pair | note |",
            "|---|---|---|---|---|---|",
        ]
        for s in stats["stages"]:
            note = f"{s['actors']} actor(s), {s['utilisation']:.0%} busy" if "utilisation" in s else ""
            out.append(
                f"| {s['operator']} | {s['seconds']:.1f} | {s['busy_seconds']:.1f} | {s['cpu_seconds']:.1f} "
                f"| {s['cpu_seconds'] / stats['pairs']:.4f} | {note} |"
            )
    return out + [""]


def _output_table(rows: list[dict[str, Any]], options: dict[str, Any]) -> list[str]:
    out = [
        "## Output size and precision",
        "",
        f"DIS labels of real videos (`--videos {options['videos_dir']}`), Parquet with zstd as the sink writes it. "
        "Bytes per pixel: compressed flow + occlusion + confidence columns over pairs × H × W; "
        "error: stored flow vs the model's float32 flow.",
        "",
        "| video | size | pairs | encoding | max abs flow px | flow B/px | labels B/px | file B/px "
        "| flow error max px | mean px |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['video']} | {r['size']} | {r['pairs']} | {r['encoding']} | {r['max_abs_flow_px']:.1f} | "
            f"{r['flow_bytes_per_pixel']:.3f} | {r['labels_bytes_per_pixel']:.3f} | "
            f"{r['file_bytes_per_pixel']:.3f} | {r['flow_error_max_px']:.5f} | {r['flow_error_mean_px']:.6f} |"
        )
    out += ["", "| encoding | all videos: labels B/px | flow error max px |", "|---|---|---|"]
    for encoding in dict.fromkeys(r["encoding"] for r in rows):
        mine = [r for r in rows if r["encoding"] == encoding]
        labels = sum(r["bytes"]["flow"] + r["bytes"]["occlusion"] + r["bytes"]["confidence"] for r in mine)
        pixels = sum(r["pixels"] for r in mine)
        out.append(f"| {encoding} | {labels / pixels:.3f} | {max(r['flow_error_max_px'] for r in mine):.5f} |")
    return out + [""]


# ----------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel bench`` (called by jobs.cli)."""
    p = subparsers.add_parser(
        "bench",
        help=help,
        description="Measure decode, model, pipeline and output storage; write "
        "BENCHMARKS.json and the tables of BENCHMARKS.md.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats: minutes on 2 CPU cores")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default cpu)")
    p.add_argument(
        "--suite",
        dest="suites",
        action="append",
        choices=SUITES,
        help="run only this suite (repeatable; default all but feed and corpus)",
    )
    p.add_argument("--model", dest="models", action="append", help="only this model (repeatable; default all)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"CPU: skip a model size estimated to take longer than this per pair "
        f"(default {BUDGET_S:g}, with --quick {QUICK_BUDGET_S:g})",
    )
    p.add_argument("--cache-dir", default=str(_default_cache()), help="generated videos (default %(default)s)")
    p.add_argument(
        "--videos",
        metavar="DIR",
        help="a folder of real videos for the output suite (storage bytes and "
        "precision); without it that suite is skipped",
    )
    p.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS decode rows")
    p.add_argument(
        "--checkpoint", default=None, help="feed suite with --device cuda: the weights of the --model it labels with"
    )
    p.add_argument(
        "--json",
        default="BENCHMARKS.json",
        help="JSON report (default %(default)s); suites not run keep their results from it",
    )
    p.add_argument("--markdown", default="BENCHMARKS.md", help="markdown report (default %(default)s)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    options = BenchOptions(
        quick=args.quick,
        device=args.device,
        suites=tuple(args.suites or DEFAULT_SUITES),
        models=tuple(args.models or ()),
        budget_s=args.budget_s,
        cache_dir=args.cache_dir,
        videos_dir=args.videos,
        s3=not args.no_s3,
        json_path=args.json,
        markdown_path=args.markdown,
        checkpoint=args.checkpoint,
    )
    report = run_bench(options)
    print(f"wrote {options.json_path} and {options.markdown_path}")
    failed = {name: r["error"] for name, r in report["suites"].items() if isinstance(r, dict) and "error" in r}
    for name, error in failed.items():
        print(f"flowlabel bench: suite {name} failed: {error}", file=sys.stderr)
    return EXIT_FAILED if failed else 0
