"""A file's mtime survives an upload and a download (issue 28 item 3; aws-cli#3069).

Kept in the metadata rclone uses, so rclone and hashsync read each other's.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import hashsync
from hashsync.storage._mtime import gcs_mtime, mtime_from, s3_mtime
from hashsync.storage.gcs import GCSStorage
from hashsync.testing import find_rclone
from sync_helpers import s3

OLD_NS = 1_600_000_000_123_456_789  # 2020-09-13, with nanoseconds


def test_the_formats_are_rclones():
    assert s3_mtime(OLD_NS) == "1600000000.123456789"
    assert gcs_mtime(OLD_NS) == {
        "mtime": "2020-09-13T12:26:40.123456789Z",
        "goog-reserved-file-mtime": "1600000000",
    }
    assert mtime_from({"mtime": "1600000000.123456789"}) == OLD_NS
    assert mtime_from({"mtime": "2020-09-13T12:26:40.123456789Z"}) == OLD_NS
    assert mtime_from({"mtime": "2020-09-13T14:26:40.5+02:00"}) == 1_600_000_000_500_000_000
    assert mtime_from({"goog-reserved-file-mtime": "1600000000"}) == 1_600_000_000 * 10**9
    assert mtime_from({"mtime": "-5.500000000"}) == -4_500_000_000  # as rclone writes it
    for bad in ("", "soon", "1e30", "99999999999999999999", "2020-13-45T00:00:00Z"):
        assert mtime_from({"mtime": bad}) is None


def _files(root):
    root.mkdir(parents=True, exist_ok=True)
    for name, size in (("small.txt", 10), ("big.bin", 6 * 1024**2)):
        (root / name).write_bytes(os.urandom(size))
        os.utime(root / name, ns=(OLD_NS, OLD_NS))
    return root


@pytest.mark.s3
def test_s3_round_trip_keeps_mtime(s3_server, bucket, tmp_path):
    src = _files(tmp_path / "src")
    remote = s3(s3_server, bucket, "m")
    hashsync.sync(src, remote, progress=False)
    head = s3_server.client().head_object(Bucket=bucket, Key="m/small.txt")
    assert head["Metadata"]["mtime"] == "1600000000.123456789"
    down = tmp_path / "down"
    hashsync.sync(remote, down, progress=False)
    for name in ("small.txt", "big.bin"):  # one GET, and ranged GETs
        assert os.stat(down / name).st_mtime_ns == OLD_NS
    # A size-and-mtime sync agrees both ways: nothing to do after the round trip.
    assert hashsync.sync(remote, down, compare="size-mtime", progress=False).transferred == []
    assert hashsync.sync(down, remote, compare="size-mtime", progress=False).transferred == []
    # rclone, as an S3 client, reads the same time.
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[s3]\ntype = s3\nprovider = Other\n"
        f"endpoint = {s3_server.endpoint_url}\naccess_key_id = {s3_server.access_key}\n"
        f"secret_access_key = {s3_server.secret_key}\n"
    )
    listed = subprocess.run(
        [find_rclone(), "--config", str(config), "lsl", f"s3:{bucket}/m"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("2020-09-13 12:26:40.123456789") == 2
    # An object without the metadata (another tool's) gets the object's time, as before.
    s3_server.client().put_object(Bucket=bucket, Key="m/plain.txt", Body=b"x")
    hashsync.sync(remote, down, progress=False)
    modified = remote.get_last_modified("plain.txt")
    assert os.stat(down / "plain.txt").st_mtime == modified.timestamp()


def test_gcs_round_trip_keeps_mtime_and_agrees_with_rclone(
    gcs_emulator, gcs_env, gcs_bucket, tmp_path
):
    src = _files(tmp_path / "src")
    (src / "big.bin").unlink()  # rclone's resumable uploads stop on the emulator
    remote = GCSStorage(gcs_bucket, "m", part_size=256 * 1024, upload_chunk_size=256 * 1024)
    (src / "mid.bin").write_bytes(os.urandom(700 * 1024))  # a resumable upload of ours
    os.utime(src / "mid.bin", ns=(OLD_NS, OLD_NS))
    hashsync.sync(src, remote, progress=False)
    down = tmp_path / "down"
    hashsync.sync(remote, down, progress=False)
    for name in ("small.txt", "mid.bin"):
        assert os.stat(down / name).st_mtime_ns == OLD_NS

    config = tmp_path / "rclone.conf"
    config.write_text(
        "[gcs]\ntype = google cloud storage\nanonymous = true\n"
        f"endpoint = {gcs_emulator.endpoint_url}\nbucket_policy_only = true\n"
    )
    rclone = [find_rclone(), "--config", str(config)]
    listed = subprocess.run(
        [*rclone, "lsl", f"gcs:{gcs_bucket}/m"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("2020-09-13 12:26:40.123456789") == 2  # rclone reads ours
    # And hashsync reads rclone's.
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "t.txt").write_bytes(b"rclone")
    os.utime(tmp_path / "theirs" / "t.txt", ns=(OLD_NS, OLD_NS))
    subprocess.run([*rclone, "copy", str(tmp_path / "theirs"), f"gcs:{gcs_bucket}/r"], check=True)
    hashsync.sync(GCSStorage(gcs_bucket, "r"), tmp_path / "back", progress=False)
    assert os.stat(tmp_path / "back" / "t.txt").st_mtime_ns == OLD_NS
