"""S3's native full-object CRC64NVME: sent on uploads, used to verify downloads (SeaweedFS)."""

from __future__ import annotations

import base64
import os

import pytest

import hashsync
from hashsync.errors import IntegrityError
from hashsync.storage import SimpleLocalStorage
from proxy_helpers import rewriting_proxy
from sync_helpers import s3

MIB = 1024**2


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def test_uploads_carry_the_native_checksum(s3_server, bucket, tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(data)
    hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p"))
    head = s3_server.client().head_object(Bucket=bucket, Key="p/a.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == _b64(hashsync.hash_bytes(data, "crc64nvme"))
    # write_bytes goes through the same PUT.
    s3(s3_server, bucket, "p").write_bytes("meta.json", b"{}")
    head = s3_server.client().head_object(Bucket=bucket, Key="p/meta.json", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == _b64(hashsync.hash_bytes(b"{}", "crc64nvme"))


def _upload_like_an_aws_sdk(client, bucket: str, key: str, data: bytes, part: int) -> None:
    """A multipart upload with a full-object CRC64NVME and no hashsync metadata."""
    m = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
    )
    parts = []
    for n, offset in enumerate(range(0, len(data), part), 1):
        r = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=m["UploadId"],
            PartNumber=n,
            Body=data[offset : offset + part],
            ChecksumCRC64NVME=_b64(hashsync.hash_bytes(data[offset : offset + part], "crc64nvme")),
        )
        parts.append(
            {"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC64NVME": r["ChecksumCRC64NVME"]}
        )
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=m["UploadId"],
        MultipartUpload={"Parts": parts},
        ChecksumCRC64NVME=_b64(hashsync.hash_bytes(data, "crc64nvme")),
        ChecksumType="FULL_OBJECT",
    )


def test_another_tools_multipart_object_is_verified_by_its_native_checksum(
    s3_server, bucket, tmp_path
):
    # 6 MiB + 1 byte parts: no part size hashsync would guess.
    data = os.urandom(13 * MIB)
    _upload_like_an_aws_sdk(s3_server.client(), bucket, "p/model.bin", data, 6 * MIB + 1)
    dest = SimpleLocalStorage(tmp_path / "ok")
    s3(s3_server, bucket, "p").copy("model.bin", dest)
    assert dest.path("model.bin").read_bytes() == data

    def flip(path: str, body: bytes) -> bytes:
        if "model.bin" not in path or len(body) < 1000:
            return body
        return body[:500] + bytes([body[500] ^ 1]) + body[501:]

    with rewriting_proxy(s3_server.endpoint_url, flip) as proxy:
        bad = SimpleLocalStorage(tmp_path / "bad")
        with pytest.raises(IntegrityError, match="CRC64NVME"):
            s3(s3_server, bucket, "p", endpoint_url=proxy).copy("model.bin", bad)
    assert not bad.exists("model.bin")


def test_a_store_refusing_the_checksum_header_gets_plain_puts(s3_server, bucket, tmp_path):
    log: list = []

    def refuse(method: str, path: str, headers: dict) -> tuple[int, bytes] | None:
        if method == "PUT" and any(k.lower() == "x-amz-checksum-crc64nvme" for k in headers):
            return 400, (
                b"<Error><Code>InvalidRequest</Code><Message>unknown checksum algorithm"
                b"</Message></Error>"
            )
        return None

    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(os.urandom(1000))
    with rewriting_proxy(s3_server.endpoint_url, log=log, answer_instead=refuse) as proxy:
        remote = s3(s3_server, bucket, "p", endpoint_url=proxy, max_concurrency=1)
        result = hashsync.sync(tmp_path / "src", remote, workers=1)
    assert result.ok and len(result.transferred) == 3
    puts = [path for method, path in log if method == "PUT"]
    # The first file: refused with the header, then sent plain; the others plain at once.
    assert len(puts) == 4
    for i in range(3):
        assert (
            s3(s3_server, bucket, "p").read_bytes(f"f{i}.bin")
            == (tmp_path / "src" / f"f{i}.bin").read_bytes()
        )


