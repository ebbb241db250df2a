"""Stage sizing from cluster resources, the run summary, and the decode path's independence from CUDA.

No Ray cluster needed: ``plan_stages`` takes the resources a cluster would report.
"""

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from ray.data import DataContext

from jobs.cli import build_parser
from jobs.cluster import MIN_ACTORS_WAIT_S, SINGLE_MACHINE_ENV, ClusterOptions, plan_stages
from jobs.options import cluster_options
from jobs.stats import format_stats, placements, run_stats

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 48 * 2**20


@pytest.fixture
def fresh_context():
    """plan_stages sets limits on the process's DataContext: give it a private one."""
    previous = DataContext.get_current()
    DataContext._set_current(copy.deepcopy(previous))
    yield DataContext.get_current()
    DataContext._set_current(previous)


def test_one_actor_per_gpu_and_decode_sized_to_the_actors(fresh_context):
    plan = plan_stages(ClusterOptions(), CHUNK, resources={"CPU": 32.0, "GPU": 4.0})
    pool = plan.label["compute"]
    assert (pool.min_size, pool.max_size, pool.max_tasks_in_flight_per_actor) == (1, 4, 3)
    assert pool.max_concurrent_calls_per_actor == 2 and pool.enable_true_multi_threading
    # GPU actors keep Ray Data's default of one CPU: naming it beside GPUs is "experimental".
    assert plan.label["num_gpus"] == 1.0 and "num_cpus" not in plan.label
    assert plan.read == {"num_cpus": 1.0, "memory": 384 * 2**20 + 8 * CHUNK, "concurrency": 8}
    assert plan.write == {"num_cpus": 0.5}
    assert plan.describe()["labeler"] == {
        "min_actors": 1,
        "max_actors": 4,
        "gpus_per_actor": 1.0,
        "cpus_per_actor": 1.0,
        "tasks_per_actor": 3,
        "calls_per_actor": 2,
    }


def test_fractional_gpus_pack_two_actors_per_gpu(fresh_context):
    plan = plan_stages(ClusterOptions(gpus_per_actor=0.5), CHUNK, resources={"CPU": 32.0, "GPU": 4.0})
    assert plan.label["compute"].max_size == 8 and plan.label["num_gpus"] == 0.5
    capped = plan_stages(ClusterOptions(gpus_per_actor=0.5, actors=3), CHUNK, resources={"CPU": 32.0, "GPU": 4.0})
    assert capped.label["compute"].max_size == 3 and capped.read["concurrency"] == 6
    few_inputs = plan_stages(ClusterOptions(), CHUNK, read_tasks=3, resources={"CPU": 32.0, "GPU": 4.0})
    assert few_inputs.read["concurrency"] == 3


def test_cpu_only_cluster_runs_one_actor_per_cpu_beside_decode_and_write(fresh_context):
    plan = plan_stages(ClusterOptions(), CHUNK, resources={"CPU": 8.0})
    pool = plan.label["compute"]
    assert (pool.min_size, pool.max_size) == (8, 8)  # all up front
    # the actors share what one decode task (1 CPU) and one write task (0.5) leave
    assert plan.label["num_gpus"] == 0.0 and plan.label["num_cpus"] == (8 - 1.0 - 0.5) / 8
    assert plan.read["num_cpus"] == 1.0 and plan.write == {"num_cpus": 0.5}
    one_input = plan_stages(ClusterOptions(), CHUNK, read_tasks=1, resources={"CPU": 8.0}).label["compute"]
    assert (one_input.min_size, one_input.max_size) == (1, 8)
    chosen = plan_stages(ClusterOptions(actors=2, cpus_per_actor=2.0), CHUNK, resources={"CPU": 8.0})
    assert chosen.label["compute"].max_size == 2 and chosen.label["num_cpus"] == 2.0


def test_autoscaling_cluster_without_gpu_nodes_yet_gets_one_gpu_actor(fresh_context):
    # KubeRay / the launcher start GPU workers on demand: asking for GPUs must not fall back to CPU.
    plan = plan_stages(ClusterOptions(gpus_per_actor=1.0), CHUNK, resources={"CPU": 4.0})
    assert plan.label["num_gpus"] == 1.0 and plan.label["compute"].max_size == 1


