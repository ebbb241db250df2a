"""A multi-process Ray cluster on this machine, on loopback, with token auth: for tests and trials.

``ray start --head`` in its own temp dir and on free ports, as a cluster's head node runs
it (GCS, raylet, dashboard with the job server), so jobs can be submitted to it with
``ray job submit`` or ``JobSubmissionClient`` exactly as to a real cluster::

    with LocalRayCluster(num_cpus=4, num_gpus=2) as cluster:
        client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers)

``num_gpus`` may exceed the machine's real GPUs: Ray then schedules and assigns GPU ids
(``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``) as on a GPU node, and CUDA finds no device.

Stopping ends only this cluster's processes (``ray stop`` would end every Ray on the
machine, other users' included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from .processes import LOOPBACK, free_ports, log_tail, start_logged, stop_tree, wait_ready


class LocalRayCluster:
    """A Ray head node started with ``ray start --head --block``; see the module docstring.

    ``object_store_bytes`` keeps the shared-memory store small (Ray's default takes 30% of RAM).
    """

    def __init__(
        self,
        num_cpus: int = 2,
        num_gpus: int = 0,
        object_store_bytes: int = 256 * 2**20,
        startup_timeout_s: float = 120.0,
    ):
        if num_cpus < 1 or num_gpus < 0:
            raise ValueError(f"expected num_cpus ≥ 1 and num_gpus ≥ 0, got {num_cpus} and {num_gpus}")
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.object_store_bytes = object_store_bytes
        self.startup_timeout_s = startup_timeout_s
        self.token = secrets.token_hex(32)
        self.temp_dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self.gcs_port = self.dashboard_port = 0

    @property
    def address(self) -> str:
        """GCS address, for ``ray.init(address=…)`` / ``--address``."""
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Job server address, for ``ray job submit --address`` / ``JobSubmissionClient``."""
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate to this cluster's dashboard and job server."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this cluster (``ray job submit``, drivers): token auth on."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
                # Ray's single-machine mode: every address it advertises (GCS, raylet, workers) is
                # 127.0.0.1 instead of the host's network address, so no traffic leaves loopback.
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                # Workers and job entrypoints find this interpreter's `ray` and `flowlabel` first.
                "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            }
        )
        return env

    def start(self) -> LocalRayCluster:
        # A short path: Ray puts Unix sockets under it, and socket paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="flr-", dir="/tmp"))
        (
            self.gcs_port,
            self.dashboard_port,
            client,
            agent,
            metrics,
            runtime_env,
            autoscaler_metrics,
            dashboard_metrics,
        ) = free_ports(8)
        env = self.env
        # Fixed defaults (44217, 44227) would collide with any other Ray head on the machine.
        env.update({"AUTOSCALER_METRIC_PORT": str(autoscaler_metrics), "DASHBOARD_METRIC_PORT": str(dashboard_metrics)})
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--node-ip-address={LOOPBACK}",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        log = self.temp_dir / "ray-start.log"
        self._process = start_logged(command, log, env)
        try:
            wait_ready(
                self._process,
                self._answers,
                name="Ray head (ray start)",
                timeout_s=self.startup_timeout_s,
                log_path=log,
                interval_s=0.5,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        """Whether the job server answers (raises while the head is starting)."""
        request = urllib.request.Request(f"{self.dashboard_url}/api/version", headers=self.headers)
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.temp_dir / "ray-start.log" if self.temp_dir else None, chars)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the head process and every process it started (workers, job drivers), by pid."""
        if self._process is not None:
            stop_tree(self._process, timeout_s)
            self._process = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
