"""The corpus suite of ``flowlabel bench``: many short clips from a manifest in SeaweedFS.

It measures what a corpus of millions of clips pays per clip beyond decode and model: the
marginal wall time per clip (two run sizes, the difference over the difference in clips, so
start-up and planning fixed costs cancel), the objects written per clip, a no-op resume, the
CLI's start-up, and how the driver's memory grows with the manifest's rows.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIP_SIZE = (96, 128)  # H, W
CLIP_FRAMES = 6
MANIFEST_ROWS = (1_000, 100_000, 1_000_000)
FIRST_CHUNK_ROWS = (1_000, 1_000_000)
RESUME_UNITS = (100_000, 1_000_000)
PACK_UNITS = 1_000  # units per pack marker of the resume probe: a joined pack of summary rows
FIRST_CHUNK_CLIPS = 40  # the rows name spans of these clips, each a source of its own


def corpus_suite(cache: Path, quick: bool = False) -> dict[str, Any]:
    """Label a manifest of short H.264 clips with DIS, dense and summary, at two corpus sizes."""
    import fsspec

    from infra.local_s3 import LocalS3

    sizes = (40, 200) if quick else (50, 500)
    clips = _clips(cache / "corpus", sizes[-1])
    with LocalS3(bucket="flowlabel-bench") as s3:
        so = s3.storage_options
        fs = fsspec.filesystem("s3", **so)
        fs.put([str(p) for p in clips], [f"flowlabel-bench/clips/{p.name}" for p in clips])
        manifests = {n: _manifest(fs, [f"s3://flowlabel-bench/clips/{p.name}" for p in clips[:n]], n) for n in sizes}
        _label(manifests[sizes[0]], "s3://flowlabel-bench/warm-up", "summary", so)  # Ray and the actors start here
        repeats = 1 if quick else 3
        runs = [_run(fs, manifests, sizes, store, so, repeats) for store in ("dense", "summary")]
        resume = _noop_resume(manifests[sizes[-1]], f"s3://flowlabel-bench/summary-{sizes[-1]}-r0", so)
    return {
        "clip": {"height": CLIP_SIZE[0], "width": CLIP_SIZE[1], "frames": CLIP_FRAMES},
        "sizes": list(sizes),
        "runs": runs,
        "noop_resume": resume,
        "help_s": _cli_seconds(["--help"]),
        "driver_memory": [_driver_memory(rows) for rows in MANIFEST_ROWS],
        "resume_memory": [_resume_memory(units) for units in RESUME_UNITS],
        "first_chunk": [_first_chunk(clips[:FIRST_CHUNK_CLIPS], rows) for rows in FIRST_CHUNK_ROWS],
    }


def _clips(folder: Path, n: int) -> list[Path]:
    from jobs.synthetic import Motion, write_translating_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip-{i:06d}.mp4" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            write_translating_video(path, *CLIP_SIZE, CLIP_FRAMES, Motion(1.0 + i % 3, 0.5), seed=i)
    return paths


def _manifest(fs: Any, uris: list[str], n: int) -> str:
    lines = "".join(json.dumps({"uri": uri, "clip_id": f"clip-{i:06d}"}) + "\n" for i, uri in enumerate(uris))
    path = f"flowlabel-bench/manifests/clips-{n}.jsonl"
    fs.pipe_file(path, lines.encode())
    return f"s3://{path}"


def _label(manifest: str, out: str, store: str, storage_options: dict[str, Any]) -> Any:
    from jobs.label import LabelJob, run_label
    from pipeline.label.labeler import LabelerConfig
    from pipeline.read.manifest import ManifestOptions
    from pipeline.write.sinks import SinkOptions

    job = LabelJob(
        inputs=(),
        manifest=ManifestOptions(manifest, carry=("clip_id",)),
        sink=SinkOptions(out, store=store),
        labeler=LabelerConfig("dis"),
        storage_options=storage_options,
    )
    return run_label(job)


def _run(
    fs: Any,
    manifests: dict[int, str],
    sizes: tuple[int, int],
    store: str,
    storage_options: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    """Both sizes ``repeats`` times, in turn, each into a new output; the median seconds of each size."""
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    stages = {}
    for repeat in range(repeats):
        for n in sizes:
            start = time.perf_counter()
            result = _label(manifests[n], f"s3://flowlabel-bench/{store}-{n}-r{repeat}", store, storage_options)
            seconds[n].append(time.perf_counter() - start)
            stages[n] = {s["stage"]: s.get("cpu_seconds", 0.0) / n for s in result.stats.get("stages", [])}
    median = {n: statistics.median(times) for n, times in seconds.items()}
    small, large = sizes
    objects = len(fs.find(f"flowlabel-bench/{store}-{large}-r0"))
    return {
        "store": store,
        "repeats": repeats,
        "seconds": {str(n): round(s, 2) for n, s in median.items()},
        "marginal_ms_per_clip": round(1000 * (median[large] - median[small]) / (large - small), 1),
        "objects_per_clip": round(objects / large, 3),
        "cpu_s_per_clip": {k: round(v, 4) for k, v in stages[large].items()},
    }


def _noop_resume(manifest: str, out: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The finished large summary run again: in this process (after start-up), and through the CLI."""
    start = time.perf_counter()
    result = _label(manifest, out, "summary", storage_options)
    in_process = time.perf_counter() - start
    return {"in_process_s": round(in_process, 2), "pairs": result.pairs}