def test_multipart_uploads_carry_a_full_object_checksum(s3_server, bucket, tmp_path):
    data = os.urandom(11 * MIB)  # 3 parts of 5 MiB
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(data)
    result = hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p"))
    assert result.ok
    head = s3_server.client().head_object(Bucket=bucket, Key="p/big.bin", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert head["ChecksumCRC64NVME"] == _b64(hashsync.hash_bytes(data, "crc64nvme"))
    assert head["ETag"].strip('"') == hashsync.etag(tmp_path / "src" / "big.bin", part_size=5 * MIB)


def test_a_store_refusing_checksummed_multipart_uploads_gets_plain_ones(
    s3_server, bucket, tmp_path
):
    def refuse(method: str, path: str, headers: dict) -> tuple[int, bytes] | None:
        if "uploads" in path and any(k.lower() == "x-amz-checksum-algorithm" for k in headers):
            return 400, b"<Error><Code>InvalidRequest</Code><Message>no</Message></Error>"
        return None

    data = os.urandom(11 * MIB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(data)
    with rewriting_proxy(s3_server.endpoint_url, answer_instead=refuse) as proxy:
        result = hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p", endpoint_url=proxy))
    assert result.ok, result.failed
    dest = SimpleLocalStorage(tmp_path / "back")
    s3(s3_server, bucket, "p").copy("big.bin", dest)
    assert dest.path("big.bin").read_bytes() == data


def test_an_unmatchable_multipart_etag_is_settled_by_the_native_checksum(
    s3_server, bucket, tmp_path
):
    # Another tool's object with parts of 6 MiB + 1 byte: its ETag cannot be matched by
    # part-size inference, so without the checksum every sync would upload the file again.
    data = os.urandom(13 * MIB)
    _upload_like_an_aws_sdk(s3_server.client(), bucket, "q/model.bin", data, 6 * MIB + 1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(data)
    (src / "small.txt").write_bytes(b"small")
    s3(s3_server, bucket, "q").write_bytes("small.txt", b"small")
    log: list[tuple[str, str]] = []
    with rewriting_proxy(s3_server.endpoint_url, log=log) as proxy:
        r = hashsync.sync(src, s3(s3_server, bucket, "q", endpoint_url=proxy))
    assert r.transferred == [] and r.skipped == 2
    # One HEAD, for the unresolved object only; no upload.
    assert [(m, p.split("?")[0]) for m, p in log if m != "GET"] == [
        ("HEAD", f"/{bucket}/q/model.bin")
    ]
    # The other way round too.
    r = hashsync.sync(s3(s3_server, bucket, "q"), src)
    assert r.transferred == [] and r.skipped == 2
    # Same size, other content: copied.
    changed = bytearray(data)
    changed[7 * MIB] ^= 1
    (src / "model.bin").write_bytes(bytes(changed))
    r = hashsync.sync(src, s3(s3_server, bucket, "q"))
    assert r.transferred == ["model.bin"]


def test_an_unmatchable_etag_without_a_checksum_is_checked_by_part_sizes(
    s3_server, bucket, tmp_path
):
    data = os.urandom(11 * MIB)
    client = s3_server.client()
    m = client.create_multipart_upload(Bucket=bucket, Key="n/x.bin")
    parts = []
    for n, offset in enumerate(range(0, len(data), 5 * MIB + 7), 1):
        part = data[offset : offset + 5 * MIB + 7]
        r = client.upload_part(
            Bucket=bucket, Key="n/x.bin", UploadId=m["UploadId"], PartNumber=n, Body=part
        )
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="n/x.bin", UploadId=m["UploadId"], MultipartUpload={"Parts": parts}
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.bin").write_bytes(data)
    r = hashsync.sync(src, s3(s3_server, bucket, "n"))
    # No checksum, but the store reports the part sizes (HEAD ?partNumber=N): same content.
    assert r.transferred == [] and r.skipped == 1
    changed = bytearray(data)
    changed[6 * MIB] ^= 1
    (src / "x.bin").write_bytes(bytes(changed))
    r = hashsync.sync(src, s3(s3_server, bucket, "n"))
    assert r.transferred == ["x.bin"]  # same size, other content: uploaded
    r = hashsync.sync(src, s3(s3_server, bucket, "n"))
    assert r.transferred == []  # hashsync's own upload has a matchable ETag and a checksum
