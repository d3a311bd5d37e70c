"""Objects uploaded in parts of uneven sizes (issue 23, part 3), on the SeaweedFS test server.

A legal multipart upload may use any part sizes (6,000,000 / 5 MiB / 5 MiB / rest here). Its
``-4`` ETag cannot be matched by part-size inference, so hashsync learns the real part sizes
from the store (``HEAD ?partNumber=N``) to verify a download and to compare content; where the
store does not tell them, the object is still downloaded (with a warning) and compared by size
and modification time (with a warning), as ``aws s3 sync`` does, instead of failing forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import hashsync
from hashsync import verify
from hashsync.errors import HashsyncWarning, IntegrityError, PreconditionFailed
from hashsync.storage.s3 import S3Storage
from hashsync.testing.counting_proxy import CountingProxy
from hashsync.verify import verify_file
from refs import MIB
from sync_helpers import cli, s3

SIZES = [6_000_000, 5 * MIB, 5 * MIB, MIB + 123]
KEY = "uneven.bin"


def uneven_etag(data: bytes, sizes: list[int]) -> str:
    """S3's ETag of ``data`` uploaded in parts of ``sizes`` (the reference, from hashlib)."""
    digests, offset = b"", 0
    for n in sizes:
        digests += hashlib.md5(data[offset : offset + n]).digest()
        offset += n
    return f"{hashlib.md5(digests).hexdigest()}-{len(sizes)}"


def put_uneven(server, bucket: str, key: str, data: bytes, sizes: list[int] = SIZES) -> str:
    """Upload ``data`` with boto3 in parts of ``sizes``; returns the ETag (no quotes)."""
    client = server.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    parts, offset = [], 0
    for number, n in enumerate(sizes, 1):
        sent = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[offset : offset + n],
        )
        parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        offset += n
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


@pytest.fixture
def uneven(s3_server, bucket, tmp_path) -> bytes:
    """``p/uneven.bin`` in ``bucket``: random data in uneven parts, no checksum to fall back on."""
    data = os.urandom(sum(SIZES))
    etag = put_uneven(s3_server, bucket, f"p/{KEY}", data)
    assert etag == uneven_etag(data, SIZES)
    # What makes the case: inference cannot match the ETag, and no CRC64NVME can stand in.
    probe = tmp_path / "probe"
    probe.write_bytes(data)
    assert not hashsync.etag_matches(probe, etag)
    assert s3(s3_server, bucket, "p").get_crc64nvme(KEY) is None
    probe.unlink()
    return data


def ignore_part_numbers(storage: S3Storage) -> S3Storage:
    """Make ``storage`` talk to the server as to a store that ignores ``?partNumber=N``.

    The parameter is dropped before the request is built, so the real server answers a plain
    HEAD of the whole object (no parts count, no Content-Range), as such a store does.
    """

    raw = storage._raw_client()
    send = raw.call

    def call(method, key, query=None, *args, **kwargs):
        query = {k: v for k, v in (query or {}).items() if k != "partNumber"}
        return send(method, key, query, *args, **kwargs)

    raw.call = call
    return storage


def no_hashsync_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, HashsyncWarning)]


# -- what the store tells ---------------------------------------------------------------------


def test_the_store_reports_the_part_sizes(s3_server, bucket, uneven):
    storage = s3(s3_server, bucket, "p")
    etag = uneven_etag(uneven, SIZES)
    assert storage.get_part_sizes(KEY) == SIZES
    assert storage.get_part_sizes(KEY, etag=etag) == SIZES
    with pytest.raises(PreconditionFailed):  # pinned to a version the object no longer is
        storage.get_part_sizes(KEY, etag="0" * 32 + "-4")
    assert ignore_part_numbers(s3(s3_server, bucket, "p")).get_part_sizes(KEY) is None


# -- downloads ---------------------------------------------------------------------------------


def test_download_is_verified_with_the_real_part_sizes(s3_server, bucket, tmp_path, uneven):
    client = s3_server.client()
    # A normal multipart object beside it (boto3's 8 MiB parts): inference matches its ETag.
    even = os.urandom(12 * MIB)
    src = tmp_path / "even.bin"
    src.write_bytes(even)
    client.upload_file(str(src), bucket, "p/even.bin")
    with CountingProxy(s3_server.endpoint_url) as proxy:
        remote = s3(s3_server, bucket, "p", endpoint_url=proxy.url)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = hashsync.sync(remote, tmp_path / "down")
        counts = proxy.take()
    assert result.ok, result.failed
    assert sorted(result.transferred) == ["even.bin", KEY]
    assert (tmp_path / "down" / KEY).read_bytes() == uneven
    assert (tmp_path / "down" / "even.bin").read_bytes() == even
    assert no_hashsync_warnings(caught) == []  # verified, not merely accepted
    # One HEAD per object to download it, and one per part of the uneven object only.
    assert counts.requests["HEAD"] == 2 + len(SIZES)


