"""Connecting to Ray and sizing the labeler actor pool from the cluster's resources."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ClusterOptions:
    """address: Ray address ("auto", "ray://host:10001", …); None starts a local Ray on 127.0.0.1.
    actors: max labeler actors (default: one per GPU, or per two CPUs without GPUs).
    gpus_per_actor: GPUs each labeler actor holds (default 1 when the cluster has GPUs, else 0).
    local_cpus: CPUs of a local Ray (default: all)."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    reader_cpus: float = 1.0
    writer_cpus: float = 0.5
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors: expected ≥ 1, got {self.actors}")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor <= 8:
            raise ValueError(f"gpus_per_actor: expected 0 to 8, got {self.gpus_per_actor}")


def connect(options: ClusterOptions) -> None:
    """Join the cluster at ``options.address``, or start a local Ray bound to loopback.

    Does nothing when Ray is already initialized in this process (tests, notebooks).
    """
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=options.local_cpus, include_dashboard=False, _node_ip_address=LOOPBACK,
                     logging_level=logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() and not os.environ.get("CI")


def actor_pool(options: ClusterOptions) -> tuple[Any, dict[str, float]]:
    """(ActorPoolStrategy, per-actor resources) for the labeler stage."""
    import ray
    from ray.data import ActorPoolStrategy

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if options.actors is not None:
        max_size = options.actors
    elif per_actor > 0:
        max_size = max(1, int(gpus // per_actor))
    else:
        max_size = max(1, int(cpus // 2))
    pool = ActorPoolStrategy(min_size=1, max_size=max_size)
    return pool, {"num_gpus": per_actor, "num_cpus": options.cpus_per_actor}
