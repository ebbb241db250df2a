"""Connecting to Ray and sizing the stages (decode tasks, labeler actors, writers) from the cluster.

The labeler is the expensive stage: one actor per GPU (or per ``gpus_per_actor`` of one).
Decoding runs in CPU tasks beside the actors; its concurrency is tied to the number of
actors so that decoded frames cannot pile up faster than the GPUs consume them.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any

LOOPBACK = "127.0.0.1"
# Set by `ray job submit` (and by users) for a driver that should join an existing cluster.
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# "0": Ray's single-machine mode, everything on loopback (see loopback_only).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray has no public API for the switch once imported: the module constant it was read into is private. This is
# the project's only use of a private Ray API (the logger names below are names only: a rename brings back a
# message, nothing breaks); test_cluster.py fails if an upgrade moves or renames it.
RAY_CONSTANTS_MODULE, RAY_CLUSTER_SWITCH = "ray._private.ray_constants", "ENABLE_RAY_CLUSTER"
# Where Ray logs that it turned token authentication on for a new local cluster.
AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# The Ray Data loggers of the progress bars' "disabled" warning and of the per-dataset "execution finished" line.
RAY_DATA_PROGRESS_LOGGERS = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")
# A read task's process before it decodes: Python with Ray's worker, pyarrow, PyAV and OpenCV loaded (the imports
# alone take 110 MiB of unique memory; a worker reading 48 MiB chunks of 960×540 frames peaked at 245 MiB plus
# Ray's own). Without it the request was 8 × the chunk alone, under what Ray Data measured, and it said so.
READ_TASK_BASE_BYTES = 384 * 2**20
MIN_ACTORS_WAIT_S = 600  # GPU nodes of an autoscaling cluster take minutes to come up
MIN_BLOCK_BYTES = 128 * 2**20  # Ray Data's default target_max_block_size


@dataclass(frozen=True)
class ClusterOptions:
    """Where the job runs and how its stages are sized.

    address: Ray address ("auto", "host:6379"); None joins ``$RAY_ADDRESS`` when set (as in a job
      submitted with ``ray job submit``), else starts a local Ray on 127.0.0.1. Not "ray://…":
      Ray Data, which runs the pipeline, does not run through Ray Client.
    actors: max labeler actors (default: one per ``gpus_per_actor`` of the cluster's GPUs, or
      one per CPU without GPUs). min_actors: actors started up front; the pool grows to
      ``actors`` with demand (an autoscaling cluster adds GPU nodes as it grows). Without GPUs
      every actor starts up front, each asking for the CPUs the decode and write tasks leave.
    gpus_per_actor: GPUs each labeler actor holds, e.g. 0.5 puts two actors on one GPU
      (default 1 when the cluster has GPUs, else 0).
    tasks_per_actor: batches queued on each actor (Ray Data's ``max_tasks_in_flight_per_actor``):
      3 lets the next chunk travel to the actor while two are labeled, without a deep queue.
    calls_per_actor: chunks an actor labels at once (Ray Data's ``max_concurrent_calls_per_actor``):
      2 overlaps one chunk's host work (unpacking, packing rows) with the other's device work; the
      labeler's device lock keeps one chunk at a time on the device.
    read_tasks_per_actor: concurrent decode tasks per labeler actor (at least 2 in all).
    object_store_bytes: cap on the object store memory this job's blocks may use (default:
      Ray Data's share of the cluster's object store).
    local_cpus: CPUs of a local Ray (default: all).
    local_gpus: GPUs a local Ray declares (default: Ray's own count of the machine's GPUs); the
      feed benchmark declares GPUs a machine lacks, for its stand-in accelerator.
    runtime_env: Ray runtime environment of the job (``--runtime-env``), given to ``ray.init``: e.g.
      ``py_modules`` / ``working_dir`` ship a plugin model's code to the workers (read_runtime_env).
    """

    address: str | None = None
    actors: int | None = None
    min_actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    tasks_per_actor: int = 3
    calls_per_actor: int = 2
    reader_cpus: float = 1.0
    read_tasks_per_actor: float = 2.0
    writer_cpus: float = 0.5
    object_store_bytes: int | None = None
    local_cpus: int | None = None
    local_gpus: int | None = None
    runtime_env: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.address and self.address.startswith("ray://"):
            # Ray Data's executor needs a driver connected to the GCS; through Ray Client it
            # fails at the first batch ("'Worker' object has no attribute 'core_worker'").
            raise ValueError(
                f"address: expected a cluster address (auto, host:6379), got {self.address!r}: "
                "the pipeline does not run through Ray Client; submit it with `ray job submit` "
                "or run it on the head node with --address auto"
            )
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors: expected ≥ 1, got {self.actors}")
        if self.min_actors < 1 or (self.actors is not None and self.min_actors > self.actors):
            raise ValueError(f"min_actors: expected 1 to actors ({self.actors}), got {self.min_actors}")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor <= 8:
            raise ValueError(f"gpus_per_actor: expected 0 to 8, got {self.gpus_per_actor}")
        if self.gpus_per_actor and self.gpus_per_actor > 1 and not float(self.gpus_per_actor).is_integer():
            # Ray only packs fractions below one GPU; 1.5 GPUs cannot be assigned.
            raise ValueError(f"gpus_per_actor: expected a fraction ≤ 1 or a whole number, got {self.gpus_per_actor}")
        if self.tasks_per_actor < 1:
            raise ValueError(f"tasks_per_actor: expected ≥ 1, got {self.tasks_per_actor}")
        if self.calls_per_actor < 1:
            raise ValueError(f"calls_per_actor: expected ≥ 1, got {self.calls_per_actor}")
        if self.read_tasks_per_actor <= 0:
            raise ValueError(f"read_tasks_per_actor: expected > 0, got {self.read_tasks_per_actor}")
        if self.object_store_bytes is not None and self.object_store_bytes < 2**20:
            raise ValueError(f"object_store_bytes: expected ≥ 1 MiB, got {self.object_store_bytes}")


@dataclass(frozen=True)
class StagePlan:
    """Keyword arguments for the three Ray Data calls, decided from the options and the cluster.

    read: for ``ray.data.read_datasource``; label: for ``map_batches(Labeler, …)`` (compute
    strategy and per-actor resources); write: for ``map_batches(write_batch, …)``.
    """

    read: dict[str, Any]
    label: dict[str, Any]
    write: dict[str, Any]
    max_actors: int
    gpus_per_actor: float
    cluster_gpus: float
    cluster_cpus: float
    limits: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The plan as plain JSON for ``_flowlabel.json``."""
        pool = self.label["compute"]
        return {
            "cluster": {"CPU": self.cluster_cpus, "GPU": self.cluster_gpus},
            "labeler": {
                "min_actors": pool.min_size,
                "max_actors": self.max_actors,
                "gpus_per_actor": self.gpus_per_actor,
                "cpus_per_actor": self.label.get("num_cpus", 1.0),
                "tasks_per_actor": pool.max_tasks_in_flight_per_actor,
                "calls_per_actor": pool.max_concurrent_calls_per_actor,
            },
            "read": {
                "concurrency": self.read["concurrency"],
                "cpus": self.read["num_cpus"],
                "memory_bytes": self.read["memory"],
            },
            "write": {"cpus": self.write["num_cpus"]},
            "limits": dict(self.limits),
        }


def connect(options: ClusterOptions) -> None:
    """Join the cluster at ``options.address`` (or ``$RAY_ADDRESS``), or start a local Ray bound to loopback.

    Does nothing when Ray is already initialized in this process (tests, notebooks).
    Progress bars show in interactive use only: on a terminal, outside CI.
    """
    import ray
    from ray.data import DataContext

    # Local code in a runtime env (working_dir, py_modules) is uploaded only by ray.init: Ray
    # refuses local paths in a task's or actor's own runtime env.
    env = {"runtime_env": dict(options.runtime_env)} if options.runtime_env else {}
    if ray.is_initialized() and env:
        raise ValueError(
            "runtime_env: Ray is already initialized in this process, so the job's runtime env "
            "cannot be applied; pass it to ray.init there, or run the job in a fresh process"
        )
    if not ray.is_initialized():
        address = options.address or os.environ.get(RAY_ADDRESS_ENV) or None
        if address:
            # Token auth (RAY_AUTH_MODE=token) needs no argument: Ray reads RAY_AUTH_TOKEN,
            # RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token itself.
            ray.init(address=address, logging_level=logging.WARNING, **env)
        else:
            cpus = options.local_cpus or os.cpu_count() or 1
            loopback_only()
            # Ray turns token authentication on for a new local cluster and warns that it did (when
            # RAY_AUTH_MODE is unset). That is the setting wanted here, so the warning is noise; setting the
            # variable instead would not do: Ray reads it into its config when it is imported.
            logging.getLogger(AUTH_SETUP_LOGGER).setLevel(logging.ERROR)
            ray.init(
                num_cpus=options.local_cpus,
                num_gpus=options.local_gpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                logging_level=logging.WARNING,
                _system_config=local_system_config(cpus),
                **env,
            )
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = interactive
    ctx.print_on_execution_start = interactive  # the execution plan banner; quiet in CI and in job logs
    if not interactive:
        # Without progress bars Ray Data warns once that they are off and logs each dataset's "execution
        # finished": the run's own summary says both. Its warnings and errors still show.
        for name in RAY_DATA_PROGRESS_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR if name.endswith("progress") else logging.WARNING)


