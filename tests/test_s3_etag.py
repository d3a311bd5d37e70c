"""`hashsync.etag` equals the ETag a real S3 server returns for boto3 multipart uploads."""

from __future__ import annotations

import random

import pytest
from boto3.s3.transfer import TransferConfig

import hashsync
from refs import MIB

pytestmark = pytest.mark.s3

# Sizes at and around part boundaries for each part size, plus 0 and 1 byte.
CASES = [
    (part, size)
    for part in (5 * MIB, 8 * MIB, 16 * MIB)
    for size in (0, 1, part - 1, part, part + 1, 2 * part, 2 * part + 12345)
]


@pytest.fixture(scope="module")
def blob():
    return random.Random(7).randbytes(2 * 16 * MIB + 12345)


@pytest.mark.parametrize(("part", "size"), CASES, ids=[f"{p // MIB}MiB-{s}" for p, s in CASES])
def test_etag_equals_server_etag(s3_server, bucket, tmp_path, blob, part, size):
    path = tmp_path / "obj.bin"
    path.write_bytes(blob[:size])
    client = s3_server.client()
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, use_threads=False)
    client.upload_file(str(path), bucket, "obj.bin", Config=config)
    server_etag = client.head_object(Bucket=bucket, Key="obj.bin")["ETag"].strip('"')
    assert hashsync.etag(path, part_size=part) == server_etag
    assert hashsync.etag_matches(path, server_etag)
    if size:
        data = bytearray(blob[:size])
        data[size // 2] ^= 0x01
        path.write_bytes(bytes(data))
        assert not hashsync.etag_matches(path, server_etag)


@pytest.mark.parametrize(
    "size",
    [0, 1, 8 * MIB * 10_000, 8 * MIB * 10_000 + 1, 100 * 1024**3, 400 * 1024**3, 5 * 1024**4],
)
def test_part_size_past_ten_thousand_parts_is_s3transfers(size):
    # What aws s3 cp / boto3 upload_file do (the reference: s3transfer's own adjuster), so a
    # file over 78 GiB uploads instead of being refused, and its ETag is predicted alike.
    from s3transfer.utils import ChunksizeAdjuster

    expected = ChunksizeAdjuster().adjust_chunksize(8 * MIB, size)
    assert hashsync._native.upload_part_size(size, part_size=8 * MIB) == expected


def test_a_part_size_above_five_gib_is_refused():
    with pytest.raises(hashsync.errors.InvalidPartSize, match="5 GiB"):
        hashsync._native.upload_part_size(5 * 1024**3 * 10_001, part_size=5 * 1024**3)
