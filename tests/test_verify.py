"""hashsync.verify: one check of downloaded data, against hashlib and S3's ETag rule."""

from __future__ import annotations

import hashlib
import random

import pytest

import hashsync
from hashsync.errors import IntegrityError, InvalidArgument
from hashsync.verify import is_content_etag, parse_digest, verify_file
from refs import MIB, s3_etag

DATA = random.Random(7).randbytes(11 * MIB + 5)


@pytest.fixture
def blob(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(DATA)
    return p


def test_every_given_check_passes(blob):
    verify_file(
        blob,
        what="t",
        size=len(DATA),
        digest="sha256:" + hashlib.sha256(DATA).hexdigest(),
        crc64nvme=hashsync.hash_bytes(DATA, "crc64nvme"),
        md5=hashlib.md5(DATA).hexdigest(),
        etag=s3_etag(DATA, 5 * MIB),
    )
    verify_file(blob, what="t", etag=s3_etag(DATA, 6 * MIB), part_sizes=[6 * MIB])
    verify_file(blob, what="t", md5=hashlib.md5(DATA).hexdigest(), data=DATA)


@pytest.mark.parametrize(
    "check",
    [
        {"size": len(DATA) - 1},
        {"digest": "sha256:" + "0" * 64},
        {"digest": "blake3:" + "0" * 64},
        {"crc64nvme": "0" * 16},
        {"md5": "0" * 32},
        {"etag": "0" * 32},
        {"etag": "0" * 32 + "-3"},
    ],
)
def test_a_failing_check_raises(blob, check):
    with pytest.raises(IntegrityError, match="GET x"):
        verify_file(blob, what="GET x", **check)


def test_unusual_part_size_found_by_the_last_lookup(blob):
    # 7 MiB + 1 parts: not inferable from "-2" and the size alone, found by the lookup.
    odd = 7 * MIB + 1
    etag = s3_etag(DATA, odd)
    asked = []
    verify_file(blob, what="t", etag=etag, more_part_sizes=lambda: asked.append(1) or [odd])
    assert asked == [1]


def test_non_content_etags_are_not_checked(blob):
    assert not is_content_etag("not-an-md5") and is_content_etag("0" * 32 + "-12")
    verify_file(blob, what="t", etag="abc123")  # an encrypted object's ETag: says nothing


def test_parse_digest():
    assert parse_digest("SHA256:ABCD") == ("sha256", "abcd")
    for bad in ("abcd", "sha256:", "nope:abcd", "etag:abcd"):
        with pytest.raises(InvalidArgument):
            parse_digest(bad)