def test_limits_are_set_and_reset_on_the_data_context(fresh_context):
    plan_stages(
        ClusterOptions(object_store_bytes=2**30, actors=2, min_actors=2), CHUNK, resources={"CPU": 8.0, "GPU": 2.0}
    )
    assert fresh_context.execution_options.resource_limits.object_store_memory == 2**30
    assert fresh_context.wait_for_min_actors_s == MIN_ACTORS_WAIT_S
    plan_stages(ClusterOptions(), CHUNK, resources={"CPU": 8.0, "GPU": 2.0})  # the next run in this process
    assert fresh_context.execution_options.resource_limits.object_store_memory == float("inf")
    assert fresh_context.wait_for_min_actors_s <= 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"actors": 0}, "actors: expected ≥ 1, got 0"),
        ({"actors": 2, "min_actors": 3}, "min_actors: expected 1 to actors"),
        ({"gpus_per_actor": 1.5}, "expected a fraction ≤ 1 or a whole number, got 1.5"),
        ({"tasks_per_actor": 0}, "tasks_per_actor: expected ≥ 1, got 0"),
        ({"calls_per_actor": 0}, "calls_per_actor: expected ≥ 1, got 0"),
        ({"object_store_bytes": 10}, "object_store_bytes: expected ≥ 1 MiB, got 10"),
        ({"address": "ray://head:10001"}, "address: expected a cluster address .* does not run through Ray Client"),
    ],
)
def test_bad_cluster_options_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusterOptions(**kwargs)


def test_more_gpus_per_actor_than_the_cluster_has_is_refused(fresh_context):
    with pytest.raises(ValueError, match="expected ≤ the cluster's 2 GPUs, got 4"):
        plan_stages(ClusterOptions(gpus_per_actor=4), CHUNK, resources={"CPU": 8.0, "GPU": 2.0})


def test_cli_cluster_flags():
    args = build_parser().parse_args(
        [
            "label",
            "in",
            "--out",
            "o",
            "--address",
            "head:6379",
            "--actors",
            "3",
            "--min-actors",
            "2",
            "--gpus-per-actor",
            "0.5",
            "--tasks-per-actor",
            "1",
            "--object-store-mb",
            "512",
        ]
    )
    assert cluster_options(args) == ClusterOptions(
        address="head:6379",
        actors=3,
        min_actors=2,
        gpus_per_actor=0.5,
        tasks_per_actor=1,
        object_store_bytes=512 * 2**20,
    )


def test_run_summary_throughput_utilisation_and_placements():
    stages = [
        {
            "stage": "read",
            "operator": "ReadFramePair",
            "seconds": 4.0,
            "busy_seconds": 6.0,
            "cpu_seconds": 5.0,
            "blocks": 10,
            "rows_in": 0,
            "rows_out": 210,
            "bytes_out": 10_000,
            "failed_tasks": 1,
        },
        {
            "stage": "label",
            "operator": "MapBatches(Labeler)",
            "seconds": 10.0,
            "busy_seconds": 15.0,
            "cpu_seconds": 14.0,
            "blocks": 10,
            "rows_in": 210,
            "rows_out": 200,
            "bytes_out": 5_000,
            "failed_tasks": 0,
        },
        {
            "stage": "write",
            "operator": "MapBatches(write_batch)",
            "seconds": 5.0,
            "busy_seconds": 2.0,
            "cpu_seconds": 2.0,
            "blocks": 10,
            "rows_in": 200,
            "rows_out": 10,
            "bytes_out": 100,
            "failed_tasks": 0,
        },
    ]
    summaries = [
        {"labeled_on": '{"actor": "b", "node": "10.0.0.2", "gpu_ids": ["1"], "device": "cuda:0"}', "pairs": 120},
        {"labeled_on": '{"actor": "a", "node": "10.0.0.1", "gpu_ids": ["0"], "device": "cuda:0"}', "pairs": 50},
        {"labeled_on": '{"actor": "a", "node": "10.0.0.1", "gpu_ids": ["0"], "device": "cuda:0"}', "pairs": 30},
        {"labeled_on": "", "pairs": 0},
    ]
    actors = placements(summaries)
    assert [(a["actor"], a["gpu_ids"], a["pairs"], a["chunks"]) for a in actors] == [
        ("a", ["0"], 80, 2),
        ("b", ["1"], 120, 1),
    ]
    stats = run_stats(stages, actors, pairs=200, seconds=20.0, source_bytes=3000, bytes_written=100, errors=1)
    by = {s["stage"]: s for s in stats["stages"]}
    # read: the run's pairs over its span (its 210 rows are frames, 10 chunks of 20 pairs and 21
    # frames); label: pairs out; write: pairs consumed (it emits one row per chunk).
    assert (by["read"]["pairs_per_second"], by["label"]["pairs_per_second"], by["write"]["pairs_per_second"]) == (
        50.0,
        20.0,
        40.0,
    )
    assert by["label"]["actors"] == 2 and by["label"]["utilisation"] == 0.75  # 15 busy s / (10 s × 2 actors)
    assert stats["pairs_per_second"] == 10.0 and stats["failed_tasks"] == 1
    assert stats["bytes"] == {"sources": 3000, "decoded": 10_000, "written": 100}
    text = "\n".join(format_stats(stats))
    assert "MapBatches(Labeler), 2 actor(s), 75% busy" in text
    assert "actor a on 10.0.0.1: GPU 0 → cuda:0, 80 pairs" in text
    assert "read 2.9 KiB of sources (9.8 KiB decoded), wrote 100 B; 1 task retries" in text
    # Each window starts actors of its own on the same GPUs: one line per GPU, not one per actor.
    windows = [{**a, "actor": f"{a['actor']}{w}"} for w in range(3) for a in actors]
    lines = [line for line in format_stats({**stats, "actors": windows}) if " on 10.0.0." in line]
    assert lines == [
        "3 actors on 10.0.0.1: GPU 0 → cuda:0, 240 pairs",
        "3 actors on 10.0.0.2: GPU 1 → cuda:0, 360 pairs",
    ]