def _cli_seconds(args: list[str], repeats: int = 3) -> float:
    """Median wall seconds of ``flowlabel ARGS`` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.cli", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


_MEMORY_PROBE = """
import sys, tempfile, tracemalloc
from jobs.label import LabelJob, plan_windows
from pipeline.label.labeler import LabelerConfig
from pipeline.read.manifest import ManifestOptions
from pipeline.write.exactly_once import Books
from pipeline.write.sinks import SinkOptions
out = tempfile.mkdtemp()
job = LabelJob((), SinkOptions(out), LabelerConfig("dis"), manifest=ManifestOptions(sys.argv[1]))
tracemalloc.start()
units = windows = 0
for window in plan_windows(job, Books(out, {}, {})):
    units, windows = units + window.units, windows + 1
    del window  # as jobs.label.run_label: not held while the next one is planned
print(units, windows, tracemalloc.get_traced_memory()[1] / 2**20)
"""


def _driver_memory(rows: int) -> dict[str, Any]:
    """Peak Python memory (tracemalloc) the driver allocates to list and plan a manifest of ``rows``
    http clips (never opened on the driver) window by window, in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.txt"
        path.write_text("".join(f"https://127.0.0.1:9/clips/clip-{i:07d}.mp4\n" for i in range(rows)))
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(path)], check=True, capture_output=True, text=True
        ).stdout.split()
    return {"rows": rows, "units": int(out[0]), "windows": int(out[1]), "peak_mib": round(float(out[2]), 3)}


_RESUME_PROBE = """
import sys, time, tracemalloc
from pipeline.keyset import KeySet
from pipeline.write.exactly_once import Books, count_settled
from pipeline.write.sinks import SinkOptions
out, units = sys.argv[1], int(sys.argv[2])
keys = KeySet(f"{i:016x}-00000000" for i in range(0, units, 2))  # the run's own units: every other one
tracemalloc.start()
start = time.perf_counter()
books = Books.read(SinkOptions(out, store="summary"))
done = count_settled(out, keys, ("done", "skipped"))
print(len(books.settled), done, time.perf_counter() - start, tracemalloc.get_traced_memory()[1] / 2**20)
"""


