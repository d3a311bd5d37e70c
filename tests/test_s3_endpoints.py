"""How requests reach a store in every configuration, all through the Rust transport.

Virtual-hosted addressing (moto's server answers ``bucket.localhost``), settings only botocore
resolves (a profile, a given client), a bucket in another region than configured, and a proxy
that is asked to CONNECT. botocore may resolve settings but must never send a request: a
``before-send`` handler that fails proves it.
"""

from __future__ import annotations

import re
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from http_helpers import Answer, Request, answering

import hashsync
from hashsync.errors import PermissionDenied, StorageUnavailable
from hashsync.storage import S3Storage
from hashsync.storage._s3list import bucket_base, regional_endpoint


def forbid_botocore_sending(storage: S3Storage) -> None:
    def refuse(**_kwargs):
        raise AssertionError("botocore sent a request")

    storage.client.meta.events.register("before-send.s3", refuse)


def round_trip(storage: S3Storage, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a")
    (src / "d" / "big.bin").write_bytes(bytes(range(256)) * (24 * 1024))  # 6 MiB: 2 parts
    assert hashsync.sync(src, storage, delete=True).ok
    down = tmp_path / "down"
    assert hashsync.sync(storage, down).ok
    assert hashsync.tree_hash(down) == hashsync.tree_hash(src)
    assert storage.delete_many(["a.txt", "d/big.bin"]) == [None, None]
    assert list(storage.list()) == []


def test_addressing_puts_the_bucket_in_the_host_only_where_it_can_be():
    assert bucket_base("http://localhost:9000", "data", True) == ("http://data.localhost:9000", "/")
    assert bucket_base("http://localhost:9000/", "data", False) == (
        "http://localhost:9000/data",
        "",
    )
    # Dots over https would not match a wildcard certificate; capitals are not DNS labels.
    assert bucket_base("https://s3.amazonaws.com", "a.b", True)[0] == "https://s3.amazonaws.com/a.b"
    assert bucket_base("https://s3.amazonaws.com", "Big", True)[0] == "https://s3.amazonaws.com/Big"
    assert bucket_base("http://minio:9000", "a.b", True)[0] == "http://a.b.minio:9000"
    assert regional_endpoint("https://s3.amazonaws.com", "eu-west-1") == (
        "https://s3.eu-west-1.amazonaws.com"
    )
    assert regional_endpoint("https://s3.us-east-2.amazonaws.com.cn", "cn-north-1") == (
        "https://s3.cn-north-1.amazonaws.com.cn"
    )
    assert regional_endpoint("http://minio:9000", "eu-west-1") == "http://minio:9000"


def test_virtual_hosted_addressing_on_moto(moto_server, tmp_path):
    bucket = moto_server.create_bucket("virtual-hosted")
    port = moto_server.endpoint_url.rsplit(":", 1)[1]
    storage = S3Storage(
        bucket,
        "p",
        endpoint_url=f"http://localhost:{port}",
        addressing_style="virtual",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        part_size=5 * 1024**2,
    )
    forbid_botocore_sending(storage)
    assert storage._raw_client().base == f"http://{bucket}.localhost:{port}"
    round_trip(storage, tmp_path)


def test_a_profile_resolved_by_botocore(s3_server, bucket, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "credentials").write_text(
        f"[work]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    storage = S3Storage(bucket, "profile", endpoint_url=s3_server.endpoint_url, profile_name="work")
    assert storage._static is None  # botocore resolved the settings
    forbid_botocore_sending(storage)
    round_trip(storage, tmp_path)


def test_a_client_given_by_the_caller(s3_server, bucket, tmp_path):
    storage = S3Storage(bucket, "given", client=s3_server.client(), part_size=5 * 1024**2)
    forbid_botocore_sending(storage)
    round_trip(storage, tmp_path)


def test_no_credentials_anywhere_is_said_before_any_request(
    s3_server, bucket, tmp_path, monkeypatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = S3Storage(bucket, endpoint_url=s3_server.endpoint_url)
    with pytest.raises(PermissionDenied, match="no AWS credentials found"):
        list(storage.list())


@contextmanager
def region_checking_store(bucket_region: str) -> Iterator[tuple[str, list[str]]]:
    """A store that, like AWS, redirects requests signed for another region than the bucket's."""
    seen: list[str] = []

    def answer(request: Request) -> Answer:
        found = re.search(r"/\d{8}/([a-z0-9-]+)/s3/", request.headers.get("Authorization", ""))
        region = found.group(1) if found else ""
        seen.append(region)
        if region != bucket_region:
            return (
                301,
                b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message></Error>",
                {"x-amz-bucket-region": bucket_region},
            )
        return (
            200,
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size>"
            b"<ETag>&quot;e&quot;</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            b"</Contents></ListBucketResult>",
            {},
        )

    with answering(answer) as url:
        yield url, seen


def test_a_bucket_in_another_region_is_followed(tmp_path):
    with region_checking_store("eu-central-1") as (url, seen):
        storage = S3Storage("b", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s")
        assert [o.key for o in storage.list()] == ["k"]
        assert [o.key for o in storage.list()] == ["k"]
    # One redirect, then signed for the bucket's region from the start.
    assert seen == ["us-east-1", "eu-central-1", "eu-central-1"]


@contextmanager
def connect_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy that only tunnels (CONNECT), and records the targets asked for."""
    targets: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def tunnel(client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            method, target, _ = line.split(" ", 2)
            targets.append(f"{method} {target}")
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                ends = [client, upstream]
                while not stop.is_set():
                    ready, _, _ = select.select(ends, [], [], 0.2)
                    for end in ready:
                        data = end.recv(65536)
                        if not data:
                            return
                        (upstream if end is client else client).sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=tunnel, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", targets
    finally:
        stop.set()
        listener.close()


def test_requests_go_through_the_environments_proxy(s3_server, bucket, tmp_path, monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with connect_proxy() as (proxy, targets):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        storage = S3Storage(
            bucket,
            "proxied",
            endpoint_url=s3_server.endpoint_url,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            part_size=5 * 1024**2,
        )
        round_trip(storage, tmp_path)
    host = s3_server.endpoint_url.split("://", 1)[1]
    assert targets and set(targets) == {f"CONNECT {host}"}
    # NO_PROXY naming the store: straight there (the proxy is gone, so this proves it).
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = S3Storage(
        bucket,
        "proxied",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    assert list(direct.list()) == []


def test_a_proxy_that_is_down_is_storage_unavailable(s3_server, bucket, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    storage = S3Storage(
        bucket,
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        max_attempts=1,
    )
    with pytest.raises(StorageUnavailable):
        list(storage.list())


def _tls_material(tmp_path):
    """A CA and a certificate for 127.0.0.1 that it signed (PEM files)."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("hashsync test CA"))
        .issuer_name(name("hashsync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key"


def test_an_untrusted_certificate_fails_at_once_and_aws_ca_bundle_trusts_it(tmp_path, monkeypatch):
    import ssl
    import time

    ca, cert, key = _tls_material(tmp_path)
    body = (
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<IsTruncated>false</IsTruncated></ListBucketResult>"
    )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with answering(lambda _request: (200, body, {}), tls=context) as url:
        storage = S3Storage(
            "b", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", max_attempts=5
        )
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="AWS_CA_BUNDLE"):
            list(storage.list())
        assert time.monotonic() - started < 1.0  # not retried with backoff
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        trusting = S3Storage(
            "b", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s"
        )
        assert list(trusting.list()) == []


def test_an_unusable_proxy_url_is_invalid_argument_without_its_password(monkeypatch):
    from hashsync.errors import InvalidArgument

    monkeypatch.setenv("HTTP_PROXY", "http://user:s3cr3t@bad host:1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    storage = S3Storage(
        "b", endpoint_url="http://127.0.0.1:9", aws_access_key_id="k", aws_secret_access_key="s"
    )
    with pytest.raises(InvalidArgument, match="proxy") as caught:
        list(storage.list())
    assert "s3cr3t" not in str(caught.value)
