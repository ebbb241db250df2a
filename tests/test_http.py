"""http(s):// inputs through fsspec against a server on 127.0.0.1 (Range requests, injected failures):
ranged reads of a span, retries of 503s and connection resets, 404 and 403 as error records."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import s3fs

from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video, write_video
from pipeline.chunks import pair_rows
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions, UnitOutcome, read_unit
from pipeline.read.manifest import ManifestOptions
from pipeline.read.plan import ReadUnit
from pipeline.read.sources import Source, list_sources, video_id_for
from pipeline.storage import HTTP_BLOCK_BYTES, filesystem, is_transient, redact, with_http_status
from pipeline.write.sinks import SinkOptions


@dataclass
class ServerState:
    """What the server holds and does: files by path; per path, how many requests still fail (503 or a
    connection reset) and a fixed status; what it did: requests, failures sent and body bytes served."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_503: Counter = field(default_factory=Counter)
    fail_ranged: Counter = field(default_factory=Counter)  # 503 for the next N range requests (mid-read)
    reset: Counter = field(default_factory=Counter)
    status: dict[str, int] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)
    failures_sent: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.respond(body=False)

    def do_GET(self):
        self.respond(body=True)

    def respond(self, body: bool) -> None:
        state: ServerState = self.server.state
        path = self.path.split("?")[0]
        with state.lock:
            state.requests[path] += 1
            reset = state.reset[path] > 0
            ranged = body and "Range" in self.headers and state.fail_ranged[path] > 0
            fail = not reset and (state.fail_503[path] > 0 or ranged)
            if reset:
                state.reset[path] -= 1
            elif ranged:
                state.fail_ranged[path] -= 1
            elif fail:
                state.fail_503[path] -= 1
            if reset or fail:
                state.failures_sent[path] += 1
        if reset:  # RST instead of a response
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status = 503 if fail else state.status.get(path, 200 if path in state.files else 404)
        if status != 200:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_data(state, path, body)

    def send_data(self, state: ServerState, path: str, body: bool) -> None:
        data = state.files[path]
        first, last = 0, len(data) - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            a, _, b = self.headers["Range"][6:].partition("-")
            first, last = int(a), min(int(b) if b else last, last)
        self.send_response(206 if ranged else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[first : last + 1])
            with state.lock:
                state.served[path] += last - first + 1

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the injected resets


