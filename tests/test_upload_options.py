"""Upload options of aws s3 sync (issue 28): seen on the stored objects, on two S3 servers."""

from __future__ import annotations

import json
import random
import re

import pytest

import hashsync
from hashsync.errors import InvalidArgument
from hashsync.storage.upload_options import UploadOptions, parse_metadata
from proxy_helpers import rewriting_proxy
from sync_helpers import cli, s3

pytestmark = pytest.mark.s3

MIB = 1024**2


def test_options_are_checked():
    with pytest.raises(InvalidArgument, match="storage class"):
        UploadOptions(storage_class="COLD")
    with pytest.raises(InvalidArgument, match="--sse"):
        UploadOptions(sse="rot13")
    with pytest.raises(InvalidArgument, match="needs --sse aws:kms"):
        UploadOptions(sse_kms_key_id="alias/x")
    with pytest.raises(InvalidArgument, match="ACL"):
        UploadOptions(acl="everyone")
    with pytest.raises(InvalidArgument, match="ASCII"):
        UploadOptions(cache_control="max-age=1\r\nx-evil: 1")
    with pytest.raises(InvalidArgument, match="reserved"):
        UploadOptions(metadata={"hashsync-crc64nvme": "0"})
    with pytest.raises(InvalidArgument, match="header name"):
        UploadOptions(metadata={"bad name": "x"})
    assert UploadOptions(metadata={"Team": "ml"}).metadata == {"team": "ml"}


def test_metadata_is_parsed_as_aws_takes_it():
    assert parse_metadata("a=1,b=two") == {"a": "1", "b": "two"}
    assert parse_metadata('{"a": "1", "b": 2}') == {"a": "1", "b": "2"}
    with pytest.raises(InvalidArgument):
        parse_metadata("novalue")


def test_content_type_is_guessed_from_the_name_as_aws_does():
    options = UploadOptions()
    assert options.type_for("site/index.html") == "text/html"
    assert options.type_for("data/x.json") == "application/json"
    assert options.type_for("weights.unknownext") is None  # the store's default then
    assert UploadOptions(guess_mime_type=False).type_for("a.json") is None
    assert UploadOptions(content_type="text/plain").type_for("a.json") == "text/plain"


def _tree(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "page.html").write_bytes(b"<html></html>")
    (root / "data.json").write_bytes(b"{}")
    (root / "blob.bin").write_bytes(random.Random(1).randbytes(6 * MIB))  # multipart
    return root


@pytest.fixture(params=["seaweedfs", "moto"])
def server(request, s3_server, moto_server):
    return s3_server if request.param == "seaweedfs" else moto_server


def test_sync_options_reach_the_stored_objects(server, tmp_path):
    bucket = server.create_bucket(f"opts-{random.randrange(10**9)}")
    src = _tree(tmp_path / "src")
    options = UploadOptions(
        cache_control="max-age=600",
        content_encoding="identity",
        metadata={"team": "vision", "run": "42"},
        storage_class="STANDARD_IA",
        sse="AES256",
        acl="bucket-owner-full-control",
    )
    dest = s3(server, bucket, "x", upload=options)
    result = hashsync.sync(src, dest, progress=False)
    assert sorted(result.transferred) == ["blob.bin", "data.json", "page.html"]
    client = server.client()
    types = {}
    for key in result.transferred:
        head = client.head_object(Bucket=bucket, Key=f"x/{key}")
        types[key] = head["ContentType"]
        assert head["CacheControl"] == "max-age=600"
        assert head["ContentEncoding"] == "identity"
        assert head["Metadata"]["team"] == "vision" and head["Metadata"]["run"] == "42"
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["ServerSideEncryption"] == "AES256"
    assert types["page.html"] == "text/html" and types["data.json"] == "application/json"
    # Content decides: other options alone change nothing.
    again = hashsync.sync(src, s3(server, bucket, "x", upload=UploadOptions()), progress=False)
    assert again.transferred == [] and again.skipped == 3


