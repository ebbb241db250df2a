"""Exactly-once and resume through the real stack (local Ray): re-runs, partial output, kills."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.label import LabelJob, OutputConflictError, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions
from pipeline.read.decode import DecodeOptions
from pipeline.read.plan import PlanOptions
from pipeline.write.records import settled_units
from pipeline.write.sinks import SinkOptions

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PAIR_BYTES = 2 * 72 * 96 * 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-corpus")
    for i, frames in enumerate((14, 9, 12)):
        write_translating_video(folder / f"clip{i}.mp4", 72, 96, frames, Motion(1.0 + i, 0.5), seed=i)
    return folder


def make_job(corpus, out, **decode):
    # Three pairs per chunk: several chunk files per video, so partial output is possible.
    return LabelJob(
        inputs=(str(corpus),),
        sink=SinkOptions(str(out)),
        labeler=LabelerConfig(model="dis"),
        read=ReadOptions(decode=DecodeOptions(**decode), chunk_bytes=3 * PAIR_BYTES),
    )


def rows(out):
    table = pq.read_table(out, columns=["video_id", "frame0", "frame1", "flow"])
    keys = list(zip(table["video_id"].to_pylist(), table["frame0"].to_pylist(), table["frame1"].to_pylist()))
    flows = dict(zip(keys, (np.asarray(f, np.float16) for f in table["flow"].to_pylist())))
    return keys, flows


@pytest.fixture(scope="module")
def baseline(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "out"
    result = run_label(make_job(corpus, out))
    assert result.exit_code == 0 and result.pairs == 13 + 8 + 11
    return out, rows(out)


def data_files(out):
    return sorted(p for p in Path(out).rglob("*.parquet") if not any(part.startswith("_") for part in p.parts[-4:]))


def test_rerun_of_a_finished_job_does_no_work(ray_local, corpus, baseline):
    out, (keys, _) = baseline
    before = {p: p.stat().st_mtime_ns for p in data_files(out)}
    result = run_label(make_job(corpus, out))
    assert result.pairs == 0 and result.chunks == 0 and result.settled_before == result.units > 0
    assert {p: p.stat().st_mtime_ns for p in data_files(out)} == before
    assert rows(out)[0] == keys


def test_a_rerun_with_nothing_to_do_never_starts_ray(corpus, baseline):
    """The no-op resume in a fresh process: its books say every unit is settled, so it neither plans a Ray
    Data execution nor starts (or joins) a Ray at all."""
    out, _ = baseline
    script = (
        "import sys, ray\n"
        "from tests.test_resume import make_job\n"
        "from jobs.label import run_label\n"
        "result = run_label(make_job(sys.argv[1], sys.argv[2]))\n"
        "print(result.pairs, result.settled_before, ray.is_initialized())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, str(corpus), str(out)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "3", "False"]


def test_partial_output_is_completed_without_duplicates(ray_local, corpus, baseline, tmp_path):
    out, (keys, flows) = baseline
    import shutil

    partial = tmp_path / "out"
    shutil.copytree(out, partial)
    # As if the job had been killed: one video never settled and two of its chunks never written,
    # another video's marker lost after its last chunk was committed.
    markers = sorted((partial / "_units").iterdir())
    files = data_files(partial)
    victim = files[0].parent
    for marker in markers[:2]:
        marker.unlink()
    chunks = sorted(victim.glob("*.parquet"))
    removed, last = chunks[:2], chunks[-1]
    removed_pairs = sum(pq.read_metadata(p).num_rows for p in removed)
    for p in removed:
        p.unlink()

    result = run_label(make_job(corpus, partial))
    # Only the missing chunks are labeled again, plus the unit's last chunk, which carries the
    # unit's chunk list to the driver (and is rewritten identically).
    assert result.pairs == removed_pairs + pq.read_metadata(last).num_rows
    again, again_flows = rows(partial)
    assert sorted(again) == sorted(keys) and len(again) == len(set(again))
    for key in keys:
        np.testing.assert_array_equal(again_flows[key], flows[key])
    assert len(settled_units(str(partial))) == 3


def test_windows_write_the_rows_of_one_run_and_resume_to_nothing(ray_local, corpus, baseline, tmp_path):
    """Windows of 1, then 2 units (4 capped at 2): two executions in one run, exactly the rows of the one-window
    baseline."""
    import json

    _, (keys, flows) = baseline
    out = tmp_path / "out"
    windowed = replace(make_job(corpus, out), plan=PlanOptions(window_units=2, first_window_units=1))
    result = run_label(windowed)
    assert (result.stats["windows"], result.units, result.sources, result.pairs) == (2, 3, 3, 32)
    again, again_flows = rows(out)
    assert sorted(again) == sorted(keys) and len(again) == len(set(again))
    for k in keys:
        np.testing.assert_array_equal(again_flows[k], flows[k])
    record = json.loads((out / "_flowlabel.json").read_text())
    counts = record["counts"]
    assert (counts["units_total"], counts["units_done"], counts["units_failed"]) == (3, 3, 0)
    # The window sizes are kept apart from the plan, which the previous versions compare on resume.
    assert sorted(record["options"]["plan"]) == ["probe_threads", "segment_frames", "split_bytes"]
    assert record["options"]["windows"] == {"window_units": 2, "first_window_units": 1}
    # The label stage's statistics add up over both windows: one row in per frame-pair chunk row.
    label = next(s for s in result.stats["stages"] if s["stage"] == "label")
    assert label["rows_out"] == 32
    # A resume with other window sizes is the same settings: it labels nothing.
    resumed = run_label(make_job(corpus, out))
    assert (resumed.pairs, resumed.settled_before, resumed.stats["windows"]) == (0, 3, 1)
    counts = json.loads((out / "_flowlabel.json").read_text())["counts"]
    assert (counts["units_total"], counts["units_done"], counts["units_failed"]) == (3, 3, 0)


def test_changed_settings_refuse_to_mix(ray_local, corpus, baseline):
    out, _ = baseline
    with pytest.raises(OutputConflictError, match=r"\(read\.decode\.stride: 1 → 2\)"):
        run_label(make_job(corpus, out, stride=2))


def test_sigkill_of_the_driver_then_resume(ray_local, corpus, baseline, tmp_path):
    """A real driver process with its own Ray, killed with SIGKILL once output appears."""
    _, (keys, _) = baseline
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    cmd = [
        sys.executable,
        "-m",
        "jobs.label",
        str(corpus),
        "--out",
        str(out),
        "--chunk-mb",
        str(3 * PAIR_BYTES / 2**20),
    ]
    driver = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not data_files(out) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    # A Ray worker can outlive its killed driver by a moment and commit one more chunk: count what was
    # committed once the files stop changing.
    files, deadline = None, time.monotonic() + 30
    while files != data_files(out) and time.monotonic() < deadline:
        files = data_files(out)
        time.sleep(1.0)
    committed_before = sum(pq.read_metadata(p).num_rows for p in files)
    assert committed_before >= 1

    result = run_label(make_job(corpus, out))
    again, _ = rows(out)
    assert sorted(again) == sorted(keys) and len(again) == len(set(again))
    # Committed chunks are not labeled twice (but for each unfinished unit's last chunk, ≤ 3 pairs).
    assert len(keys) - committed_before <= result.pairs <= len(keys) - committed_before + 3 * 3


def test_unit_tracker_settles_each_unit_once_and_leaves_writer_settled_units_alone():
    """The driver writes a marker for a unit once all its chunks are committed, in any order of arrival,
    and none for a unit the writer settled (all its chunks in one block), even when that unit's last
    summary arrives before its other chunks."""
    from pipeline.write.exactly_once import UnitTracker

    settled = []
    tracker = UnitTracker({"v1": frozenset({"c0"})}, lambda unit, chunks: settled.append((unit, chunks)))

    def summary(video, chunk, unit, chunks="", by_writer=False):
        return {"video_id": video, "chunk": chunk, "unit": unit, "unit_chunks": chunks, "settled": by_writer}

    tracker.add(summary("v1", "c2", "u1", '["c0", "c1", "c2"]'))  # last chunk first; c0 committed earlier
    assert settled == [] and tracker.waiting == ["u1"]
    tracker.add(summary("v1", "c1", "u1"))
    assert settled == [("u1", ["c0", "c1", "c2"])]
    tracker.add(summary("v2", "d1", "u2", '["d0", "d1"]', by_writer=True))  # the writer's, out of order
    tracker.add(summary("v2", "d0", "u2"))
    assert settled == [("u1", ["c0", "c1", "c2"])] and tracker.settled == 2 and tracker.waiting == []
    # A retried task's repeats count once and settle nothing again.
    assert not tracker.add(summary("v1", "c1", "u1")) and not tracker.add(summary("v2", "d1", "u2", '["d0", "d1"]'))
    assert tracker.add(summary("v3", "e0", "u3")) and not tracker.add(summary("v3", "e0", "u3"))
    assert settled == [("u1", ["c0", "c1", "c2"])] and tracker.settled == 2


def test_unit_tracker_counts_each_chunk_once_in_any_order_with_repeats():
    """Against the plain rule (a chunk counts once; every unit settles once, when all its chunks are
    committed): random units, chunks committed by an earlier run, arrival orders and repeated summaries."""
    import json
    import random

    from pipeline.write.exactly_once import UnitTracker

    rng = random.Random(1)
    for _ in range(500):
        units, summaries, committed = {}, [], {}
        for v in range(rng.randint(1, 3)):
            start = 0
            for u in range(rng.randint(1, 3)):
                chunks = [f"{start + i:04d}" for i in range(rng.randint(1, 4))]
                start += len(chunks)
                before = set(rng.sample(chunks, rng.randint(0, len(chunks) - 1)))
                committed.setdefault(f"v{v}", set()).update(before)
                units[f"v{v}-{u}"] = chunks
                # A resumed unit sends its chunks not committed yet, and its last chunk (with the chunk list).
                summaries += [
                    {
                        "video_id": f"v{v}",
                        "unit": f"v{v}-{u}",
                        "chunk": c,
                        "unit_chunks": json.dumps(chunks) if c == chunks[-1] else "",
                    }
                    for c in chunks
                    if c not in before or c == chunks[-1]
                ]
        arrivals = summaries + rng.sample(summaries, rng.randint(0, len(summaries)))
        rng.shuffle(arrivals)
        settled: list = []
        tracker = UnitTracker(
            {v: frozenset(c) for v, c in committed.items()}, lambda *unit, to=settled: to.append(unit)
        )
        assert sum(tracker.add(s) for s in arrivals) == len(summaries)
        assert sorted(settled) == sorted(units.items()) and tracker.waiting == []