@pytest.fixture(scope="module")
def http_server():
    server = QuietServer(("127.0.0.1", 0), Handler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A short moving clip, and 10 s of noise at 25 fps with a keyframe every second (about 660 KB)."""
    folder = tmp_path_factory.mktemp("http-videos")
    short = write_translating_video(folder / "short.mp4", 48, 64, 8, Motion(1.0, 0.0), seed=4)
    rng = np.random.default_rng(1)
    long = write_video(
        folder / "long.mp4", [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(250)], fps=25, gop=25
    )
    return {"short": short.read_bytes(), "long": long.read_bytes()}


def unit_of(url: str, start=None, end=None) -> ReadUnit:
    return ReadUnit(Source(url, "video", video_id_for(url, start, end), "c", start=start, end=end))


def read(unit: ReadUnit, storage_options=None) -> tuple[list[tuple[int, int]], UnitOutcome]:
    outcome = UnitOutcome()
    pairs = []
    for batch in read_unit(unit, ReadOptions(io_first_delay_s=0.01, io_attempts=4), storage_options, outcome):
        rows = pair_rows(batch)[0]
        pairs += list(zip(rows["frame0"].tolist(), rows["frame1"].tolist()))
    return pairs, outcome


def test_a_short_span_reads_a_few_ranges_not_the_file(http_server, videos):
    state, base = http_server
    state.files["/span/long.mp4"] = videos["long"]
    # Ranges of 16 KiB here (the default, HTTP_BLOCK_BYTES, is 1 MiB) so that the file is many ranges.
    pairs, outcome = read(unit_of(f"{base}/span/long.mp4", 8.0, 8.2), {"http": {"block_size": 2**14}})
    assert outcome.records == [] and outcome.finished
    assert pairs == [(200, 201), (201, 202), (202, 203), (203, 204)]
    # Opening probes the first ~75 KB; then the index at the end and the second-long GOP at 8 s (~150 KB in all).
    assert 0 < state.served["/span/long.mp4"] < len(videos["long"]) / 3


def test_transient_failures_are_retried(http_server, videos):
    state, base = http_server
    for path in ("/flaky.mp4", "/reset.mp4", "/midread.mp4"):
        state.files[path] = videos["short"]
    state.fail_503["/flaky.mp4"] = 2
    state.reset["/reset.mp4"] = 2
    state.fail_ranged["/midread.mp4"] = 2  # the open succeeds, then reads fail: the unit starts again
    for path, counter in (("/flaky.mp4", "503"), ("/reset.mp4", "reset"), ("/midread.mp4", "ranged 503")):
        pairs, outcome = read(unit_of(base + path))
        assert outcome.records == [], (counter, outcome.records)
        assert pairs == [(k, k + 1) for k in range(7)]
        assert state.failures_sent[path] == 2


@pytest.mark.parametrize(
    "path, status, error_type, retryable",
    [
        ("/missing.mp4", 404, "FileNotFoundError", False),
        ("/forbidden.mp4", 403, "PermissionError", False),
        ("/down.mp4", 503, "OSError", True),
    ],
)
def test_statuses_become_error_records(http_server, path, status, error_type, retryable):
    state, base = http_server
    state.status[path] = status
    pairs, outcome = read(unit_of(base + path))
    assert pairs == []
    [(folder, record)] = outcome.records
    reason = {404: "Not Found", 403: "Forbidden", 503: "Service Unavailable"}[status]
    assert (folder, record.stage, record.error_type, record.message) == (
        "_errors",
        "open",
        error_type,
        f"HTTP {status} {reason}: {base}{path}",
    )
    assert outcome.retryable is retryable
    # A 503 is retried (4 attempts, each a HEAD and a GET); a 404 or 403 is asked once (HEAD, then GET).
    assert state.requests[path] == (8 if retryable else 2)


class FakeRequestInfo:
    real_url = "http://h/x.mp4?X-Amz-Signature=secret"


def response_error(status: int) -> Exception:
    import aiohttp

    return aiohttp.ClientResponseError(FakeRequestInfo(), (), status=status, message="Reason")


def test_http_error_table():
    assert [is_transient(response_error(s)) for s in (404, 403, 429, 500, 503, 504)] == [
        False,
        False,
        True,
        True,
        True,
        True,
    ]
    masked = FileNotFoundError("http://h/x.mp4")
    masked.__cause__ = response_error(503)  # as fsspec reports a failed HEAD/GET
    assert is_transient(masked)
    import aiohttp

    reset = FileNotFoundError("http://h/x.mp4")
    reset.__cause__ = aiohttp.ServerDisconnectedError()
    assert is_transient(reset) and not is_transient(FileNotFoundError("x"))
    translated = with_http_status(response_error(403))
    assert type(translated) is PermissionError and str(translated) == "HTTP 403 Reason: http://h/x.mp4"
    assert type(with_http_status(response_error(410))) is FileNotFoundError
    plain = ValueError("x")
    assert with_http_status(plain) is plain


def test_http_gets_only_its_own_options():
    so = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:1", "http": {"headers": {"X-A": "1"}}}
    fs, _ = filesystem("http://127.0.0.1:9/a.mp4", so)
    assert fs.kwargs == {"headers": {"X-A": "1"}} and fs.block_size == HTTP_BLOCK_BYTES
    fs, _ = filesystem("https://127.0.0.1:9/a.mp4", {"http": {"block_size": 5}})
    assert fs.block_size == 5
    fs, _ = filesystem("memory://x", so)
    assert "http" not in fs.storage_options
    headers = {"http": {"headers": {"Authorization": "Bearer t0ken", "X-A": "1"}}}
    assert redact(headers) == {"http": {"headers": {"Authorization": "***", "X-A": "1"}}}


@pytest.mark.slow
def test_http_manifest_end_to_end(ray_local, local_s3, http_server, videos):
    """A JSONL manifest served over HTTP: a good file, a span of a long one, a 404, a 403 and one that
    fails twice with 503; output to SeaweedFS (its credentials are not sent to the HTTP server)."""
    state, base = http_server
    state.files["/e2e/good.mp4"] = videos["short"]
    state.files["/e2e/long.mp4"] = videos["long"]
    state.files["/e2e/flaky.mp4"] = videos["short"]
    state.fail_503["/e2e/flaky.mp4"] = 2
    state.status["/e2e/forbidden.mp4"] = 403
    rows = [
        {"uri": f"{base}/e2e/good.mp4", "clip": "g"},
        {"uri": f"{base}/e2e/long.mp4", "clip": "l", "start": 4, "end": 4.2},
        {"uri": f"{base}/e2e/missing.mp4", "clip": "m"},
        {"uri": f"{base}/e2e/forbidden.mp4", "clip": "f"},
        {"uri": f"{base}/e2e/flaky.mp4", "clip": "r"},
    ]
    state.files["/e2e/clips.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = f"s3://{local_s3.bucket}/http-e2e/labels"
    job = LabelJob(
        inputs=(),
        sink=SinkOptions(out),
        labeler=LabelerConfig(model="dis"),
        read=ReadOptions(io_first_delay_s=0.05),
        storage_options=local_s3.storage_options,
        manifest=ManifestOptions(f"{base}/e2e/clips.jsonl", carry=("clip",)),
    )
    result = run_label(job)

    assert result.exit_code == 2
    assert sorted((r.source, r.stage, r.error_type, r.message) for r in result.errors) == [
        (f"{base}/e2e/forbidden.mp4", "open", "PermissionError", f"HTTP 403 Forbidden: {base}/e2e/forbidden.mp4"),
        (f"{base}/e2e/missing.mp4", "open", "FileNotFoundError", f"HTTP 404 Not Found: {base}/e2e/missing.mp4"),
    ]
    fs = s3fs.S3FileSystem(**local_s3.storage_options)
    table = pads.dataset(out.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive").to_table()
    got = sorted(zip(table["video_id"].to_pylist(), table["frame0"].to_pylist(), table["clip"].to_pylist()))
    ids = {name: video_id_for(f"{base}/e2e/{name}.mp4") for name in ("good", "flaky")}
    expected = sorted(
        [(ids["good"], k, "g") for k in range(7)]
        + [(ids["flaky"], k, "r") for k in range(7)]
        + [(video_id_for(f"{base}/e2e/long.mp4", 4.0, 4.2), k, "l") for k in range(100, 104)]
    )
    assert got == expected and result.pairs == 18
    assert table.schema.field("clip").type == pa.string()
    assert state.failures_sent["/e2e/flaky.mp4"] == 2
    assert state.served["/e2e/long.mp4"] <= len(videos["long"])  # 1 MiB ranges: at most the file, once
    assert set(table["corpus"].to_pylist()) == {"clips"}
    sources, _ = list_sources([], manifest=job.manifest)
    assert len(sources) == 5  # the driver lists the manifest, never the videos