def test_local_ray_listens_on_loopback_only(ray_local):
    """The session's Ray (ray.init after conftest's loopback_only) names its node 127.0.0.1, and
    its servers (GCS, raylet, workers: children of this process) listen on loopback only."""
    assert {node["NodeManagerAddress"] for node in ray_local.nodes()} == {"127.0.0.1"}
    children = psutil.Process().children(recursive=True)
    assert {"gcs_server", "raylet"} <= {p.name() for p in children}
    listening = set()
    for p in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_connect_starts_a_local_ray_on_loopback_even_after_ray_is_imported():
    """As ``flowlabel label`` and the demo run it: the pipeline's modules import ray first, and
    the environment does not ask for Ray's single-machine mode (conftest's is removed)."""
    code = (
        "import json, pipeline.read.datasource, ray\n"
        "from jobs.cluster import ClusterOptions, connect\n"
        "connect(ClusterOptions(local_cpus=1))\n"
        "print(json.dumps(sorted({n['NodeManagerAddress'] for n in ray.nodes()})))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SINGLE_MACHINE_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["127.0.0.1"]


def test_decode_and_write_stages_never_import_torch():
    # Zero-GPU tasks may see every GPU of their node (recent Ray leaves CUDA_VISIBLE_DEVICES
    # alone in them): the read and write stages must not even import torch, let alone init CUDA.
    code = (
        "import sys, pipeline.read.datasource, pipeline.write.sinks, pipeline.read.plan, pipeline.read.sources; "
        "print(sorted(m for m in ('torch', 'models') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_private_ray_switch_loopback_only_sets_still_exists():
    """loopback_only() sets a constant in ray._private (no public API for it once Ray is imported): an upgrade
    that moves or renames it must fail here, not quietly bind a local Ray to every interface."""
    import importlib
    import inspect

    from jobs.cluster import RAY_CLUSTER_SWITCH, RAY_CONSTANTS_MODULE

    constants = importlib.import_module(RAY_CONSTANTS_MODULE)
    assert isinstance(getattr(constants, RAY_CLUSTER_SWITCH), bool)
    assert SINGLE_MACHINE_ENV in inspect.getsource(constants)  # the constant is still read from that variable


def test_map_whole_blocks_keeps_the_private_call_it_wraps_honest(ray_local):
    """jobs.cluster.map_whole_blocks calls Ray Data's private map_batches_internal, because the public
    map_batches refuses whole-block batches with GPUs. An upgrade must fail here: if the private call
    goes or stops giving whole blocks, or if the public one starts accepting them (then use it)."""
    import pyarrow as pa
    import ray

    from jobs.cluster import map_whole_blocks

    ds = ray.data.from_arrow([pa.table({"id": [0, 1, 2]}), pa.table({"id": [3, 4, 5, 6]})])  # one block each
    sizes = map_whole_blocks(ds, lambda batch: {"rows": [len(batch["id"])]}, num_cpus=0.5)
    assert sorted(row["rows"] for row in sizes.take_all()) == [3, 4]  # one call per block, whole
    with pytest.raises(ValueError, match="batch_size"):
        ds.map_batches(lambda batch: batch, batch_size=None, num_gpus=1)
