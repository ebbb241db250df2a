"""Start, wait for and stop the local servers of infra/ (SeaweedFS S3, a Ray head): one way of each.

Every server binds 127.0.0.1 on ports free at start, runs in its own session with its output in a log
file, and is stopped by pid with every process it started, never by name (other users' servers on
the machine are left alone).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback right now (racy by nature: the caller binds them soon after)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_logged(
    command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``command`` with its output appended to ``log_path``, in its own session: Ctrl-C in the parent
    does not reach it, and :func:`stop_tree` finds the processes it starts."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def log_tail(log_path: Path | None, chars: int = 4000) -> str:
    """The end of a server's log ('' when there is none)."""
    if log_path is None or not log_path.exists():
        return ""
    return log_path.read_text(errors="replace")[-chars:]


def wait_ready(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    *,
    name: str,
    timeout_s: float,
    log_path: Path,
    interval_s: float = 0.25,
) -> None:
    """Poll ``ready()`` until it returns True. An exception from it means "not yet" (the last one is reported);
    RuntimeError when the process exits first, TimeoutError after ``timeout_s``, both with the log's end."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 — a server that is starting fails in many ways
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s (last: {last!r}):\n{log_tail(log_path)}")


def stop_tree(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM to ``process`` and every process it started, then SIGKILL to any left, each by pid."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for sig in ("terminate", "kill"):
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(proc, sig)()
        _, tree = psutil.wait_procs(tree, timeout=timeout_s if sig == "terminate" else 5)
        if not tree:
            break
    process.wait(timeout=5)
