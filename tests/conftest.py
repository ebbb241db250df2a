"""Shared fixtures: real parts on loopback (SeaweedFS S3, a local Ray), paid once per session."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from jobs.cluster import loopback_only

# Before anything imports ray: every Ray these tests start (the session's, `ray start` heads,
# CLI subprocesses, which inherit the environment) binds to 127.0.0.1 only.
loopback_only()

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VIDEOS = SHARED / "videos"
BENCHMARKS = SHARED / "benchmarks"
RAFT_SMALL = SHARED / "weights" / "raft-small.pth"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}; expected the project's ../shared/data beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def local_s3():
    """A SeaweedFS S3 server on 127.0.0.1 with its own credentials and bucket."""
    from infra.local_s3 import LocalS3

    with LocalS3(bucket="flowlabel-test") as s3:
        yield s3


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, bound to loopback (2 CPUs, as CI has)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
             configure_logging=False)
    yield ray
    ray.shutdown()
