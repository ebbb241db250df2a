"""Fault injection through the real stack: a labeler actor killed, the object store restarted."""

import os
import signal
import threading
import time

import psutil
import pyarrow.dataset as pads
import pytest
import s3fs

from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions
from pipeline.write.sinks import SinkOptions

pytestmark = pytest.mark.slow
SIZE = (120, 160)
PAIR_BYTES = 2 * SIZE[0] * SIZE[1] * 3
FRAMES = (16, 12, 14)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-corpus")
    for i, n in enumerate(FRAMES):
        write_translating_video(folder / f"v{i}.mp4", *SIZE, n, Motion(1.5, -0.5), seed=i)
    return folder


def job(inputs, out, storage_options=None):
    # Farnebäck and one pair per chunk: the run lasts long enough to be interrupted mid-way.
    return LabelJob(
        inputs=inputs,
        sink=SinkOptions(out),
        labeler=LabelerConfig(model="farneback"),
        read=ReadOptions(chunk_bytes=PAIR_BYTES),
        storage_options=storage_options or {},
    )


def run_in_thread(label_job):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", run_label(label_job)), daemon=True)
    thread.start()
    return thread, box


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def pair_keys(table):
    return list(zip(table["source"].to_pylist(), table["frame0"].to_pylist(), table["frame1"].to_pylist()))


def expected(base):
    return {(f"{base}/v{i}.mp4", k, k + 1) for i, n in enumerate(FRAMES) for k in range(n - 1)}


def labeler_pids():
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("MapBatches(Labeler)" in part for part in (p.info["cmdline"] or []))
    ]


def test_killed_labeler_actor_is_restarted_and_nothing_is_lost_or_duplicated(ray_local, corpus, tmp_path):
    out = tmp_path / "out"
    thread, box = run_in_thread(job((str(corpus),), str(out)))
    assert wait_for(lambda: len(list(out.rglob("*.parquet"))) >= 2 and labeler_pids())
    killed = labeler_pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert thread.is_alive(), "the run finished before the actor could be killed"
    # The pool goes on in fresh processes: a labeler process that is not one of the killed ones appears.
    assert wait_for(lambda: set(labeler_pids()) - set(killed)), "no new labeler process replaced the killed ones"
    thread.join(300)
    result = box["result"]
    assert result.exit_code == 0 and result.errors == []
    keys = pair_keys(pads.dataset(out, format="parquet", partitioning="hive").to_table())
    assert len(keys) == len(set(keys)) and set(keys) == expected(str(corpus))


def test_object_store_restart_mid_run_is_survived(ray_local, local_s3, corpus):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)
    base = f"s3://{local_s3.bucket}/faults"
    fs.put(str(corpus), f"{base}/in", recursive=True)
    out = f"{base}/out"

    def written():
        fs.invalidate_cache()
        return fs.exists(out) and sum(p.endswith(".parquet") for p in fs.find(out)) >= 2

    thread, box = run_in_thread(job((f"{base}/in/",), out, local_s3.storage_options))
    assert wait_for(written)
    local_s3.restart()
    assert thread.is_alive(), "the run finished before the store was restarted"
    thread.join(400)
    result = box["result"]
    assert result.exit_code == 0, result.errors
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)
    table = pads.dataset(out.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive").to_table()
    keys = pair_keys(table)
    assert len(keys) == len(set(keys)) and set(keys) == expected(f"{base}/in")
