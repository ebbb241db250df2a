"""Exactly-once at corpus scale: 500 short clips from a manifest in SeaweedFS, labeled by a real driver
process that loses a labeler actor, sees the object store restarted and is then SIGKILLed with its Ray;
the re-run must end with exactly the rows (and clip table) of an uninterrupted run, dense and summary.

Outputs are read as datasets (pyarrow), never by file names, so the test holds whatever the file layout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import s3fs

from infra.local_s3 import LocalS3
from jobs.label import LabelJob, LabelResult, add_label_arguments, label_job, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.write.records import ERRORS_DIR, SKIPPED_DIR, read_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CLIPS = 500  # issue 13: at least 500 clips
SIZE, FRAMES = (96, 128), 6  # H, W: the corpus benchmark's clips (jobs/bench_corpus.py)
PAIRS = CLIPS * (FRAMES - 1)
KEYS = ["video_id", "frame0", "frame1"]
FAULTED_WINDOW = 64  # clips per window of the faulted run: 8 windows
WAIT_S = 300  # generous: the machine is shared, and a Ray start or a store restart can take long


@dataclass(frozen=True)
class Corpus:
    """The same clips and manifest, at the same URIs, in two stores: the session's (the uninterrupted
    reference runs) and this module's own (the faulted runs, restarted mid-run), so that both runs can go
    on at once and the restart touches the faulted run only. Same URIs: same video ids and rows."""

    base: str  # s3://bucket/prefix
    manifest: str
    reference: dict  # storage options of the session's store
    faulted: dict  # storage options of this module's store
    store: LocalS3  # this module's store


def put_corpus(folder: Path, names: list[str], root: str, storage_options: dict) -> None:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)
    fs.put([str(folder / n) for n in names], [f"{root}/clips/{n}" for n in names])
    rows = [{"uri": f"s3://{root}/clips/{n}", "clip_id": f"c{i:04d}"} for i, n in enumerate(names)]
    fs.pipe_file(f"{root}/clips.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())


@pytest.fixture(scope="module")
def corpus(local_s3, tmp_path_factory) -> Corpus:
    """CLIPS distinct clips (own texture seed and motion each) and a JSONL manifest of them with a carried
    clip_id, in both stores."""
    local = tmp_path_factory.mktemp("corpus-faults")
    names = [f"clip-{i:04d}.mp4" for i in range(CLIPS)]
    for i, name in enumerate(names):
        write_translating_video(local / name, *SIZE, FRAMES, Motion(0.5 + i % 7 * 0.5, -1.0 + i % 5 * 0.5), seed=i)
    root = f"{local_s3.bucket}/corpus-faults"
    with LocalS3(bucket=local_s3.bucket) as store:
        for so in (local_s3.storage_options, store.storage_options):
            put_corpus(local, names, root, so)
        yield Corpus(f"s3://{root}", f"s3://{root}/clips.jsonl", local_s3.storage_options, store.storage_options, store)


def cli_args(corpus: Corpus, out: str, store: str, storage_options: dict) -> list[str]:
    """One set of arguments for the driver process and the in-process runs: the same settings exactly."""
    return [
        "--manifest",
        corpus.manifest,
        "--carry",
        "clip_id",
        "--store",
        store,
        "--model",
        "dis",
        "--out",
        out,
        "--storage-options",
        json.dumps(storage_options),
    ]


def job_of(args: list[str]) -> LabelJob:
    parser = argparse.ArgumentParser()
    add_label_arguments(parser)
    return label_job(parser.parse_args(args))


def fresh_fs(storage_options: dict) -> s3fs.S3FileSystem:
    # A new client each time: no listing cache, no connection from before a store restart.
    return s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)


def read_dataset(storage_options: dict, path: str) -> pa.Table:
    """Every row of the Parquet dataset at ``path`` (hive partitions restored; '_' folders left out)."""
    dataset = pads.dataset(
        path.removeprefix("s3://"), filesystem=fresh_fs(storage_options), format="parquet", partitioning="hive"
    )
    return dataset.to_table()


def data_objects(storage_options: dict, out: str) -> int:
    """How many data files ``out`` holds (objects outside '_' and '.' folders), or -1 while the store is away."""
    root = out.removeprefix("s3://").rstrip("/")
    try:
        paths = fresh_fs(storage_options).find(root)
    except Exception:  # the store restarting
        return -1
    hidden = (".", "_")
    return sum(not any(part.startswith(hidden) for part in p[len(root) + 1 :].split("/")) for p in paths)


def outputs(so: dict, out: str) -> dict[str, object]:
    """What a run leaves in ``out``: its rows sorted by pair, its clip table sorted by clip, its records."""
    return {
        "rows": read_dataset(so, out).sort_by([(k, "ascending") for k in KEYS]),
        "clips": read_dataset(so, f"{out}/_clips_summary").sort_by([("video_id", "ascending")]),
        "errors": read_records(out, ERRORS_DIR, so),
        "skipped": read_records(out, SKIPPED_DIR, so),
    }


def assert_same_table(got: pa.Table, want: pa.Table, what: str) -> None:
    """Same columns (names and types) and, column by column, the same values (NaN equal to NaN)."""
    assert got.schema == want.schema, f"{what}: schema differs"
    assert got.num_rows == want.num_rows, f"{what}: {got.num_rows} rows, expected {want.num_rows}"
    for name in want.column_names:
        a, b = got[name].combine_chunks(), want[name].combine_chunks()
        if a.equals(b):
            continue
        if pa.types.is_floating(a.type):  # Arrow's equals takes NaN for unequal to itself
            assert a.is_null().equals(b.is_null()), f"{what}.{name}: nulls differ"
            np.testing.assert_array_equal(
                a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), err_msg=f"{what}.{name}"
            )
            continue
        rows = [i for i in range(len(a)) if not a.slice(i, 1).equals(b.slice(i, 1))]
        keys = [tuple(want[k][i].as_py() for k in KEYS if k in want.column_names) for i in rows[:5]]
        raise AssertionError(f"{what}.{name}: {len(rows)} rows differ, the first at {keys}")


class Driver:
    """``python -m jobs.label`` in its own session, starting its own local Ray (RAY_ADDRESS empty)."""

    def __init__(self, args: list[str], log: Path):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
        self.log = log
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobs.label", *args],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._tree: dict[int, psutil.Process] = {}

    def alive(self) -> bool:
        return self.process.poll() is None

    def descendants(self) -> list[psutil.Process]:
        """The driver's processes (its Ray: GCS, raylet, workers), remembered for the clean-up."""
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self._tree.update({p.pid: p for p in found})
        return found

    def labelers(self) -> list[int]:
        """Pids of this driver's labeler actors (not of the test session's own Ray)."""
        out = []
        for p in self.descendants():
            try:
                if any("MapBatches(Labeler)" in part for part in p.cmdline()):
                    out.append(p.pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return out

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Until ``condition`` holds; fails at once when the driver exits first (the run ended or crashed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the driver exited ({self.process.returncode}) before {what}:\n{self.tail()}")
            if condition():
                return
            time.sleep(0.25)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the driver's process group, then its processes that left the group (Ray's workers make
        groups of their own but stay in the driver's session, and in the tree seen before)."""
        self.descendants()
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        for p in [*self._tree.values(), *self.session()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    def session(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(p.pid) == self.process.pid:
                    out.append(p)
        return out

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def interrupted_run(corpus: Corpus, args: list[str], out: str, log: Path) -> None:
    """The driver loses a labeler actor, sees its store restarted, makes progress after each, is SIGKILLed."""
    so = corpus.faulted
    driver = Driver(args, log)
    try:
        driver.wait_for(lambda: data_objects(so, out) >= 2 and len(driver.labelers()) > 0, "first output")
        killed = driver.labelers()[0]
        os.kill(killed, signal.SIGKILL)
        driver.wait_for(lambda: gone(killed), f"labeler {killed} gone")
        driver.wait_for(lambda: set(driver.labelers()) - {killed}, "a labeler replacing the killed one")
        before = data_objects(so, out)
        driver.wait_for(lambda: data_objects(so, out) > before, "output after the actor kill")

        assert driver.alive(), f"the driver ended before the store restart:\n{driver.tail()}"
        corpus.store.restart()
        assert driver.alive(), f"the driver ended during the store restart:\n{driver.tail()}"
        before = data_objects(so, out)
        assert before >= 0, "the restarted store does not answer"
        driver.wait_for(lambda: data_objects(so, out) > before, "output after the store restart")
        assert driver.alive(), "the run finished before the driver could be killed"
    finally:
        driver.kill()
    assert driver.process.returncode == -signal.SIGKILL, driver.tail()


def in_thread(job: LabelJob) -> Callable[[], LabelResult]:
    """Start ``run_label(job)`` in a thread; returns a function that waits for its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = run_label(job)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> LabelResult:
        thread.join(WAIT_S * 2)
        assert not thread.is_alive(), "the reference run did not finish"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return result


@pytest.mark.parametrize("store", ["dense", "summary"])
def test_faults_at_corpus_scale_end_with_the_rows_of_an_uninterrupted_run(ray_local, corpus, store, tmp_path):
    # The reference run (this process's Ray, the session's store) goes on while the driver process is
    # faulted (its own Ray, this module's store): the two share no process and no store.
    reference = f"{corpus.base}/{store}/reference"
    reference_result = in_thread(job_of(cli_args(corpus, reference, store, corpus.reference)))
    out = f"{corpus.base}/{store}/faulted"
    # Each window restarts Ray Data and its actors, which spaces the faulted run's output out: unwindowed,
    # a summary run could finish between the store restart and the driver kill. The reference stays
    # unwindowed, so windows are also checked to leave the rows unchanged.
    args = [*cli_args(corpus, out, store, corpus.faulted), "--window-units", str(FAULTED_WINDOW)]
    interrupted_run(corpus, args, out, tmp_path / "driver.log")
    committed = read_dataset(corpus.faulted, out).num_rows
    assert 0 < committed < PAIRS, f"{committed} pairs committed by the killed driver, expected some but not all"

    result = reference_result()
    assert result.exit_code == 0 and result.pairs == PAIRS and result.errors == []
    want = outputs(corpus.reference, reference)
    assert want["rows"].num_rows == PAIRS and want["clips"].num_rows == CLIPS
    assert set(want["rows"]["clip_id"].to_pylist()) == {f"c{i:04d}" for i in range(CLIPS)}

    again = run_label(job_of(args))
    assert again.exit_code == 0 and again.errors == []
    assert again.settled_before > 0  # the killed run's settled clips are not read again
    # Committed pairs are not labeled twice (but for those of clips whose marker the kill prevented).
    assert PAIRS - committed <= again.pairs < PAIRS

    got = outputs(corpus.faulted, out)
    keys = list(zip(*(got["rows"][k].to_pylist() for k in KEYS)))
    assert len(keys) == len(set(keys)), "duplicate pairs"
    assert_same_table(got["rows"], want["rows"], "rows")
    assert_same_table(got["clips"], want["clips"], "_clips_summary")
    assert got["errors"] == want["errors"] == [] and got["skipped"] == want["skipped"]