def _resume_memory(units: int) -> dict[str, Any]:
    """Peak Python memory (tracemalloc) and seconds for the driver to read the books of an ``out`` where ``units``
    are settled by pack markers of PACK_UNITS units each (as joined summary packs leave them), and to count the
    run's own done units at its end, in a fresh interpreter. Local files."""
    with tempfile.TemporaryDirectory() as tmp:
        packs = Path(tmp) / "_packs"
        packs.mkdir()
        for p in range(0, units, PACK_UNITS):
            body = {f"{i:016x}-00000000": [f"00000000-{i:08d}"] for i in range(p, min(p + PACK_UNITS, units))}
            name = f"{p // PACK_UNITS:08d}-joined"
            marker = {"pack": name, "units": body, "files": [f"corpus=c/pack-{name}.parquet"]}
            (packs / f"{name}.json").write_text(json.dumps(marker))
        out = subprocess.run(
            [sys.executable, "-c", _RESUME_PROBE, tmp, str(units)], check=True, capture_output=True, text=True
        ).stdout.split()
    expected = (units, (units + 1) // 2)  # every unit settled; the run's own are every other one
    if (int(out[0]), int(out[1])) != expected:
        raise RuntimeError(f"resume probe: settled and done units {out[:2]}, expected {list(expected)}")
    return {
        "units": int(out[0]),
        "done": int(out[1]),
        "seconds": round(float(out[2]), 2),
        "peak_mib": round(float(out[3]), 1),
    }


def _first_chunk(clips: list[Path], rows: int) -> dict[str, Any]:
    """Seconds from ``flowlabel label --manifest`` starting (a fresh interpreter that starts its own local Ray)
    to the first data file in ``--out``, for a local JSONL manifest of ``rows`` distinct sources: spans of
    ``clips`` that start a picosecond apart, so every row is a source of its own with the clip's frames."""
    import os
    import signal

    with tempfile.TemporaryDirectory() as tmp:
        manifest, out = Path(tmp) / "clips.jsonl", Path(tmp) / "out"
        with manifest.open("w") as f:
            for i in range(rows):
                f.write(json.dumps({"uri": str(clips[i % len(clips)]), "start": i * 1e-12}) + "\n")
        command = [sys.executable, "-m", "jobs.cli", "label", "--manifest", str(manifest), "--out", str(out)]
        start = time.perf_counter()
        child = subprocess.Popen(
            [*command, "--model", "dis", "--store", "summary"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its Ray goes with it
        )
        try:
            seconds = _wait_for_data(out, child, start)
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return {"rows": rows, "seconds": round(seconds, 1)}


def _wait_for_data(out: Path, child: subprocess.Popen, start: float, timeout_s: float = 600.0) -> float:
    """Seconds since ``start`` when a data file (not under a ``_`` folder) is first seen in ``out``, polled
    every 0.1 s while ``child`` runs; a run that ends first is looked at once more."""
    while time.perf_counter() - start < timeout_s:
        running = child.poll() is None
        if any(not any(part.startswith("_") for part in p.relative_to(out).parts) for p in out.rglob("*.parquet")):
            return time.perf_counter() - start
        if not running:
            break
        time.sleep(0.1)
    raise RuntimeError(f"no data file in {out} after {time.perf_counter() - start:.0f} s (exit code {child.poll()})")


def corpus_table(report: dict[str, Any]) -> list[str]:
    """The corpus suite's markdown section."""
    clip, (small, large) = report["clip"], report["sizes"]
    lines = [
        "## corpus",
        "",
        f"Short clips ({clip['width']}×{clip['height']}, {clip['frames']} frames, H.264) listed in a JSONL "
        f"manifest in SeaweedFS on loopback, labeled with DIS on a local Ray, one run of {small} and one of "
        f"{large} clips per store, each run {report['runs'][0].get('repeats', 1)} times in turn: the marginal wall "
        f"time per clip is the difference of the two sizes' median seconds over {large - small} clips, so "
        "start-up and fixed costs cancel. CPU-s per clip: Ray Data's task CPU time "
        "of each stage in the larger run.",
        "",
        "| store | seconds (small / large) | marginal ms per clip | objects written per clip | "
        "CPU-s per clip read / label / write |",
        "|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        cpu = r["cpu_s_per_clip"]
        lines.append(
            f"| {r['store']} | {r['seconds'][str(small)]} / {r['seconds'][str(large)]} | "
            f"{r['marginal_ms_per_clip']} | {r['objects_per_clip']} | {cpu.get('read', 0):.3f} / "
            f"{cpu.get('label', 0):.3f} / {cpu.get('write', 0):.3f} |"
        )
    memory = ", ".join(
        f"{m['rows']:,} rows in {m.get('windows', 1)} window(s): {m['peak_mib']} MiB" for m in report["driver_memory"]
    )
    lines += [
        "",
        f"- No-op resume of the {large}-clip summary run, in process after start-up: "
        f"{report['noop_resume']['in_process_s']} s ({report['noop_resume']['pairs']} pairs labeled).",
        f"- `flowlabel --help`: {report['help_s']} s (median of 3, fresh interpreter).",
        f"- Driver memory added by listing and planning a manifest of http clips, window by window: {memory}.",
        "- Driver memory to read the books of an out whose units are settled by pack markers of "
        f"{PACK_UNITS:,} units, and to count the run's done units at its end: "
        + ", ".join(
            f"{m['units']:,} units: {m['peak_mib']} MiB, {m['seconds']} s" for m in report.get("resume_memory", [])
        )
        + ".",
        "- From `flowlabel label --manifest` starting (its own local Ray) to the first data file, local files: "
        + ", ".join(f"{m['rows']:,} rows: {m['seconds']} s" for m in report.get("first_chunk", []))
        + ".",
        "",
    ]
    return lines
