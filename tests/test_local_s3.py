"""The embedded object store: real SeaweedFS, loopback only, generated credentials."""

import psutil
import pytest
import s3fs


def test_serves_s3_on_loopback_only(local_s3):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)
    fs.pipe(f"{local_s3.bucket}/probe/hello.txt", b"hello")
    assert fs.cat(f"{local_s3.bucket}/probe/hello.txt") == b"hello"
    assert local_s3.endpoint_url.startswith("http://127.0.0.1:")
    listening = [
        c.laddr.ip
        for c in psutil.Process(local_s3._proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and set(listening) == {"127.0.0.1"}, listening


def test_wrong_credentials_are_refused(local_s3):
    options = {**local_s3.storage_options, "secret": "not-the-secret"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    with pytest.raises(PermissionError):
        fs.ls(local_s3.bucket, refresh=True)


def test_bucket_name_is_checked():
    from infra.local_s3 import LocalS3

    with pytest.raises(ValueError, match="3 to 63"):
        LocalS3(bucket="ab").start()