def read_runtime_env(text: str) -> dict[str, Any]:
    """``--runtime-env``: a JSON or YAML file, or an inline JSON object → the runtime env dict."""
    import yaml

    source = text
    if not text.lstrip().startswith("{"):
        try:
            with open(text, encoding="utf-8") as f:
                source = f.read()
        except OSError as exc:
            raise ValueError(f"runtime_env: expected a JSON/YAML file or a JSON object, got {text!r}: {exc}") from None
    try:
        value = yaml.safe_load(source)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ValueError(f"runtime_env: {text!r} is neither JSON nor YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"runtime_env: expected a mapping (py_modules, working_dir, env_vars, …) in {text!r}, "
            f"got {type(value).__name__}"
        )
    return value


def local_code_paths(runtime_env: Mapping[str, Any] | None) -> list[str]:
    """The sys.path entries that make a runtime env's local code importable on the driver itself: the
    working_dir, and the folder holding each local py_modules package or .py file (wheels as they are).

    Ray ships this code to the workers only; the driver imports the model too (its start-up check).
    """
    env = runtime_env or {}
    paths = [env["working_dir"]] if isinstance(env.get("working_dir"), str) else []
    for module in env.get("py_modules") or []:
        if isinstance(module, str):
            paths.append(module if module.endswith(".whl") else os.path.dirname(os.path.abspath(module)))
    return [os.path.abspath(p) for p in paths if "://" not in p and os.path.exists(p)]


