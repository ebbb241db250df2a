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

# The shared parity checks assert inside a helper module: rewritten, their failures show the values.
pytest.register_assert_rewrite("tests.parity")

# The real test data (benchmark excerpts, videos, weights; its READMEs give provenance and reference numbers)
# are found through this one setting. Tests that read them request the `shared_data` fixture.
TEST_DATA_ENV = "FLOWLABEL_TEST_DATA"
TEST_DATA = Path(os.environ.get(TEST_DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
VIDEOS = TEST_DATA / "videos"
BENCHMARKS = TEST_DATA / "benchmarks"
WEIGHTS = TEST_DATA / "weights"
RAFT_SMALL = WEIGHTS / "raft-small.pth"


def missing_test_data() -> str | None:
    """Why the real test data cannot be used here, or None when they can."""
    if TEST_DATA.is_dir():
        return None
    return (
        f"real test data not found at {TEST_DATA} (videos/, benchmarks/, weights/): set {TEST_DATA_ENV} "
        "to that folder; its default is ../shared/data beside the repository"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data folder. Where it is absent the test skips and says so; under CI (CI=true) it fails,
    because CI must run every test."""
    why = missing_test_data()
    if why and os.environ.get("CI", "").lower() == "true":
        pytest.fail(why, pytrace=False)
    if why:
        pytest.skip(why)
    return TEST_DATA


@pytest.fixture
def memory_root(request):
    """A fresh folder of fsspec's in-memory filesystem (``memory://<test module>-<random>``), removed after."""
    import uuid

    import fsspec

    root = f"memory://{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


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
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()