def test_cli_sync_of_uneven_parts_succeeds_and_converges(s3_server, bucket, tmp_path, uneven):
    env = s3_server.env(inherit=True)
    env["HASHSYNC_CACHE_DIR"] = str(tmp_path / "cache")
    first = cli("sync", f"s3://{bucket}/p", tmp_path / "down", "--no-progress", env=env)
    assert first.returncode == 0, first.stderr
    assert "does not match" not in first.stderr and "warning" not in first.stderr
    assert (tmp_path / "down" / KEY).read_bytes() == uneven
    again = cli("sync", f"s3://{bucket}/p", tmp_path / "down", "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    assert "transferred 0 files" in again.stderr, again.stderr


def test_cli_diff_calls_an_unchanged_uneven_object_unchanged(s3_server, bucket, tmp_path, uneven):
    env = s3_server.env(inherit=True)
    env["HASHSYNC_CACHE_DIR"] = str(tmp_path / "cache")
    assert cli("sync", f"s3://{bucket}/p", tmp_path / "down", env=env).returncode == 0
    for src, dst in (
        (f"s3://{bucket}/p", tmp_path / "down"),
        (tmp_path / "down", f"s3://{bucket}/p"),
    ):
        d = cli("diff", src, dst, "--exit-code", "--json", env=env)
        assert d.returncode == 0, (d.stdout, d.stderr)
        plan = json.loads(d.stdout)
        assert plan["copy"] == [] and plan["unchanged"] == 1, plan
    (tmp_path / "down" / KEY).write_bytes(b"x" * len(uneven))  # same size, other content
    d = cli("diff", tmp_path / "down", f"s3://{bucket}/p", "--exit-code", env=env)
    assert d.returncode == 1 and d.stdout.split() == ["~", KEY], d.stdout


def test_a_corrupt_download_of_known_part_sizes_is_refused(
    s3_server, bucket, tmp_path, uneven, monkeypatch
):
    original = S3Storage._download_range

    def corrupting(self, key, etag, fd, start, end, size, report=None):
        original(self, key, etag, fd, start, end, size, report)
        if start <= 7_000_000 < end:  # a byte of part 2 arrives wrong
            os.pwrite(fd, bytes([uneven[7_000_000] ^ 0xFF]), 7_000_000)

    monkeypatch.setattr(S3Storage, "_download_range", corrupting)
    result = hashsync.sync(s3(s3_server, bucket, "p"), tmp_path / "down")
    assert [path for path, _ in result.failed] == [KEY]
    assert "does not match its ETag" in result.failed[0][1]
    assert not (tmp_path / "down" / KEY).exists()
    assert [p.name for p in (tmp_path / "down").iterdir()] == []  # no temporary left


def test_a_short_file_is_refused_with_known_part_sizes(s3_server, bucket, tmp_path, uneven):
    # The store's part sizes add up to the object; a file a byte short cannot pass the check.
    storage = s3(s3_server, bucket, "p")
    short = tmp_path / "short"
    short.write_bytes(uneven[:-1])
    head = storage.client.head_object(Bucket=bucket, Key=f"p/{KEY}", ChecksumMode="ENABLED")
    with pytest.raises(IntegrityError, match="ETag"):
        storage._verify_download(KEY, head, short)


def test_unverifiable_download_is_kept_with_a_warning(s3_server, bucket, tmp_path, uneven):
    storage = ignore_part_numbers(s3(s3_server, bucket, "p"))
    with pytest.warns(HashsyncWarning, match=r"uneven\.bin.*not verified"):
        result = hashsync.sync(storage, tmp_path / "down")
    assert result.ok and result.transferred == [KEY]
    assert (tmp_path / "down" / KEY).read_bytes() == uneven
    # The next sync compares it by size and modification time, says so, and copies nothing.
    with pytest.warns(HashsyncWarning, match="size and modification time"):
        again = hashsync.sync(storage, tmp_path / "down")
    assert again.ok and again.transferred == [] and again.skipped == 1
    # That weaker rule is aws's for downloads: a local file newer than the object is a local
    # edit (copied again), an older one is not.
    when = (tmp_path / "down" / KEY).stat().st_mtime
    for shift, expected in ((3600, [KEY]), (-3600, [])):
        os.utime(tmp_path / "down" / KEY, (when + shift, when + shift))
        with pytest.warns(HashsyncWarning, match="size and modification time"):
            plan = hashsync.sync(storage, tmp_path / "down", dry_run=True)
        assert plan.transferred == expected, shift


# -- comparisons (diff, dry run, repeated syncs) -------------------------------------------------


def test_unchanged_local_copy_is_not_copied_again(s3_server, bucket, tmp_path, uneven):
    local = tmp_path / "local"
    local.mkdir()
    (local / KEY).write_bytes(uneven)  # same content, a newer mtime than the object
    remote = s3(s3_server, bucket, "p")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        down = hashsync.sync(remote, local, dry_run=True)
        up = hashsync.sync(local, remote, dry_run=True)
    assert down.transferred == [] and down.skipped == 1
    assert up.transferred == [] and up.skipped == 1
    assert no_hashsync_warnings(caught) == []  # compared by content, not by a weaker rule


def test_changed_local_copy_of_the_same_size_is_copied(s3_server, bucket, tmp_path, uneven):
    local = tmp_path / "local"
    local.mkdir()
    changed = bytearray(uneven)
    changed[12_000_000] ^= 1
    (local / KEY).write_bytes(changed)
    remote = s3(s3_server, bucket, "p")
    assert hashsync.sync(remote, local, dry_run=True).transferred == [KEY]
    assert hashsync.sync(local, remote, dry_run=True).transferred == [KEY]


def test_upload_over_uneven_object_compared_weakly_when_sizes_unknown(
    s3_server, bucket, tmp_path, uneven
):
    local = tmp_path / "local"
    local.mkdir()
    (local / KEY).write_bytes(uneven)
    past = (local / KEY).stat().st_mtime - 3600  # written before the object was uploaded
    os.utime(local / KEY, (past, past))
    remote = ignore_part_numbers(s3(s3_server, bucket, "p"))
    with pytest.warns(HashsyncWarning, match="size and modification time"):
        result = hashsync.sync(local, remote, dry_run=True)
    assert result.transferred == [] and result.skipped == 1


# -- what aws s3 sync does on the same input ---------------------------------------------------


def test_aws_cli_downloads_it_unverified_and_skips_it_after(s3_server, bucket, tmp_path, uneven):
    aws = str(Path(sys.executable).parent / "aws")
    env = s3_server.env(inherit=True)
    args = [aws, "s3", "sync", f"s3://{bucket}/p", str(tmp_path / "aws"), "--only-show-errors"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "aws" / KEY).read_bytes() == uneven
    again = subprocess.run(
        [*args, "--dryrun"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and again.stdout == ""  # same size and mtime: skipped
    # hashsync agrees on both counts (and verifies the bytes on top).
    assert hashsync.sync(s3(s3_server, bucket, "p"), tmp_path / "hs").transferred == [KEY]
    assert (tmp_path / "hs" / KEY).read_bytes() == uneven
    assert (
        hashsync.sync(s3(s3_server, bucket, "p"), tmp_path / "aws", dry_run=True).transferred == []
    )


# -- the checks themselves, without a store ------------------------------------------------------


def test_multipart_etag_of_explicit_part_lengths(tmp_path):
    data = os.urandom(sum(SIZES))
    path = tmp_path / "blob"
    path.write_bytes(data)
    want = uneven_etag(data, SIZES)
    assert verify.multipart_etag(path, SIZES) == want
    assert verify.multipart_etag(path, SIZES, data=data) == want
    assert verify.multipart_etag(path, [5 * MIB, 5 * MIB, 5 * MIB, sum(SIZES) - 15 * MIB]) != want


def test_verify_file_is_strict_with_known_part_lengths(tmp_path):
    data = os.urandom(sum(SIZES))
    path = tmp_path / "blob"
    path.write_bytes(data)
    etag = uneven_etag(data, SIZES)
    asked = []
    verify_file(
        path, what="t", size=len(data), etag=etag, part_lengths=lambda: asked.append(1) or SIZES
    )
    assert asked == [1]
    bad = bytearray(data)
    bad[-1] ^= 1
    path.write_bytes(bad)
    with pytest.raises(IntegrityError, match="does not match its ETag"):
        verify_file(path, what="t", etag=etag, part_lengths=lambda: SIZES)
    path.write_bytes(data[:-1])  # truncated: the parts add up to more than the file
    with pytest.raises(IntegrityError):
        verify_file(path, what="t", etag=etag, part_lengths=lambda: SIZES)


def test_verify_file_warns_when_part_lengths_cannot_be_learned(tmp_path):
    data = os.urandom(sum(SIZES))
    path = tmp_path / "blob"
    path.write_bytes(data)
    etag = uneven_etag(data, SIZES)
    with pytest.warns(HashsyncWarning, match="GET x.*not verified"):
        verify_file(path, what="GET x", size=len(data), etag=etag, part_lengths=lambda: None)
    # Lengths that do not fit the ETag's part count are no answer either.
    with pytest.warns(HashsyncWarning, match="not verified"):
        verify_file(path, what="GET x", etag=etag, part_lengths=lambda: [len(data)])
    # The size is still checked.
    with pytest.raises(IntegrityError, match="bytes"):
        verify_file(path, what="GET x", size=len(data) + 1, etag=etag, part_lengths=lambda: None)
    # Without the lookup, the old rule stands: an ETag that cannot be matched fails.
    with pytest.raises(IntegrityError):
        verify_file(path, what="GET x", etag=etag)
