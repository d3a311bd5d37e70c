"""``--compare size-mtime`` decides exactly as ``aws s3 sync`` does, in both directions.

aws uploads (and copies) when the local file is newer than the object, and downloads when the
local file is newer than the object too: a download stamps the file with the object's
Last-Modified, so a newer local file means a local edit. Each case is run through the aws CLI
(``--dryrun``) and through hashsync on the same input, and the decisions must be equal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashsync import sync
from sync_helpers import s3, write_tree

pytestmark = pytest.mark.s3


def aws_dryrun(server, src: str, dst: str) -> set[str]:
    r = subprocess.run(
        [str(Path(sys.executable).parent / "aws"), "s3", "sync", src, dst, "--dryrun"],
        env=server.env(inherit=True),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    # "(dryrun) download: s3://b/p/k to /x/k" or "(dryrun) upload: /x/k to s3://b/p/k"
    return {m.group(1) for m in re.finditer(r"\(dryrun\) \w+: \S+? to (\S+)", r.stdout)}


def touch(path: Path, when: float) -> None:
    os.utime(path, (when, when))


CASES = {
    "same.bin": b"AAAA",  # same size, local older than the object: both skip
    "edited.bin": b"BBBB",  # same size, local newer: aws replaces the local edit
    "grown.bin": b"CCCCCC",  # size differs
    "equal-second.bin": b"DDDD",  # downloads: 0.4 s newer; uploads: older
}
LOCAL = {
    "same.bin": b"aaaa",
    "edited.bin": b"bbbb",
    "grown.bin": b"cc",
    "equal-second.bin": b"dddd",
}


def test_downloads_follow_the_aws_rule(s3_server, bucket, tmp_path):
    store = s3(s3_server, bucket, "p")
    for key, data in CASES.items():
        store.write_bytes(key, data)
    stamp = {o.key: o.last_modified.timestamp() for o in store.list()}
    for name in ("aws", "hs"):
        write_tree(tmp_path / name, LOCAL)
        touch(tmp_path / name / "same.bin", stamp["same.bin"] - 3600)
        touch(tmp_path / name / "edited.bin", stamp["edited.bin"] + 3600)
        touch(tmp_path / name / "grown.bin", stamp["grown.bin"] - 3600)
        touch(tmp_path / name / "equal-second.bin", stamp["equal-second.bin"] + 0.4)
    theirs = aws_dryrun(s3_server, f"s3://{bucket}/p", str(tmp_path / "aws"))
    theirs = {Path(p).name for p in theirs}
    ours = sync(store, tmp_path / "hs", compare="size-mtime", dry_run=True)
    # aws compares to the microsecond: a local write 0.4 s after the object counts as newer.
    assert set(ours.transferred) == theirs == {"edited.bin", "equal-second.bin", "grown.bin"}
    # The real run converges: the edit is replaced, and a second run has nothing to do.
    assert sorted(sync(store, tmp_path / "hs", compare="size-mtime").transferred) == [
        "edited.bin",
        "equal-second.bin",
        "grown.bin",
    ]
    assert (tmp_path / "hs" / "edited.bin").read_bytes() == b"BBBB"
    assert sync(store, tmp_path / "hs", compare="size-mtime").transferred == []


def test_uploads_follow_the_aws_rule(s3_server, bucket, tmp_path):
    store = s3(s3_server, bucket, "p")
    for key, data in CASES.items():
        store.write_bytes(key, data)
    stamp = {o.key: o.last_modified.timestamp() for o in store.list()}
    write_tree(tmp_path / "src", LOCAL)
    touch(tmp_path / "src" / "same.bin", stamp["same.bin"] - 3600)
    touch(tmp_path / "src" / "edited.bin", stamp["edited.bin"] + 3600)
    touch(tmp_path / "src" / "grown.bin", time.time() - 7200)
    touch(tmp_path / "src" / "equal-second.bin", stamp["equal-second.bin"] - 3600)
    theirs = aws_dryrun(s3_server, str(tmp_path / "src"), f"s3://{bucket}/p")
    theirs = {p.rpartition("/")[2] for p in theirs}
    ours = sync(tmp_path / "src", store, compare="size-mtime", dry_run=True)
    assert set(ours.transferred) == theirs == {"edited.bin", "grown.bin"}