def test_acl_is_stored(moto_server, tmp_path):
    bucket = moto_server.create_bucket("acl-bucket")
    src = _tree(tmp_path / "src")
    hashsync.sync(src, s3(moto_server, bucket, upload=UploadOptions(acl="public-read")))
    grants = moto_server.client().get_object_acl(Bucket=bucket, Key="data.json")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants)


def test_kms_encrypted_objects_are_compared_by_crc64nvme(moto_server, tmp_path):
    # With SSE-KMS, AWS's ETag is not the content's MD5. moto still gives the MD5, so a proxy
    # gives the listings ETags as AWS would; the HEAD still carries hashsync's CRC64NVME.
    bucket = moto_server.create_bucket("kms-bucket")
    src = _tree(tmp_path / "src")
    kms = UploadOptions(sse="aws:kms", sse_kms_key_id="alias/datasets")
    hashsync.sync(src, s3(moto_server, bucket, upload=kms), progress=False)
    head = moto_server.client().head_object(Bucket=bucket, Key="data.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/datasets")

    def kms_etags(path: str, body: bytes) -> bytes:
        if "list-type=2" not in path:
            return body
        return re.sub(rb"<ETag>(&quot;|\")?[0-9a-f]{32}", rb"<ETag>\g<1>" + b"e" * 32, body)

    log: list[tuple[str, str]] = []
    with rewriting_proxy(moto_server.endpoint_url, kms_etags, log=log) as url:
        through = s3(moto_server, bucket, endpoint_url=url, upload=kms)
        listed = {i.key: i.hash for i in through.list()}
        assert listed["data.json"] == "e" * 32  # not the MD5: the comparison cannot use it
        again = hashsync.sync(src, through, progress=False)
        assert again.transferred == [] and again.skipped == 3
        heads = [p for m, p in log if m == "HEAD"]
        assert len(heads) <= 3  # one HEAD per file whose listed ETag said nothing
        # A real same-size edit is still caught (its CRC64NVME differs).
        (src / "data.json").write_bytes(b"[]")
        edited = hashsync.sync(src, through, progress=False)
        assert edited.transferred == ["data.json"]


def test_requester_pays_header_goes_with_every_request(s3_server, tmp_path):
    bucket = s3_server.create_bucket("payer")
    src = _tree(tmp_path / "src")
    seen: list[tuple[str, str | None]] = []

    def record(method, path, headers, body):
        seen.append((method, headers.get("x-amz-request-payer")))
        return headers

    with rewriting_proxy(s3_server.endpoint_url, rewrite_request=record) as url:
        dest = s3(s3_server, bucket, endpoint_url=url, request_payer="requester")
        hashsync.sync(src, dest, progress=False)
        hashsync.sync(dest, tmp_path / "down", progress=False)
    assert seen and all(payer == "requester" for _, payer in seen)
    assert {m for m, _ in seen} >= {"GET", "PUT", "POST"}


def test_cli_upload_flags_and_no_sign_request(s3_server, s3_env, tmp_path):
    bucket = s3_server.create_bucket("cli-opts")
    src = _tree(tmp_path / "src")
    done = cli(
        "sync", src, f"s3://{bucket}/c", "--json", "--no-progress",
        "--content-type", "text/plain", "--cache-control", "no-cache",
        "--metadata", "team=nlp,stage=dev",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["transferred"]) == 3
    head = s3_server.client().head_object(Bucket=bucket, Key="c/page.html")
    assert head["ContentType"] == "text/plain" and head["CacheControl"] == "no-cache"
    assert head["Metadata"] == {**head["Metadata"], "team": "nlp", "stage": "dev"}
    bad = cli("sync", src, f"s3://{bucket}/c", "--storage-class", "COLD")
    assert bad.returncode == 1 and "unknown storage class" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # Unsigned: SeaweedFS refuses anonymous writes; the error names the refusal.
    anon = cli("sync", src, f"s3://{bucket}/anon", "--no-sign-request")
    assert anon.returncode != 0
    assert "denied" in anon.stderr.lower() or "403" in anon.stderr