def loopback_only() -> None:
    """Keep a local Ray that this process is about to start on 127.0.0.1.

    ``ray.init`` turns a 127.0.0.1 node address into the machine's outward one and its servers
    listen on every interface; Ray's single-machine mode (its default on macOS and Windows)
    keeps the node and its servers on loopback. Ray reads the switch from the environment when
    it is imported (the processes it starts inherit it) and ``ray.init`` reads the constant it
    was read into: when ``ray`` is already imported (the pipeline's modules import it), the
    constant is set too. A user's own ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` is respected.
    """
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    constants = sys.modules.get(RAY_CONSTANTS_MODULE)
    if constants is not None and hasattr(constants, RAY_CLUSTER_SWITCH) and os.environ[SINGLE_MACHINE_ENV] == "0":
        setattr(constants, RAY_CLUSTER_SWITCH, False)


def local_system_config(cpus: int) -> dict[str, int]:
    """Ray settings of a local cluster with ``cpus`` CPUs.

    Ray keeps about one idle worker process per CPU and kills the rest after a second idle;
    without GPUs the labeler actors hold one process per CPU, so every decode or write task
    found no warm worker and paid a fresh interpreter and its imports (pyarrow, PyAV): 0.035
    CPU-s per written pair instead of 0.028 at 960×540 (BENCHMARKS.md). Room for one task
    process per CPU beside the actors keeps them warm. On a cluster this is the nodes'
    ``RAY_num_workers_soft_limit`` (infra/README.md).
    """
    return {"num_workers_soft_limit": 2 * cpus + 2}


