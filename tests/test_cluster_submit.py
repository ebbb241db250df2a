"""A real multi-process Ray cluster on loopback, token auth on, two fake GPUs: `ray job submit` of
`flowlabel label` with the project's working dir and infra/runtime_env.yaml, as on a real cluster.

The job's driver runs inside that cluster, not in this process, so the session's in-process
Ray (the ``ray_local`` fixture) is neither used nor disturbed.
"""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infra.local_ray import LocalRayCluster
from jobs.synthetic import Motion, write_translating_video
from pipeline.write.run_manifest import MANIFEST_NAME

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = ROOT / "infra" / "runtime_env.yaml"
# One chunk per video, each taking the labeler longer (~1 s of DIS) than decoding the next
# video takes a read task: with one chunk in flight per actor, both actors get work.
VIDEOS, FRAMES, HEIGHT, WIDTH = 4, 21, 160, 208
PAIRS = VIDEOS * (FRAMES - 1)
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster():
    # 4 logical CPUs on a 2-core machine: two labeler actors hold one each, decode and write
    # tasks need the rest. 2 GPUs that CUDA cannot see: Ray still assigns their ids.
    with LocalRayCluster(num_cpus=4, num_gpus=2) as c:
        yield c


def submit(cluster: LocalRayCluster, submission_id: str, entrypoint: list[str]) -> None:
    """The README's command line: `ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- …`."""
    ray = Path(cluster.env["PATH"].split(":")[0]) / "ray"
    subprocess.run(
        [
            str(ray),
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--runtime-env",
            str(RUNTIME_ENV),
            "--no-wait",
            "--",
            *entrypoint,
        ],
        cwd=ROOT,
        env=cluster.env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait(cluster: LocalRayCluster, submission_id: str):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(submission_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            pytest.fail(f"job {submission_id} still {status} after {JOB_TIMEOUT_S} s")
        time.sleep(0.5)
    return status, client.get_job_logs(submission_id)


def test_the_job_server_refuses_requests_without_the_token(cluster):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=10)
    assert err.value.code == 401
    with urllib.request.urlopen(
        urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/", headers=cluster.headers), timeout=10
    ) as ok:
        assert ok.status == 200


def test_submitted_label_job_runs_one_actor_per_gpu(cluster, tmp_path):
    corpus, out = tmp_path / "clips", tmp_path / "labels"
    corpus.mkdir()
    for i in range(VIDEOS):
        write_translating_video(corpus / f"clip{i}.mp4", HEIGHT, WIDTH, FRAMES, Motion(2.0, 1.0), seed=i)
    # One chunk in flight per actor and both actors up before data flows: each gets work.
    submit(
        cluster,
        "flowlabel-gpus",
        [
            "flowlabel",
            "label",
            str(corpus),
            "--out",
            str(out),
            "--actors",
            "2",
            "--min-actors",
            "2",
            "--gpus-per-actor",
            "1",
            "--tasks-per-actor",
            "1",
        ],
    )
    status, logs = wait(cluster, "flowlabel-gpus")
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"labeled {PAIRS} pairs from {VIDEOS} sources" in logs

    table = pq.read_table(out)
    rows = set(zip(table["source"].to_pylist(), table["frame0"].to_pylist(), table["frame1"].to_pylist()))
    assert len(rows) == table.num_rows == PAIRS
    assert rows == {(str(corpus / f"clip{i}.mp4"), k, k + 1) for i in range(VIDEOS) for k in range(FRAMES - 1)}

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["status"] == "finished"
    stats = manifest["stats"]
    assert manifest["counts"]["chunks"] == VIDEOS
    # Two labeler actors, each holding its own GPU id; no CUDA here, so each model fell back to the CPU.
    actors = stats["actors"]
    assert sorted(tuple(a["gpu_ids"]) for a in actors) == [("0",), ("1",)], json.dumps(stats, indent=1)
    assert {a["device"] for a in actors} == {"cpu"} and all(a["pairs"] > 0 for a in actors)
    assert sum(a["pairs"] for a in actors) == PAIRS
    assert manifest["plan"]["labeler"] == {
        "min_actors": 2,
        "max_actors": 2,
        "gpus_per_actor": 1.0,
        "cpus_per_actor": 1.0,
        "tasks_per_actor": 1,
        "calls_per_actor": 2,
    }
    assert manifest["plan"]["cluster"] == {"CPU": 4.0, "GPU": 2.0}
    # Ray Data's per-stage stats: every stage saw every pair.
    by_stage = {s["stage"]: s for s in stats["stages"]}
    assert set(by_stage) == {"read", "label", "write"}
    # The reader sends each frame once (one chunk per video: its pairs plus one frame); the labeler pairs them.
    assert by_stage["read"]["rows_out"] == PAIRS + VIDEOS
    assert by_stage["label"]["rows_out"] == by_stage["write"]["rows_in"] == PAIRS
    assert by_stage["label"]["actors"] == 2 and 0 < by_stage["label"]["utilisation"] <= 1
    assert stats["bytes"]["sources"] == sum(p.stat().st_size for p in corpus.iterdir())
    assert (PAIRS + VIDEOS) * HEIGHT * WIDTH * 3 <= stats["bytes"]["decoded"] < PAIRS * 2 * HEIGHT * WIDTH * 3
    assert stats["bytes"]["written"] == manifest["counts"]["bytes_written"] > 0


def test_tasks_without_gpus_see_none_under_the_runtime_env(cluster):
    # Recent Ray leaves CUDA_VISIBLE_DEVICES unset in zero-GPU tasks (they could reach every GPU);
    # infra/runtime_env.yaml restores the empty value, as decode tasks should see it.
    probe = (
        "import os, ray; ray.init(); "
        "seen = ray.remote(num_cpus=1)(lambda: os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); "
        "print('decode task sees CUDA_VISIBLE_DEVICES=%r' % ray.get(seen.remote()))"
    )
    submit(cluster, "cuda-probe", ["python", "-c", probe])
    status, logs = wait(cluster, "cuda-probe")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "decode task sees CUDA_VISIBLE_DEVICES=''" in logs
