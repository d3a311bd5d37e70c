"""The sync engine and `hashsync sync`, against SeaweedFS over HTTP."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hashsync
from hashsync import errors, sync
from hashsync.storage import SimpleLocalStorage
from refs import MIB
from sync_helpers import PART, cli, keys, s3, write_tree

pytestmark = pytest.mark.s3


# -- round trips ----------------------------------------------------------------------------

segment = st.text(
    alphabet=st.sampled_from(list("abcxyz_-0189 éü日本") + ["ß"]), min_size=1, max_size=8
).filter(lambda s: s.strip() == s and s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
payload = st.one_of(
    st.just(b""),
    st.binary(max_size=2000),
    st.integers(0, 2**16).map(lambda seed: random.Random(seed).randbytes(PART + 1234)),
)
trees = st.dictionaries(paths, payload, min_size=1, max_size=8).filter(
    lambda t: not any(a != b and b.startswith(a + "/") for a in t for b in t)
)


@given(tree=trees)
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_round_trip_local_s3_local(s3_server, tmp_path_factory, tree):
    base = tmp_path_factory.mktemp("rt")
    bucket = f"rt{secrets.token_hex(6)}"  # hypothesis seeds `random`, so not random
    s3_server.create_bucket(bucket)
    write_tree(base / "src", tree)
    remote = s3(s3_server, bucket, "data")
    up = sync(SimpleLocalStorage(base / "src", part_size=PART), remote)
    assert sorted(up.transferred) == sorted(tree) and up.ok
    down = sync(remote, SimpleLocalStorage(base / "back", part_size=PART))
    assert sorted(down.transferred) == sorted(tree) and down.ok
    assert hashsync.tree_hash(base / "src") == hashsync.tree_hash(base / "back")
    # Everything is in step now: nothing moves either way.
    assert not sync(SimpleLocalStorage(base / "src", part_size=PART), remote).transferred
    assert not sync(remote, SimpleLocalStorage(base / "back", part_size=PART)).transferred


def test_same_size_older_mtime_edit_is_transferred(s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"weights.bin": b"A" * 4096, "other.txt": b"unchanged"})
    remote = s3(s3_server, bucket)
    local = SimpleLocalStorage(src, part_size=PART)
    assert len(sync(local, remote).transferred) == 2
    old = time.time() - 7 * 24 * 3600  # older than the upload, as after a restore from backup
    (src / "weights.bin").write_bytes(b"B" * 4096)
    os.utime(src / "weights.bin", (old, old))
    result = sync(local, remote)
    assert result.transferred == ["weights.bin"] and result.skipped == 1
    assert keys(remote)["weights.bin"] == hashsync.etag(src / "weights.bin", part_size=PART)
    # The size-mtime rule (what aws s3 sync does) misses it, as documented.
    (src / "weights.bin").write_bytes(b"C" * 4096)
    os.utime(src / "weights.bin", (old, old))
    assert sync(local, remote, compare="size-mtime").transferred == []
    assert sync(local, remote).transferred == ["weights.bin"]


def test_s3_to_s3_server_side_and_download_mtime(s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a/big.bin": random.Random(1).randbytes(2 * PART + 5), "b.txt": b"b"})
    first = s3(s3_server, bucket, "one")
    sync(SimpleLocalStorage(src, part_size=PART), first)
    second = s3(s3_server, bucket, "two")
    result = sync(first, second)
    assert sorted(result.transferred) == ["a/big.bin", "b.txt"]
    assert keys(second) == keys(first)
    down = tmp_path / "down"
    sync(second, down)
    assert hashsync.tree_hash(down) == hashsync.tree_hash(src)
    remote_mtime = second.get_last_modified("b.txt").timestamp()
    assert abs((down / "b.txt").stat().st_mtime - remote_mtime) < 1


def test_delete_and_dry_run(s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"keep": b"1", "new": b"2"})
    remote = s3(s3_server, bucket)
    write_tree(tmp_path / "seed", {"keep": b"1", "extra/a": b"x", "extra/b": b"y"})
    sync(tmp_path / "seed", remote)
    before = keys(remote)
    dry = sync(src, remote, delete=True, dry_run=True)
    assert (
        dry.dry_run and dry.transferred == ["new"] and sorted(dry.deleted) == ["extra/a", "extra/b"]
    )
    assert keys(remote) == before  # nothing changed
    real = sync(src, remote, delete=True)
    assert real.transferred == ["new"] and sorted(real.deleted) == ["extra/a", "extra/b"]
    assert sorted(keys(remote)) == ["keep", "new"]


def test_delete_is_suppressed_after_a_failed_transfer(tmp_path):
    write_tree(tmp_path / "src", {"d/x": b"file under d", "ok": b"1"})
    write_tree(tmp_path / "dst", {"stale": b"s"})

    def vanish(plan) -> None:  # listed, then gone before its transfer: that transfer fails
        (tmp_path / "src" / "d" / "x").unlink()

    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, on_plan=vanish)
    assert [k for k, _ in result.failed] == ["d/x"]
    assert result.delete_suppressed and result.deleted == []
    assert (tmp_path / "dst" / "stale").exists()
    assert result.transferred == ["ok"] and not result.ok


# -- include/exclude with awscli as the oracle ------------------------------------------------

FILTER_CASES = [
    [("exclude", "*.tmp")],
    [("exclude", "*"), ("include", "*.txt")],
    [("exclude", "*"), ("include", "logs/*"), ("exclude", "logs/old*")],
    [("include", "*.txt"), ("exclude", "a/*")],
    [("exclude", "?.bin"), ("exclude", "[ab]/*.txt")],
]


@pytest.mark.parametrize("rules", FILTER_CASES, ids=[str(i) for i in range(len(FILTER_CASES))])
def test_filters_match_awscli(s3_server, bucket, tmp_path, rules):
    files = [
        "a.txt",
        "b.bin",
        "x.tmp",
        "a/y.txt",
        "a/z.bin",
        "b/q.txt",
        "logs/new.log",
        "logs/old-1.log",
        "c/d/e.txt",
        "1.bin",
    ]
    write_tree(tmp_path / "src", {f: f.encode() for f in files})
    env = s3_server.env(inherit=True)
    args = [a for kind, pattern in rules for a in (f"--{kind}", pattern)]
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "aws"),
            "s3",
            "sync",
            str(tmp_path / "src"),
            f"s3://{bucket}/aws",
            "--only-show-errors",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = sync(tmp_path / "src", s3(s3_server, bucket, "hs"), filters=rules)
    assert sorted(result.transferred) == sorted(keys(s3(s3_server, bucket, "aws")))


# -- interruption ------------------------------------------------------------------------------


def test_sigkill_midway_then_rerun(s3_server, bucket, tmp_path):
    rng = random.Random(9)
    tree = {f"part-{i:02d}.bin": rng.randbytes(3 * MIB) for i in range(24)}
    write_tree(tmp_path / "src", tree)
    remote = s3(s3_server, bucket)
    sync(tmp_path / "src", remote)
    env = s3_server.env(inherit=True)
    env["HASHSYNC_CACHE_DIR"] = str(tmp_path / "state")
    cmd = [
        sys.executable,
        "-m",
        "hashsync",
        "sync",
        f"s3://{bucket}",
        str(tmp_path / "down"),
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    down = tmp_path / "down"
    # Kill it once some, but not all, files have landed.
    while time.monotonic() < deadline:
        done = list(down.glob("part-*.bin")) if down.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed = sorted(p.name for p in down.glob("part-*.bin"))
    assert 0 < len(landed) < len(tree), "the kill did not land mid-sync"
    for name in landed:  # whatever has a final name is complete
        assert (down / name).read_bytes() == tree[name]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert hashsync.tree_hash(down) == hashsync.tree_hash(tmp_path / "src")
    assert not [p for p in down.iterdir() if "hashsync-tmp" in p.name]


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_cli(s3_server, bucket, tmp_path):
    env = s3_server.env(inherit=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    r = cli("sync", tmp_path / "missing", f"s3://{bucket}", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr and "missing" in r.stderr
    r = cli("sync", tmp_path / "src", "s3://no-such-bucket-here/x", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = cli(
        "sync",
        tmp_path / "src",
        f"s3://{bucket}",
        "--endpoint-url",
        "http://127.0.0.1:9",
        env={**env, "AWS_MAX_ATTEMPTS": "1"},
    )
    assert r.returncode == 1 and "unreachable" in r.stderr
    bad = {**env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    r = cli("sync", tmp_path / "src", f"s3://{bucket}", env=bad)
    assert r.returncode == 1 and ("denied" in r.stderr.lower() or "signature" in r.stderr.lower())
    (tmp_path / "afile").write_bytes(b"")
    r = cli("sync", tmp_path / "src", tmp_path / "afile", env=env)
    assert r.returncode == 1 and "not a directory" in r.stderr
    r = cli("sync", tmp_path / "src", "ftp://host/x", env=env)
    assert r.returncode == 1 and "unknown storage URL scheme" in r.stderr


def test_api_errors(tmp_path):
    with pytest.raises(errors.NotFound):
        sync(tmp_path / "missing", tmp_path / "dst")
    (tmp_path / "src").mkdir()
    with pytest.raises(errors.InvalidArgument):
        sync(tmp_path / "src", tmp_path / "dst", compare="mtime")
    with pytest.raises(errors.InvalidArgument):
        sync(tmp_path / "src", tmp_path / "dst", workers=0)


def test_cli_json_and_exit_codes(s3_server, bucket, tmp_path):
    env = s3_server.env(inherit=True)
    env["HASHSYNC_CACHE_DIR"] = str(tmp_path / "state")
    write_tree(tmp_path / "src", {"a": b"1", "b/c": b"22"})
    r = cli("sync", tmp_path / "src", f"s3://{bucket}/p", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["transferred"]) == ["a", "b/c"] and out["bytes_transferred"] == 3
    r = cli("sync", tmp_path / "src", f"s3://{bucket}/p", "--dryrun", env=env)
    assert r.returncode == 0 and "would transfer 0 files" in r.stderr
    (tmp_path / "src" / "a").write_bytes(b"9")
    r = cli("sync", tmp_path / "src", f"s3://{bucket}/p", "--dryrun", env=env)
    assert "(dryrun) upload: a" in r.stdout
    r = cli("diff", tmp_path / "src", f"s3://{bucket}/p", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "~ a"


def test_uploads_carry_whole_content_crc64nvme(s3_server, bucket, tmp_path):
    big = random.Random(3).randbytes(PART + 17)
    write_tree(tmp_path / "src", {"small": b"abc", "big": big})
    sync(SimpleLocalStorage(tmp_path / "src", part_size=PART), s3(s3_server, bucket))
    client = s3_server.client()
    for key in ("small", "big"):
        meta = client.head_object(Bucket=bucket, Key=key)["Metadata"]
        want = hashsync.hash_file(tmp_path / "src" / key, "crc64nvme")
        assert meta["hashsync-crc64nvme"] == want
        assert meta["hashsync-part-size"] == str(PART)


def test_http_to_local(tmp_path):
    from storage_helpers import serve_directory

    tree = {"index.json": b"{}", "shards/a.bin": b"a" * 5000, "shards/b.bin": b"b" * 70_000}
    write_tree(tmp_path / "site" / "ds", tree)
    with serve_directory(tmp_path / "site") as server:
        result = sync(f"{server.url}/ds/", tmp_path / "down")
        assert sorted(result.transferred) == sorted(tree) and result.ok
        assert hashsync.tree_hash(tmp_path / "down") == hashsync.tree_hash(tmp_path / "site" / "ds")
        again = sync(f"{server.url}/ds/", tmp_path / "down")
        assert again.transferred == [] and again.skipped == len(tree)


def test_multipart_server_side_copy_path(s3_server, bucket, tmp_path, monkeypatch):
    # Objects above 5 GiB are copied with UploadPartCopy; exercise that path on a small object.
    import hashsync.storage._s3_writing as s3mod

    monkeypatch.setattr(s3mod, "MAX_COPY_OBJECT", 0)
    data = random.Random(5).randbytes(2 * PART + 99)
    write_tree(tmp_path / "src", {"blob": data})
    first, second = s3(s3_server, bucket, "one"), s3(s3_server, bucket, "two")
    sync(tmp_path / "src", first)
    second.copy_object_from(first, "blob")
    assert second.get_size("blob") == len(data)
    sync(second, tmp_path / "down")
    assert (tmp_path / "down" / "blob").read_bytes() == data


def test_progress_may_be_a_callback_a_bool_or_none(tmp_path, monkeypatch):
    from hashsync import _progress

    write_tree(tmp_path / "src", {"a": b"x" * 1000, "b/c": b"y" * 500})
    seen: list[tuple[int, int]] = []
    assert hashsync.sync(tmp_path / "src", tmp_path / "d1", progress=lambda *a: seen.append(a)).ok
    assert seen[-1] == (1500, 1500)
    assert hashsync.sync(tmp_path / "src", tmp_path / "d2", progress=False).ok
    assert hashsync.sync(tmp_path / "src", tmp_path / "d3", progress=None).ok
    # True draws a bar (stderr is no terminal here, so the bar's callback does nothing).
    bars: list[str] = []
    real = _progress.byte_progress

    def recording(description, **kw):
        bars.append(description)
        return real(description, **kw)

    monkeypatch.setattr(_progress, "byte_progress", recording)
    assert hashsync.sync(tmp_path / "src", tmp_path / "d4", progress=True).ok
    assert bars == ["sync"] and (tmp_path / "d4" / "b" / "c").read_bytes() == b"y" * 500
    with pytest.raises(errors.InvalidArgument, match="progress"):
        hashsync.sync(tmp_path / "src", tmp_path / "d5", progress="yes")
    assert not (tmp_path / "d5").exists()