def block_bytes(chunk_bytes: int) -> int:
    """Ray Data's ``target_max_block_size`` for a run with chunks of ``chunk_bytes``: at least 4 chunks.

    Each read and map task joins the blocks it yields until they pass this size, then cuts the joined
    block into pieces of this size by rows if it reached 1.5 times it, and a cut would split a chunk (a
    chunk's file would be written from half its rows). The joined block is at most this size plus one
    yield, and every stage yields at most about a chunk's worth of frames or labels at a time (the labeler
    whole chunks of at most ``chunk_bytes`` of labels, or one chunk: pipeline.label.labeler.split_at_chunks;
    a dense chunk's labels are 1 to 1.2 times its frames), so 4 chunks keep it below 1.5 times: never cut.
    (One pair of frames above ``chunk_bytes`` / 2 each is a chunk larger than ``chunk_bytes``; should
    such a chunk be cut, the writer refuses it, :func:`pipeline.write.sinks.check_whole`.)
    """
    return max(MIN_BLOCK_BYTES, 4 * chunk_bytes)


def plan_stages(
    options: ClusterOptions,
    chunk_bytes: int,
    read_tasks: int | None = None,
    resources: Mapping[str, float] | None = None,
) -> StagePlan:
    """Size the stages from the cluster's resources (default: the connected cluster's
    ``ray.cluster_resources()``); sets Ray Data's resource limits on the current DataContext.

    ``chunk_bytes`` (frames of one chunk) sizes a decode task's memory request; ``read_tasks``
    (the number of read units, when known) caps the decode concurrency.
    """
    from ray.data import ActorPoolStrategy, DataContext, ExecutionResources
    from ray.data.context import DEFAULT_WAIT_FOR_MIN_ACTORS_S

    if resources is None:
        import ray

        resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if per_actor > 0 and gpus and per_actor > gpus:
        raise ValueError(f"gpus_per_actor: expected ≤ the cluster's {gpus:g} GPUs, got {per_actor:g}")
    if options.actors is not None:
        max_size = options.actors
    elif per_actor > 0:
        # An autoscaling cluster may start with no GPU node: one actor then waits for the first.
        max_size = max(1, int(gpus // per_actor))
    else:
        # No GPUs: the actors are the CPU work (decode and write are a few % of it, BENCHMARKS.md).
        max_size = max(1, int(cpus))
    # Without GPUs the actors start at once (as many as there are read tasks to feed them): the
    # CPUs are there already, and a pool growing from one leaves them idle while the first
    # chunks queue on it.
    min_size = min(max_size, read_tasks or max_size) if not per_actor else min(options.min_actors, max_size)
    pool = ActorPoolStrategy(
        min_size=min_size,
        max_size=max_size,
        max_tasks_in_flight_per_actor=options.tasks_per_actor,
        max_concurrent_calls_per_actor=options.calls_per_actor,
        enable_true_multi_threading=options.calls_per_actor > 1,
    )
    read_concurrency = max(2, math.ceil(options.read_tasks_per_actor * max_size))
    if read_tasks is not None:
        read_concurrency = max(1, min(read_concurrency, read_tasks))  # Ray Data warns about idle slots
    # Set (or reset) on every plan: the DataContext outlives a run in a notebook or test session.
    ctx = DataContext.get_current()
    ctx.execution_options.resource_limits = ExecutionResources.for_limits(
        object_store_memory=options.object_store_bytes
    )
    # With min_actors > 1 the data starts only when those actors are up, so the first chunks
    # do not all queue on the actor that happened to start first.
    ctx.wait_for_min_actors_s = MIN_ACTORS_WAIT_S if min_size > 1 else DEFAULT_WAIT_FOR_MIN_ACTORS_S
    ctx.target_max_block_size = block_bytes(chunk_bytes)
    limits = {
        "object_store_bytes": options.object_store_bytes,
        "wait_for_min_actors_s": MIN_ACTORS_WAIT_S if min_size > 1 else None,
        "block_bytes": ctx.target_max_block_size,
    }
    # A read task holds a chunk of frames plus the decoder's buffers: telling Ray its memory
    # keeps many 4K decodes off one node, and the differing resources keep Ray from fusing the
    # read into the labeler actors, so decoding runs in CPU tasks beside them, not inside them.
    # Its concurrency bounds the decoded frames in flight: each read task is a streaming
    # generator that Ray pauses when its unconsumed blocks pile up.
    read = {
        "num_cpus": options.reader_cpus,
        "memory": READ_TASK_BASE_BYTES + 8 * chunk_bytes,
        "concurrency": read_concurrency,
    }
    label = {"compute": pool, "num_gpus": per_actor}
    if not per_actor and options.cpus_per_actor == 1.0:
        # One actor per CPU asking a whole CPU each would leave none for the decode and write
        # tasks (Ray Data then holds the pool at one actor, measured): they share what those leave.
        label["num_cpus"] = max(0.1, (cpus - options.reader_cpus - options.writer_cpus) / max_size)
    elif not per_actor or options.cpus_per_actor != 1.0:
        # GPU actors reserve 1 CPU by Ray Data's default; naming CPUs beside GPUs is flagged
        # "experimental" by Ray Data, so it is left out unless asked for.
        label["num_cpus"] = options.cpus_per_actor
    write = {"num_cpus": options.writer_cpus}
    return StagePlan(
        read=read,
        label=label,
        write=write,
        max_actors=max_size,
        gpus_per_actor=per_actor,
        cluster_gpus=gpus,
        cluster_cpus=cpus,
        limits=limits,
    )


def actor_pool(options: ClusterOptions) -> tuple[Any, dict[str, float]]:
    """(ActorPoolStrategy, per-actor resources) for a model stage (the scoring job's scorers): one
    call at a time per actor, as its UDF holds no device lock (OpenCV's DIS keeps per-call state)."""
    plan = plan_stages(replace(options, calls_per_actor=1), chunk_bytes=0)
    return plan.label["compute"], {k: v for k, v in plan.label.items() if k != "compute"}


def map_whole_blocks(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches(fn, batch_size=None, **kwargs)``, also where ``kwargs`` ask for GPUs.

    A batch of whole blocks is never part of a chunk (one output file): a row count would cut
    chunks. The public ``map_batches`` refuses ``batch_size=None`` with GPUs, to make users size
    their GPU batches; our labelers size their forward passes themselves (``--batch-size``).
    ``map_batches_internal`` is the same call without that check, and this is its one caller.
    """
    return ds.map_batches_internal(fn, batch_size=None, **kwargs)


class RemoteExecutor(Executor):
    """An executor whose calls run as Ray tasks (one CPU each), anywhere in the cluster: the driver plans,
    the workers read. ``submit`` returns the task's result as a :class:`concurrent.futures.Future`.
    ``ray_up``: called before each submission, to connect when Ray is first needed (default: Ray is up)."""

    def __init__(self, ray_up: Callable[[], object] | None = None) -> None:
        self._ray_up = ray_up
        self._remote: dict[Callable[..., Any], Any] = {}  # one Ray function per Python one, exported once

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        import ray

        if self._ray_up is not None:
            self._ray_up()
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        return self._remote[fn].remote(*args, **kwargs).future()
