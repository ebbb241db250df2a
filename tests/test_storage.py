import os

import pytest
import s3fs

from pipeline.storage import filesystem, redact, scrub, write_atomic


def test_write_atomic_local_leaves_no_temporary_files(tmp_path):
    fs, path = filesystem(str(tmp_path / "a" / "b.bin"))
    write_atomic(fs, path, b"one")
    write_atomic(fs, path, b"two")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_write_atomic_local_failure_keeps_the_old_file(tmp_path, monkeypatch):
    fs, path = filesystem(str(tmp_path / "b.bin"))
    write_atomic(fs, path, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(fs, path, b"new")
    assert (tmp_path / "b.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.bin"]


def test_s3_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = filesystem("s3://bucket/key", {"key": "k", "secret": "s"})
    assert path == "bucket/key"
    assert (
        fs.client_kwargs.get("endpoint_url") == "http://127.0.0.1:9"
        or fs.storage_options.get("endpoint_url") == "http://127.0.0.1:9"
    )
    fs2, _ = filesystem("s3://bucket/key", {"endpoint_url": "http://127.0.0.1:10", "key": "k", "secret": "s"})
    assert fs2.storage_options["endpoint_url"] == "http://127.0.0.1:10"


def test_redact_and_scrub(monkeypatch):
    options = {
        "key": "AKIAXXXX",
        "secret": "s3cr3tvalue",
        "endpoint_url": "http://h",
        "client_kwargs": {"token": "t0k3n"},
    }
    assert redact(options) == {
        "key": "***",
        "secret": "***",
        "endpoint_url": "http://h",
        "client_kwargs": {"token": "***"},
    }
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret123")
    text = "failed with secret s3cr3tvalue and envsecret123 at http://h"
    assert scrub(text, options) == "failed with secret *** and *** at http://h"


def test_transient_errors_are_transport_failures_only():
    import errno

    import botocore.exceptions

    from pipeline.storage import is_transient, retry_io

    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionResetError()) and is_transient(OSError(errno.EIO, "SlowDown"))
    assert not is_transient(OSError(errno.EINVAL, "Invalid argument"))  # PyAV on an empty file
    assert not is_transient(FileNotFoundError("x")) and not is_transient(ValueError("bad data"))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert retry_io(flaky, first_delay_s=0.01) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        retry_io(lambda: (_ for _ in ()).throw(ValueError("not retried")), first_delay_s=0.01)


def test_a_listing_sees_files_another_process_wrote(local_s3):
    """The driver lists prefixes that read tasks and writers (other processes, other clients) write to:
    a listings cache on fsspec's shared instance would hide their files (a pack written after the
    driver listed its folder was then 'not found' when the clip table was read)."""
    base = f"s3://{local_s3.bucket}/listing-cache"
    fs, root = filesystem(base, local_s3.storage_options)
    fs.pipe_file(f"{root}/corpus=c/first.parquet", b"1")
    assert fs.ls(f"{root}/corpus=c", detail=False) == [f"{root}/corpus=c/first.parquet"]
    other = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)  # another process
    other.pipe_file(f"{root}/corpus=c/second.parquet", b"2")

    again, _ = filesystem(base, local_s3.storage_options)
    assert again.isfile(f"{root}/corpus=c/second.parquet")
    assert again.ls(f"{root}/corpus=c", detail=False) == [f"{root}/corpus=c/{n}.parquet" for n in ("first", "second")]
