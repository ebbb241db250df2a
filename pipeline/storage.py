"""All object-store and file IO goes through here: fsspec filesystems, atomic writes, secret hygiene.

Credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) or explicit ``storage_options``; they are
never logged, stored in manifests or put into error messages (see :func:`redact`).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")
GLOB_CHARS = re.compile(r"[*?\[]")  # what fsspec takes for a pattern in a path


def _transient_error_types() -> tuple[type[BaseException], ...]:
    """Errors of the transport, not of the data, by backend: worth retrying after a pause.

    s3fs already retries each request for several seconds before it lets these through; they
    reach us when an object store restarts or throttles for longer than that.
    """
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import botocore.exceptions as boto

        types += [boto.ConnectionError, boto.HTTPClientError]
    except ImportError:
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError]
    except ImportError:
        pass
    return tuple(types)


TRANSIENT_ERRORS = _transient_error_types()


# errno values of a transport failing, not of a file being bad (EIO: s3fs's code for 5xx / SlowDown).
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN, errno.EBUSY}
)


# HTTP statuses of a server or proxy failing for now (retry later), not of the request being wrong.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def _response_error(exc: BaseException) -> BaseException | None:
    """aiohttp's ClientResponseError in ``exc`` or its causes (fsspec's HTTP filesystem reports a
    failed HEAD/GET of a file's info as a FileNotFoundError raised from it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "ClientResponseError" and isinstance(getattr(current, "status", None), int):
            return current
        current = current.__cause__ or current.__context__
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind ``exc``, or None when it is not an HTTP failure."""
    response = _response_error(exc)
    return None if response is None else response.status


def with_http_status(exc: BaseException) -> BaseException:
    """``exc`` unchanged, or for an HTTP failure an error whose type and message give the status:
    404/410 FileNotFoundError, 401/403 PermissionError, others OSError (``HTTP 403 Forbidden: <url>``)."""
    response = _response_error(exc)
    if response is None:
        return exc
    status = response.status
    info = getattr(response, "request_info", None)
    url = f": {str(info.real_url).split('?')[0]}" if info is not None else ""  # a query may hold a signature
    text = f"HTTP {status} {getattr(response, 'message', '') or ''}".rstrip() + url
    kind = FileNotFoundError if status in (404, 410) else PermissionError if status in (401, 403) else OSError
    return kind(text)


def is_transient(exc: BaseException) -> bool:
    """True for network/throttling failures (retry later), False for errors of the input itself."""
    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_HTTP_STATUSES
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if type(exc) is FileNotFoundError and isinstance(exc.__cause__, TRANSIENT_ERRORS):
        return True  # fsspec's HTTP info: a connection reset during HEAD/GET is not a missing file
    return type(exc) is OSError and exc.errno in TRANSIENT_ERRNOS


def retry_io(fn: Callable[[], T], *, attempts: int = 6, first_delay_s: float = 1.0) -> T:
    """Call ``fn``; on a transient error wait 1, 2, 4, … s and try again, ``attempts`` times in all."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(first_delay_s * 2**attempt)
    raise AssertionError("unreachable")


SECRET_OPTION_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "aws_secret_access_key",
        "aws_access_key_id",
        "aws_session_token",
        "access_key",
        "secret_key",
        # HTTP headers under {"http": {"headers": …}}
        "authorization",
        "proxy-authorization",
        "cookie",
    }
)


OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az"})  # fsspec protocols with a listings cache
HTTP_OPTIONS_KEY = "http"
# Range size of HTTP reads: PyAV seeks within a file, so a short span of a long video reads a few ranges.
HTTP_BLOCK_BYTES = 2**20


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or any fsspec URI.

    For ``s3://`` an ``AWS_ENDPOINT_URL`` in the environment is honoured when the options
    name no endpoint, so a local S3 server works with the plain AWS variables.
    ``http(s)://`` URIs get only the options under the key ``"http"`` (the others are for the
    object store: HTTPFileSystem would pass them to each request), and reads of
    :data:`HTTP_BLOCK_BYTES` ranges unless those options set ``block_size``. Object stores list
    afresh every time (no listings cache) unless the options say otherwise.
    """
    options = dict(storage_options or {})
    protocol = fsspec.utils.get_protocol(uri)
    http_options = options.pop(HTTP_OPTIONS_KEY, None) or {}
    if protocol in ("http", "https"):
        options = {"block_size": HTTP_BLOCK_BYTES, **http_options}
    if protocol in ("s3", "s3a") and "endpoint_url" not in options and os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if protocol in OBJECT_STORES:
        # Other processes (read tasks, writers, another run) write under the prefixes a driver lists; a
        # cached listing would hide their files, and fsspec hands every caller the same instance.
        options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI that names ``path`` on ``fs`` (``s3://bucket/key`` or a local absolute path)."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with '/', whatever the protocol."""
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


def cat_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes]:
    """The bytes of each of ``paths``, in order, fetched together (concurrently on object stores). Paths are
    taken as they are: ``fs.cat`` would expand glob characters in them (an ``out`` named ``o[1]``)."""
    if not paths:
        return []
    data = fs.cat_ranges(paths, 0, None, on_error="return")
    for value in data:
        if isinstance(value, BaseException):
            raise value
    return data


def remove_files(fs: fsspec.AbstractFileSystem, paths: Iterable[str]) -> None:
    """Delete the files at ``paths``, taken as they are: ``fs.rm`` would expand glob characters in them and
    delete other files (a stale pack in ``o[1]`` matching a settled one in ``o1``). Paths without such
    characters, almost always all of them, go together (bulk deletes on object stores)."""
    paths = list(paths)
    globbed = [p for p in paths if GLOB_CHARS.search(p)]
    plain = [p for p in paths if not GLOB_CHARS.search(p)]
    if plain:
        fs.rm(plain)
    for path in globbed:
        fs.rm_file(path)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make ``data`` visible at ``path`` all at once, or not at all.

    Object stores: a single PUT (or completed multipart upload) is the commit, so the bytes
    are uploaded in one call from memory, never through a streaming writer whose ``close``
    would publish a partial object after an error; transient failures are retried with
    backoff (see :func:`retry_io`). Local files: write a hidden temporary file in the same
    folder, then rename it over the target.
    """
    parent = posixpath.dirname(path)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    retry_io(lambda: fs.pipe_file(path, data))


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage options safe to print or store: secret values replaced by '***'."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out[name] = redact(value)
        elif name.lower() in SECRET_OPTION_NAMES:
            out[name] = "***"
        else:
            out[name] = value
    return out


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``text`` with any secret from the options or the AWS environment replaced by '***'."""
    secrets = [v for k, v in (storage_options or {}).items() if k.lower() in SECRET_OPTION_NAMES and isinstance(v, str)]
    secrets += [os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
