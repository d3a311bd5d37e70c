"""Smoke tests for the SeaweedFS test server in hashsync.testing."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from hashsync.testing import SeaweedFS
except ImportError:
    # hashsync/__init__.py may import the native extension, which is not built in every
    # checkout; testing.py itself is pure Python, so load it straight from the source tree.
    _path = Path(__file__).resolve().parents[1] / "python" / "hashsync" / "testing.py"
    _spec = importlib.util.spec_from_file_location("_hashsync_testing", _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
    SeaweedFS = _module.SeaweedFS

botocore = pytest.importorskip("botocore")
from botocore import UNSIGNED  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

pytestmark = pytest.mark.s3

NO_RETRY = Config(retries={"max_attempts": 1})


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        yield server


def error_code(exc_info: pytest.ExceptionInfo[ClientError]) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_put_get_roundtrip(s3: SeaweedFS) -> None:
    bucket = s3.create_bucket("smoke")
    assert s3.create_bucket("smoke") == "smoke"  # idempotent
    client = s3.client()
    body = b"hello hashsync\n"
    put = client.put_object(Bucket=bucket, Key="dir/hello.txt", Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert client.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read() == body
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["dir/hello.txt"]


def test_env_points_at_server(s3: SeaweedFS) -> None:
    env = s3.env()
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == s3.endpoint_url
    assert env["S3_ENDPOINT_URL"] == s3.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == s3.secret_key
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert s3.endpoint_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("access_key", "secret_key", "expected"),
    [
        ("hashsync", "wrong-secret", "SignatureDoesNotMatch"),
        ("nobody", "hashsync-secret", "InvalidAccessKeyId"),
    ],
)
def test_wrong_credentials_rejected(
    s3: SeaweedFS, access_key: str, secret_key: str, expected: str
) -> None:
    bucket = s3.create_bucket("smoke-auth")
    s3.client().put_object(Bucket=bucket, Key="k", Body=b"secret")
    bad = s3.client(aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=NO_RETRY)
    for call in (
        lambda: bad.list_buckets(),
        lambda: bad.get_object(Bucket=bucket, Key="k"),
        lambda: bad.put_object(Bucket=bucket, Key="k2", Body=b"x"),
    ):
        with pytest.raises(ClientError) as exc_info:
            call()
        assert error_code(exc_info) == expected


def test_anonymous_rejected(s3: SeaweedFS) -> None:
    bucket = s3.create_bucket("smoke-anon")
    anonymous = s3.client(config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as exc_info:
        anonymous.list_objects_v2(Bucket=bucket)
    assert error_code(exc_info) == "AccessDenied"


def test_missing_bucket_is_an_error(s3: SeaweedFS) -> None:
    client = s3.client(config=NO_RETRY)
    with pytest.raises(ClientError) as exc_info:
        client.put_object(Bucket="smoke-does-not-exist", Key="k", Body=b"x")
    assert error_code(exc_info) == "NoSuchBucket"


def test_kill_restart_stop() -> None:
    server = SeaweedFS().start()
    try:
        bucket = server.create_bucket("smoke-life")
        server.client().put_object(Bucket=bucket, Key="k", Body=b"survives")
        endpoint, data_dir = server.endpoint_url, server.data_dir
        assert data_dir is not None and data_dir.is_dir()

        server.kill()
        assert not server.is_running
        down = server.client(config=Config(retries={"max_attempts": 1}, connect_timeout=1))
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            down.head_bucket(Bucket=bucket)

        server.start()
        assert server.endpoint_url == endpoint
        assert server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"survives"
    finally:
        server.stop()
    server.stop()  # idempotent
    assert not server.is_running
    assert not data_dir.exists()
