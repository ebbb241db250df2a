"""``flowlabel bench`` end to end on tiny sizes: every suite runs and the report has its structure.
Never asserts timings (the machine is shared); only that the measurements exist and make sense."""

import json
import shutil
import subprocess
import sys

import pytest

from jobs import bench, bench_model, bench_suites
from jobs.bench import KEEP_MARKER, BenchOptions, run_bench, write_reports
from models import list_models

from .conftest import VIDEOS


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_quick_subset_end_to_end(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_suites, "DECODE_SIZES", {"tiny": (72, 96)})
    monkeypatch.setattr(bench_model, "MODEL_SIZES", {"tiny": (96, 128)})
    monkeypatch.setattr(bench_suites, "PIPELINE_SIZE", (48, 64))
    monkeypatch.setattr(bench_suites, "PIPELINE_FRAMES", 9)
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(VIDEOS / "bear-vp9-odd-dimensions.webm", videos)
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("old tables\n" + KEEP_MARKER + "\n## Log\nkept by hand\n")
    options = BenchOptions(
        quick=True,
        models=("dis",),
        s3=False,
        cache_dir=str(tmp_path / "cache"),
        videos_dir=str(videos),
        json_path=str(tmp_path / "bench.json"),
        markdown_path=str(markdown),
    )
    run_bench(options)

    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["suite_seconds"]) == set(bench.DEFAULT_SUITES)  # feed runs only when asked
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0 and len(machine["load_average_start"]) == 3
    assert {"torch", "ray", "pyarrow", "av"} <= set(machine["versions"])
    suites = report["suites"]

    decode = suites["decode"]
    assert {(r["size"], r["source"], r["decode_threads"]) for r in decode} == {
        ("tiny", "local disk", 1),
        ("tiny", "local disk", "auto"),
    }
    assert all(r["frames"] == 60 and r["frames_per_s"] > 0 and r["frames_per_cpu_s"] > 0 for r in decode)

    [dis] = suites["model"]
    assert (dis["model"], dis["size"], dis["precision"], dis["skipped"]) == ("dis", "tiny", "fp32", "")
    assert dis["batch1"]["batch"] == 1 and dis["batch1"]["pairs_per_s"] > 0 and dis["batch1"]["peak_bytes"] >= 0
    assert dis["best"]["batch"] in (1, 4)

    pipeline = suites["pipeline"]
    small, large = pipeline["end_to_end"]["runs"]
    assert (small["videos"], large["videos"]) == (2, 8) and (small["pairs"], large["pairs"]) == (16, 64)
    assert set(pipeline["stages_alone"]) == {"decode", "label", "write"}
    assert all(s["pairs"] > 0 and s["pairs_per_s"] > 0 for s in pipeline["stages_alone"].values())
    # tiny runs are start-up dominated: the steady state (a difference of two timings) can come out
    # at any value here, so only its presence is checked
    assert pipeline["slowest_stage"] in pipeline["stages_alone"] and isinstance(pipeline["efficiency"], float)
    alone_rates = [r["pairs_per_s"] for r in pipeline["stages_alone"].values()]
    assert pipeline["all_stages_pairs_per_s"] == pytest.approx(1 / sum(1 / r for r in alone_rates))
    steady = pipeline["end_to_end"]["steady_pairs_per_s"]
    assert pipeline["machine_efficiency"] == pytest.approx(steady / pipeline["all_stages_pairs_per_s"])

    output = suites["output"]
    assert {r["encoding"] for r in output} == {"int16", "float16"}
    for r in output:
        assert r["video"] == "bear-vp9-odd-dimensions.webm" and r["size"] == "161×121" and r["pairs"] == 2
        assert 0 < r["labels_bytes_per_pixel"] < r["file_bytes_per_pixel"]
    int16 = next(r for r in output if r["encoding"] == "int16")
    assert int16["flow_error_max_px"] <= 1 / 128 + 1e-6

    text = markdown.read_text()
    for heading in ("## Decode", "## Models", "## Pipeline", "## Output size and precision"):
        assert heading in text
    assert "old tables" not in text and text.endswith(KEEP_MARKER + "\n## Log\nkept by hand\n")


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_cli_quick_run(tmp_path):
    """The real ``flowlabel bench --quick`` (as ``make bench`` runs it) as a smoke run: every suite
    finishes without an error and covers what it should; its numbers are not judged."""
    json_path, markdown = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "bench",
            "--quick",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(json_path),
            "--markdown",
            str(markdown),
            "--videos",
            str(VIDEOS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(json_path.read_text())
    suites = report["suites"]
    assert not [name for name, r in suites.items() if isinstance(r, dict) and "error" in r]
    assert {r["size"] for r in suites["decode"]} == set(bench_suites.DECODE_SIZES)
    assert {r["source"] for r in suites["decode"]} == {"local disk", "SeaweedFS S3"}
    assert {r["model"] for r in suites["model"]} == set(list_models())
    measured = {r["model"] for r in suites["model"] if not r["skipped"]}
    # The classical models take ~0.2 s per pair here, 50× under the quick budget; whether a learned
    # model fits depends on the machine's speed and load, so only its reason is checked.
    assert {"dis", "farneback"} <= measured
    for r in suites["model"]:
        assert bool(r["skipped"]) != bool(r["batch1"]), r
        assert not r["skipped"] or any(w in r["skipped"] for w in ("budget", "GiB", "killed after")), r["skipped"]
    assert suites["pipeline"]["end_to_end"]["runs"][1]["pairs"] == 8 * (bench_suites.PIPELINE_FRAMES - 1)
    assert {r["video"] for r in suites["output"]} == {p.name for p in bench_suites.real_videos(VIDEOS)}
    assert "## Pipeline" in markdown.read_text()


def test_reports_keep_the_text_below_the_marker(tmp_path):
    report = {"machine": bench.machine(), "options": {"quick": True, "device": "cpu"}, "suites": {}}
    markdown = tmp_path / "B.md"
    write_reports(report, tmp_path / "b.json", markdown)
    assert markdown.read_text().count(KEEP_MARKER) == 1
    markdown.write_text(markdown.read_text() + "notes\n")
    write_reports(report, tmp_path / "b.json", markdown)
    text = markdown.read_text()
    assert text.count(KEEP_MARKER) == 1 and text.endswith(KEEP_MARKER + "\nnotes\n")
    assert json.loads((tmp_path / "b.json").read_text())["machine"]["cores"] >= 1


def test_bad_options():
    with pytest.raises(ValueError, match="device"):
        BenchOptions(device="tpu")
    with pytest.raises(ValueError, match="suites"):
        BenchOptions(suites=("decode", "network"))


def test_corpus_table_and_driver_memory_probe():
    """The corpus suite's report renders every run and measure; the memory probe plans every manifest row."""
    from jobs.bench_corpus import _driver_memory, _resume_memory, corpus_table

    memory = _driver_memory(50)
    assert (memory["rows"], memory["units"], memory["windows"]) == (50, 50, 1) and memory["peak_mib"] > 0
    resume = _resume_memory(10_001)  # 11 pack markers, the last of one unit; the count crosses KeySet merges
    assert (resume["units"], resume["done"]) == (10_001, 5_001) and resume["peak_mib"] > 0
    report = {
        "clip": {"height": 96, "width": 128, "frames": 6},
        "sizes": [40, 200],
        "runs": [
            {
                "store": "summary",
                "seconds": {"40": 11.07, "200": 31.19},
                "marginal_ms_per_clip": 125.8,
                "objects_per_clip": 2.01,
                "cpu_s_per_clip": {"read": 0.014, "label": 0.031, "write": 0.009},
            }
        ],
        "noop_resume": {"in_process_s": 0.25, "pairs": 0},
        "help_s": 0.059,
        "driver_memory": [memory],
        "resume_memory": [resume],
        "first_chunk": [{"rows": 1000, "seconds": 14.7}, {"rows": 1000000, "seconds": 15.2}],
    }
    text = "\n".join(corpus_table(report))
    assert "first data file, local files: 1,000 rows: 14.7 s, 1,000,000 rows: 15.2 s." in text
    assert "| summary | 11.07 / 31.19 | 125.8 | 2.01 | 0.014 / 0.031 / 0.009 |" in text
    assert "0.25 s (0 pairs labeled)" in text and "50 rows in 1 window(s): " in text
    assert f"count the run's done units at its end: 10,001 units: {resume['peak_mib']} MiB" in text


@pytest.mark.slow
def test_first_chunk_probe_times_a_real_run_to_its_first_data_file(tmp_path):
    """The probe starts a real ``flowlabel label`` (its own Ray), sees its first data file and stops it."""
    from jobs.bench_corpus import _first_chunk
    from jobs.synthetic import Motion, write_translating_video

    clips = [tmp_path / f"c{i}.mp4" for i in range(2)]
    for i, clip in enumerate(clips):
        write_translating_video(clip, 48, 64, 4, Motion(1.0, 0.0), seed=i)
    first = _first_chunk(clips, 50)
    assert first["rows"] == 50 and 0 < first["seconds"] < 600
