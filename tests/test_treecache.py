"""TreeCache against a real S3 server (SeaweedFS): seed 000's scenarios, leases, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import hashsync
from hashsync.errors import (
    ConditionsNotEnforced,
    HashsyncWarning,
    InvalidArgument,
    NotFound,
    WaitTimeout,
)
from hashsync.treecache import TreeCache
from hashsync.treecache._state import state_path
from sync_helpers import s3, write_tree

BASE = {
    "data/shard-000.bin": os.urandom(300_000),
    "data/shard-001.bin": os.urandom(6 * 1024**2),  # multipart at 5 MiB parts
    "meta/info.json": b'{"samples": 2}',
    "empty.txt": b"",
}


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    # Hash state and the remembered store checks stay inside the test.
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "hashsync-cache"))


@pytest.fixture
def remote(s3_server, bucket, s3_env) -> str:
    return f"s3://{bucket}/caches"


def make_cache(local: Path, remote: str, **kw) -> TreeCache:
    kw.setdefault("verbose", False)
    kw.setdefault("storage_options", {"part_size": 5 * 1024**2, "max_attempts": 2})
    return TreeCache(local, remote, name="slipcache", key=kw.pop("key", "k1"), **kw)


class Builder:
    """A build function that counts its calls."""

    def __init__(self, files=BASE) -> None:
        self.calls = 0
        self.files = files

    def __call__(self, out: Path) -> None:
        self.calls += 1
        write_tree(out, self.files)


def remote_keys(s3_server, bucket, prefix="caches/slipcache-k1") -> dict[str, str]:
    return {i.key: i.hash for i in s3(s3_server, bucket, prefix).list()}


def recorded_state(local: Path) -> dict:
    """This machine's bookkeeping of the copy in ``local`` (under $HASHSYNC_CACHE_DIR)."""
    return json.loads(state_path(local).read_bytes())


def without_meta(local: Path, into: Path) -> Path:
    shutil.copytree(local, into, ignore=shutil.ignore_patterns(".hashsync"))
    return into


def test_seed_000_scenarios_in_order(tmp_path, remote, s3_server, bucket):
    local = tmp_path / "cache"
    build = Builder()

    # 1. Remote missing: build locally and upload; the manifest is written last.
    assert make_cache(local, remote).ensure(build) == local
    assert build.calls == 1
    stored = remote_keys(s3_server, bucket)
    assert set(stored) == set(BASE) | {".hashsync/manifest.json"}
    manifest = json.loads((local / ".hashsync/manifest.json").read_bytes())
    assert manifest["key"] == "k1" and manifest["name"] == "slipcache"
    assert set(manifest["files"]) == set(BASE)
    assert manifest["tool"] == f"hashsync {hashsync.__version__}"
    for rel, data in BASE.items():
        assert (local / rel).read_bytes() == data

    # 2. Remote present, local missing: download (verified), no build.
    shutil.rmtree(local)
    assert make_cache(local, remote).ensure(build) == local
    assert build.calls == 1
    for rel, data in BASE.items():
        assert (local / rel).read_bytes() == data
    assert manifest["tree_hash"] == hashsync.tree_hash(without_meta(local, tmp_path / "copy"))

    # 3. Both present: an index added locally reaches the remote.
    (local / "label_index.npy").write_bytes(b"index v1")
    make_cache(local, remote).ensure(build)
    assert "label_index.npy" in remote_keys(s3_server, bucket)
    (local / "normalization_stats.json").write_text('{"mean": 0.5}')
    assert make_cache(local, remote).sync() == (0, 1)
    assert make_cache(local, remote).sync() == (0, 0)

    # 4. Derived files deleted locally come back.
    (local / "label_index.npy").unlink()
    (local / "normalization_stats.json").unlink()
    make_cache(local, remote).ensure(build)
    assert (local / "label_index.npy").read_bytes() == b"index v1"
    assert (local / "normalization_stats.json").read_text() == '{"mean": 0.5}'
    assert build.calls == 1


BUILDER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import hashsync

    local, remote, ttl, pause, log = sys.argv[1:6]

    def build(out):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(float(pause))
        (out / "big.bin").write_bytes(b"x" * 100_000)
        (out / "sub").mkdir()
        (out / "sub" / "small.txt").write_text("built")

    cache = hashsync.TreeCache(local, remote, name="slipcache", key="k1", verbose=False,
                               lease_ttl=float(ttl), poll_interval=0.2)
    cache.ensure(build)
    print("ok", (Path(local) / "sub" / "small.txt").read_text())
    """
)


def start_builder(tmp_path, local, remote, *, ttl=30.0, pause=2.0, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            BUILDER_SCRIPT,
            str(local),
            remote,
            str(ttl),
            str(pause),
            str(tmp_path / "builds.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def builds(tmp_path) -> list[str]:
    log = tmp_path / "builds.log"
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize(
    ("ttl", "pause"),
    [(30.0, 2.0), (1.0, 3.0)],
    ids=["short-build", "build-outlasting-the-lease-ttl"],
)
def test_two_processes_calling_ensure_at_once_build_once(
    tmp_path, remote, s3_server, bucket, ttl, pause
):
    # With a build three times the lease's TTL, only the refreshes keep the waiter away.
    procs = [
        start_builder(tmp_path, tmp_path / f"machine{i}", remote, ttl=ttl, pause=pause)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, errtext) in zip(procs, outs, strict=True):
        assert p.returncode == 0, errtext
        assert out.strip() == "ok built"
    assert len(builds(tmp_path)) == 1
    assert set(remote_keys(s3_server, bucket)) == {
        "big.bin",
        "sub/small.txt",
        ".hashsync/manifest.json",
    }
    a = without_meta(tmp_path / "machine0", tmp_path / "a")
    b = without_meta(tmp_path / "machine1", tmp_path / "b")
    assert hashsync.tree_hash(a) == hashsync.tree_hash(b)


def test_a_killed_builder_is_taken_over_after_its_lease_expires(
    tmp_path, remote, s3_server, bucket
):
    victim = start_builder(tmp_path, tmp_path / "victim", remote, ttl=2.0, pause=600)
    deadline = time.monotonic() + 60
    while not builds(tmp_path):
        assert time.monotonic() < deadline and victim.poll() is None, victim.stderr.read()
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert ".hashsync/lease.json" in remote_keys(s3_server, bucket)

    # Without a build function there is nothing to wait for once the lease is stale.
    with pytest.raises(NotFound, match="stopped refreshing its lease"):
        make_cache(tmp_path / "reader", remote, lease_ttl=2.0, poll_interval=0.2).ensure()
    build = Builder()
    started = time.monotonic()
    make_cache(tmp_path / "heir", remote, lease_ttl=2.0, poll_interval=0.2).ensure(build)
    waited = time.monotonic() - started
    assert build.calls == 1
    assert waited >= 2.0  # the lease had to go stale first
    stored = remote_keys(s3_server, bucket)
    assert set(stored) == set(BASE) | {".hashsync/manifest.json"}  # lease released
    # A third machine downloads the heir's build.
    later = Builder()
    make_cache(tmp_path / "third", remote).ensure(later)
    assert later.calls == 0
    assert (tmp_path / "third" / "meta/info.json").read_bytes() == BASE["meta/info.json"]


def test_a_waiter_without_build_times_out_while_the_builder_is_alive(tmp_path, remote):
    builder = start_builder(tmp_path, tmp_path / "builder", remote, ttl=30.0, pause=600)
    try:
        deadline = time.monotonic() + 60
        while not builds(tmp_path):
            assert time.monotonic() < deadline and builder.poll() is None
            time.sleep(0.05)
        with pytest.raises(WaitTimeout, match="waited 1 s"):
            make_cache(tmp_path / "waiter", remote, wait_timeout=1, poll_interval=0.2).ensure()
        assert not (tmp_path / "waiter").exists()
    finally:
        builder.kill()
        builder.wait()


def test_neither_copy_and_no_build_is_a_clear_error(tmp_path, remote):
    with pytest.raises(NotFound, match="pass build="):
        make_cache(tmp_path / "cache", remote).ensure()
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_endpoint_is_a_warning_and_local_work_goes_on(tmp_path, s3_env):
    from hub_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    local = tmp_path / "cache"
    build = Builder()
    options = {"storage_options": {"max_attempts": 1, "connect_timeout": 1}}
    with pytest.warns(HashsyncWarning, match="remote cache unavailable, building locally"):
        assert make_cache(local, "s3://b/caches", endpoint_url=dead, **options).ensure(build)
    assert build.calls == 1
    assert (local / "data/shard-000.bin").read_bytes() == BASE["data/shard-000.bin"]
    # The next call uses the local copy, still with a warning, and builds nothing.
    with pytest.warns(HashsyncWarning, match="using the local copy"):
        make_cache(local, "s3://b/caches", endpoint_url=dead, **options).ensure(build)
    assert build.calls == 1
    with pytest.warns(HashsyncWarning, match="nothing synced"):
        assert make_cache(local, "s3://b/caches", endpoint_url=dead, **options).sync() == (0, 0)
    status = make_cache(local, "s3://b/caches", endpoint_url=dead, **options).status()
    assert (status.local, status.remote) == ("complete", "unreachable")
    # Without a local copy or a build there is nothing to work with: a clear error.
    with pytest.raises(NotFound, match="remote cache is unavailable"):
        make_cache(tmp_path / "other", "s3://b/caches", endpoint_url=dead, **options).ensure()


def test_a_missing_bucket_and_bad_credentials_are_warnings(tmp_path, s3_env, monkeypatch):
    build = Builder()
    with pytest.warns(HashsyncWarning, match="does not exist"):
        make_cache(tmp_path / "a", "s3://no-such-bucket-here/c").ensure(build)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.warns(HashsyncWarning, match="remote cache unavailable"):
        make_cache(tmp_path / "b", "s3://no-such-bucket-here/c").ensure(build)
    assert build.calls == 2


def test_a_remote_copy_without_its_manifest_is_repaired(tmp_path, remote, s3_server, bucket):
    store = s3(s3_server, bucket, "caches/slipcache-k1")
    # A builder that died mid-upload: the files it announced, some uploaded, one torn, no
    # manifest; and a derived file another machine had synced into the copy.
    dead_build = [*BASE, "only-in-the-dead-build.bin"]
    store.write_bytes(".hashsync/pending.json", json.dumps({"files": dead_build}).encode())
    store.write_bytes("data/shard-000.bin", b"torn")
    store.write_bytes("only-in-the-dead-build.bin", b"junk")
    store.write_bytes("label_index.npy", b"someone's index")
    assert make_cache(tmp_path / "x", remote).status().remote == "incomplete"
    build = Builder()
    make_cache(tmp_path / "cache", remote).ensure(build)
    assert build.calls == 1
    assert set(remote_keys(s3_server, bucket)) == set(BASE) | {
        ".hashsync/manifest.json",
        "label_index.npy",  # derived files are never deleted
    }
    assert (tmp_path / "cache" / "label_index.npy").read_bytes() == b"someone's index"
    fresh = Builder()
    make_cache(tmp_path / "reader", remote).ensure(fresh)
    assert fresh.calls == 0
    assert (tmp_path / "reader/data/shard-000.bin").read_bytes() == BASE["data/shard-000.bin"]


def test_a_manifest_naming_missing_or_changed_objects_is_not_served(
    tmp_path, remote, s3_server, bucket
):
    make_cache(tmp_path / "cache", remote).ensure(Builder())
    store = s3(s3_server, bucket, "caches/slipcache-k1")
    store.delete("meta/info.json")  # Bazel #12423: the entry is there, a blob is gone
    status = make_cache(tmp_path / "reader", remote).status()
    assert status.remote == "incomplete" and "meta/info.json" in status.remote_error
    with pytest.raises(NotFound):
        make_cache(tmp_path / "reader", remote).ensure()
    assert not (tmp_path / "reader" / "data").exists()
    build = Builder()
    make_cache(tmp_path / "repairer", remote).ensure(build)
    assert build.calls == 1
    assert make_cache(tmp_path / "reader", remote).status().remote == "complete"
    store.write_bytes("meta/info.json", b'{"samples": 3}')  # same key, other content
    assert make_cache(tmp_path / "reader", remote).status().remote == "incomplete"


def test_hostile_remote_manifests_are_treated_as_missing(tmp_path, remote, s3_server, bucket):
    store = s3(s3_server, bucket, "caches/slipcache-k1")
    evil = {
        "format": "hashsync-treecache/1",
        "name": "slipcache",
        "key": "k1",
        "part_size": 8388608,
        "tree_hash": "0" * 64,
        "files": {"../../escape.txt": {"size": 1, "etag": "0" * 32, "sha256": "0" * 64}},
    }
    store.write_bytes(".hashsync/manifest.json", json.dumps(evil).encode())
    status = make_cache(tmp_path / "x", remote).status()
    assert status.remote == "incomplete" and "invalid path" in status.remote_error
    for garbage in (b"not json", b"[]", json.dumps({**evil, "key": "k2"}).encode()):
        store.write_bytes(".hashsync/manifest.json", garbage)
        assert make_cache(tmp_path / "x", remote).status().remote == "incomplete"
    assert not (tmp_path / "escape.txt").exists()
    make_cache(tmp_path / "cache", remote).ensure(Builder())  # repaired over it
    assert make_cache(tmp_path / "y", remote).status().remote == "complete"


@pytest.mark.parametrize(
    "kw",
    [
        {"name": "../../etc"},
        {"name": "a/b"},
        {"key": ""},
        {"key": "k 1"},
        {"key": ".."},
        {"remote": "s3://"},  # an empty bucket variable: not a folder named "s3:"
        {"remote": "s3:///"},
        {"remote": ""},
        {"remote": 3},
    ],
)
def test_bad_names_keys_and_remotes_are_refused(tmp_path, kw):
    args = {"name": "slipcache", "key": "k1", "remote": "s3://b/p", **kw}
    with pytest.raises(InvalidArgument):
        TreeCache(tmp_path / "c", **args)


def test_a_local_directory_holding_another_key_is_refused(tmp_path, remote):
    make_cache(tmp_path / "cache", remote).ensure(Builder())
    with pytest.raises(InvalidArgument, match="holds slipcache-k1"):
        make_cache(tmp_path / "cache", remote, key="k2").ensure(Builder())


def test_for_source_keys_by_tree_hash(tmp_path, remote):
    write_tree(tmp_path / "src", {"a.txt": b"a", "b/c.txt": b"c"})
    cache = TreeCache.for_source(tmp_path / "src", tmp_path / "out", remote, name="prep")
    assert cache.key == hashsync.tree_hash(tmp_path / "src")
    assert cache.remote_url == f"{remote}/prep-{cache.key}"
    with pytest.raises(NotFound):
        TreeCache.for_source(tmp_path / "nope", tmp_path / "out", remote, name="prep")


def _two_machines(tmp_path, remote):
    a, b = tmp_path / "a", tmp_path / "b"
    make_cache(a, remote).ensure(Builder())
    make_cache(b, remote).ensure(Builder())
    return a, b


def _set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def test_edits_on_one_side_flow_to_the_other_without_conflicts(tmp_path, remote):
    a, b = _two_machines(tmp_path, remote)
    (a / "stats.json").write_text("v1")
    assert make_cache(a, remote).sync() == (0, 1)
    assert make_cache(b, remote).sync() == (1, 0)
    (b / "stats.json").write_text("v2, longer")
    assert make_cache(b, remote).sync() == (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conflict warning
        assert make_cache(a, remote).sync() == (1, 0)
    assert (a / "stats.json").read_text() == "v2, longer"
    # Same size, same mtime as before: still caught, by content.
    before = (a / "stats.json").stat().st_mtime
    (a / "stats.json").write_text("v3, longer")
    _set_mtime(a / "stats.json", before)
    assert make_cache(a, remote).sync() == (0, 1)
    assert make_cache(b, remote).sync() == (1, 0)
    assert (b / "stats.json").read_text() == "v3, longer"


@pytest.mark.parametrize("newer", ["local", "remote"])
def test_conflicting_edits_keep_the_newer_and_a_conflict_copy(tmp_path, remote, newer):
    a, b = _two_machines(tmp_path, remote)
    (a / "stats.json").write_text("base")
    make_cache(a, remote).sync()
    make_cache(b, remote).sync()
    (a / "stats.json").write_text("from a")
    make_cache(a, remote).sync()  # the remote now has "from a", written just now
    (b / "stats.json").write_text("from b")
    _set_mtime(b / "stats.json", time.time() + (3600 if newer == "local" else -3600))
    with pytest.warns(HashsyncWarning, match="changed both here and on"):
        make_cache(b, remote).sync()
    conflicts = sorted(p.name for p in b.glob("stats.json.conflict-*"))
    assert len(conflicts) == 1
    winner, loser = ("from b", "from a") if newer == "local" else ("from a", "from b")
    assert (b / "stats.json").read_text() == winner
    assert (b / conflicts[0]).read_text() == loser
    # Machine a ends with the same two files, without a conflict of its own.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_cache(a, remote).sync()
    assert (a / "stats.json").read_text() == winner
    assert (a / conflicts[0]).read_text() == loser
    assert make_cache(a, remote).sync() == (0, 0) == make_cache(b, remote).sync()


def test_pull_and_push_go_one_way_and_leave_conflicts(tmp_path, remote):
    a, b = _two_machines(tmp_path, remote)
    (a / "index.bin").write_bytes(b"idx")
    assert make_cache(a, remote).pull() == 0
    assert make_cache(a, remote).push() == 1
    assert make_cache(b, remote).push() == 0
    assert make_cache(b, remote).pull() == 1
    (a / "index.bin").write_bytes(b"idx a")
    (b / "index.bin").write_bytes(b"idx b")
    assert make_cache(a, remote).push() == 1
    with pytest.warns(HashsyncWarning, match="changed both"):
        assert make_cache(b, remote).pull() == 0
    assert (b / "index.bin").read_bytes() == b"idx b"


def test_symlinks_and_bookkeeping_are_not_uploaded(tmp_path, remote, s3_server, bucket):
    local = tmp_path / "cache"
    make_cache(local, remote).ensure(Builder())
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", local / "link.txt")
    os.symlink(tmp_path, local / "linkdir")
    (local / "real.txt").write_text("real")
    assert make_cache(local, remote).sync() == (0, 1)
    stored = remote_keys(s3_server, bucket)
    assert "real.txt" in stored
    assert not any("link" in k or "secret" in k for k in stored)
    assert not any(k.startswith(".hashsync/") and k != ".hashsync/manifest.json" for k in stored)


def test_a_remote_derived_file_is_not_written_through_a_local_symlinked_directory(
    tmp_path, remote, s3_server, bucket
):
    a, b = _two_machines(tmp_path, remote)
    (a / "idx").mkdir()
    (a / "idx" / "labels.bin").write_bytes(b"labels")
    make_cache(a, remote).sync()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, b / "idx")
    with pytest.warns(HashsyncWarning, match="idx/labels.bin not synced"):
        make_cache(b, remote).sync()
    assert not (outside / "labels.bin").exists()


def sync_without_read_override(
    local: Path, remote: str, state: Path
) -> subprocess.CompletedProcess:
    """``TreeCache(local, remote).sync()`` as root without CAP_DAC_OVERRIDE (modes apply)."""
    code = (
        "import sys, hashsync; c = hashsync.TreeCache(sys.argv[1], sys.argv[2], "
        "name='slipcache', key='k1', verbose=False); print(c.sync())"
    )
    return subprocess.run(
        ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
         "--bounding-set=-dac_override,-dac_read_search", "--",
         sys.executable, "-c", code, str(local), remote],
        capture_output=True, text=True,
        env={**os.environ, "HASHSYNC_CACHE_DIR": str(state)},
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_an_unreadable_derived_file_is_skipped_and_the_rest_synced(
    tmp_path, remote, s3_server, bucket, s3_env
):
    local = tmp_path / "cache"
    make_cache(local, remote).ensure(Builder())
    (local / "locked.bin").write_bytes(b"locked")
    (local / "locked.bin").chmod(0o000)
    (local / "open.bin").write_bytes(b"open")
    os.chmod(tmp_path, 0o777)
    r = sync_without_read_override(local, remote, tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(0, 1)"
    assert "locked.bin could not be read" in r.stderr
    stored = remote_keys(s3_server, bucket)
    assert "open.bin" in stored and "locked.bin" not in stored
    assert (local / "locked.bin").exists()


def test_a_failing_build_leaves_nothing_and_frees_the_lease(tmp_path, remote, s3_server, bucket):
    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"half")
        raise RuntimeError("preprocessing failed")

    with pytest.raises(RuntimeError, match="preprocessing failed"):
        make_cache(tmp_path / "cache", remote).ensure(broken)
    assert not (tmp_path / "cache").exists()
    assert not list(tmp_path.glob(".cache.hashsync-build-*"))
    assert remote_keys(s3_server, bucket) == {}
    build = Builder()
    make_cache(tmp_path / "cache", remote).ensure(build)  # no stale lease in the way
    assert build.calls == 1


def test_a_builder_killed_locally_leaves_a_staging_dir_the_next_build_removes(tmp_path, remote):
    victim = start_builder(tmp_path, tmp_path / "cache", remote, ttl=1.0, pause=600)
    deadline = time.monotonic() + 60
    while not builds(tmp_path):
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert list(tmp_path.glob(".cache.hashsync-build-*"))
    assert not (tmp_path / "cache").exists()  # nothing half-built under the final name
    make_cache(tmp_path / "cache", remote, lease_ttl=1.0, poll_interval=0.1).ensure(Builder())
    assert not list(tmp_path.glob(".cache.hashsync-build-*"))
    assert (tmp_path / "cache" / "meta/info.json").exists()


def test_seaweedfs_honours_conditional_writes(s3_server, bucket):
    from hashsync.treecache._lease import conditional_writes_honoured

    assert conditional_writes_honoured(s3(s3_server, bucket, "p")) is True


def test_a_store_ignoring_conditional_writes_is_found_out_and_leases_fall_back(
    tmp_path, s3_server, bucket, s3_env
):
    from hashsync.storage import conditions
    from proxy_helpers import ignoring_conditions, rewriting_proxy

    rewrite = ignoring_conditions(s3_server.access_key, s3_server.secret_key)
    log: list[tuple[str, str]] = []
    with rewriting_proxy(s3_server.endpoint_url, rewrite_request=rewrite, log=log) as proxy:
        # The proxy really does make conditions void: a second create-only write succeeds...
        plain = s3(s3_server, bucket, "plain")
        raw = s3_server.client(endpoint_url=proxy)
        raw.put_object(Bucket=bucket, Key="plain/x", Body=b"1", IfNoneMatch="*")
        raw.put_object(Bucket=bucket, Key="plain/x", Body=b"2", IfNoneMatch="*")
        assert plain.read_bytes("x") == b"2"
        # ... and the storage refuses it, naming the store's limitation (issue 26).
        checked = type(plain)(bucket, "plain", endpoint_url=proxy, max_attempts=1)
        with pytest.raises(ConditionsNotEnforced, match="ignores If-None-Match"):
            checked.write_bytes("x", b"3", create_only=True)
        assert plain.read_bytes("x") == b"2"

        build = Builder()
        remote = f"s3://{bucket}/caches"
        with pytest.warns(HashsyncWarning, match="ignores conditional writes"):
            make_cache(tmp_path / "a", remote, endpoint_url=proxy).ensure(build)
        assert build.calls == 1
        assert set(remote_keys(s3_server, bucket)) == set(BASE) | {".hashsync/manifest.json"}
        assert any("probe-" in path for method, path in log if method == "PUT")
        remembered = json.loads(conditions.memory_file().read_text())
        assert [v["honoured"] for k, v in remembered.items() if k.startswith(proxy)] == [False]

        # Remembered on disk: a new process (here: a cleared memory) does not probe again.
        conditions.forget()
        log.clear()
        (tmp_path / "a" / "index.bin").write_bytes(b"index")
        with pytest.warns(HashsyncWarning, match="ignores conditional writes"):
            assert make_cache(tmp_path / "a", remote, endpoint_url=proxy).sync() == (0, 1)
        assert not any("probe-" in path for _, path in log)
        # Readers need no probe at all, and get the copy.
        make_cache(tmp_path / "c", remote, endpoint_url=proxy).ensure(Builder())
        assert (tmp_path / "c" / "index.bin").read_bytes() == b"index"


def test_two_builders_on_a_store_ignoring_conditions_still_build_once(
    tmp_path, s3_server, bucket, s3_env
):
    from proxy_helpers import ignoring_conditions, rewriting_proxy

    rewrite = ignoring_conditions(s3_server.access_key, s3_server.secret_key)
    with rewriting_proxy(s3_server.endpoint_url, rewrite_request=rewrite) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy, "AWS_ENDPOINT_URL_S3": proxy}
        remote = f"s3://{bucket}/caches"
        procs = [start_builder(tmp_path, tmp_path / f"m{i}", remote, env=env) for i in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, errtext) in zip(procs, outs, strict=True):
        assert p.returncode == 0, errtext
        assert out.strip() == "ok built"
        assert "ignores conditional writes" in errtext
    assert len(builds(tmp_path)) == 1


def test_cli_status_pull_push_sync(tmp_path, remote, s3_server, bucket):
    from sync_helpers import cli

    write_tree(tmp_path / "src", {"raw.txt": b"raw input"})
    key = hashsync.tree_hash(tmp_path / "src")
    env = {**os.environ}
    built = tmp_path / "built"
    TreeCache.for_source(tmp_path / "src", built, remote, name="prep", verbose=False).ensure(
        Builder()
    )
    common = ["--remote", remote, "--name", "prep"]

    r = cli("treecache", "status", tmp_path / "fresh", *common, "--source", tmp_path / "src",
            "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert (status["local"], status["remote"], status["files"]) == ("missing", "complete", 4)
    assert status["remote_url"] == f"{remote}/prep-{key}"

    r = cli("treecache", "pull", tmp_path / "fresh", *common, "--key", key, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["downloaded"] == 4
    assert (tmp_path / "fresh/data/shard-001.bin").read_bytes() == BASE["data/shard-001.bin"]

    (tmp_path / "fresh" / "index.bin").write_bytes(b"index")
    r = cli("treecache", "status", tmp_path / "fresh", *common, "--key", key, env=env)
    assert "derived only here: index.bin" in r.stdout
    r = cli("treecache", "push", tmp_path / "fresh", *common, "--key", key, env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "0 downloaded, 1 uploaded"), r.stderr
    r = cli("treecache", "sync", built, *common, "--key", key, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["downloaded"] == 1
    assert (built / "index.bin").read_bytes() == b"index"


def test_cli_errors_are_one_line_and_exit_1(tmp_path, remote, s3_env):
    from hub_helpers import free_port
    from sync_helpers import cli

    common = ["--remote", remote, "--name", "prep", "--key", "k1"]
    r = cli("treecache", "pull", tmp_path / "x", *common)
    assert r.returncode == 1 and "no complete copy" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("treecache", "sync", tmp_path / "x", *common, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["type"] == "NotFound"
    r = cli("treecache", "status", tmp_path / "x", "--remote", remote, "--name", "../x",
            "--key", "k")  # fmt: skip
    assert r.returncode == 1 and "name must be" in r.stderr
    r = cli("treecache", "pull", tmp_path / "x", *common, "--source", tmp_path)
    assert r.returncode == 1 and "not allowed with" in r.stderr
    make_cache(tmp_path / "x", remote, key="k1").ensure(Builder())
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1"}
    r = cli("treecache", "sync", tmp_path / "x", "--remote", "s3://b/c", "--name", "slipcache",
            "--key", "k1", "--endpoint-url", dead, env=env)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = cli("treecache", "status", tmp_path / "x", "--remote", "s3://b/c", "--name",
            "slipcache", "--key", "k1", "--endpoint-url", dead, "--json", env=env)  # fmt: skip
    assert r.returncode == 0
    assert json.loads(r.stdout)["remote"] == "unreachable"


def test_a_base_file_edited_locally_is_noticed_and_restored(tmp_path, remote):
    local = tmp_path / "cache"
    make_cache(local, remote).ensure(Builder())
    path = local / "meta/info.json"
    edited = BASE["meta/info.json"].replace(b"2", b"9")  # same size
    path.write_bytes(edited)
    with pytest.warns(HashsyncWarning, match="changed after it was made"):
        make_cache(local, remote).ensure()
    assert path.read_bytes() == BASE["meta/info.json"]
    # Unchanged files are not re-read: a second ensure hashes nothing and warns nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_cache(local, remote).ensure()


def test_hostile_remote_keys_skip_that_file_only(tmp_path, remote, s3_server, bucket):
    # SeaweedFS refuses dot segments itself; what it accepts: names that clash with each other
    # locally, bookkeeping names, control characters.
    a, b = _two_machines(tmp_path, remote)
    raw = s3(s3_server, bucket).client
    evil = {
        "clash": b"a file",
        "clash/inner.txt": b"a file under a file",
        ".hashsync/synced.json": b'{"stats.json": "0"}',
        ".hashsync/stats.json": b"{}",
        "esc\x1b]0;title\x07.txt": b"escape sequence in a name",
    }
    for key, body in evil.items():
        raw.put_object(Bucket=bucket, Key=f"caches/slipcache-k1/{key}", Body=body)
    (a / "fine.txt").write_text("fine")
    with pytest.warns(HashsyncWarning, match="clash/inner.txt not synced"):
        make_cache(a, remote).sync()
    synced_before = recorded_state(b)["synced"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_cache(b, remote).sync()
    messages = [str(w.message) for w in caught]
    assert (b / "fine.txt").read_text() == "fine"
    assert not any("remote cache unavailable" in m for m in messages)
    assert any("clash/inner.txt not synced" in m for m in messages)
    assert (b / "clash").read_bytes() == b"a file"
    # Bookkeeping is never taken from the remote.
    assert "0" not in recorded_state(b)["synced"].values()
    assert synced_before != {"stats.json": "0"}
    assert not (b / ".hashsync/synced.json").exists()
    assert not (b / ".hashsync/stats.json").exists()
    assert (b / "esc\x1b]0;title\x07.txt").exists()


def test_progress_is_drawn_on_a_terminal_only(tmp_path, remote):
    from sync_helpers import cli, stderr_on_a_terminal

    make_cache(tmp_path / "built", remote).ensure(Builder())
    common = ["--remote", remote, "--name", "slipcache", "--key", "k1"]
    drawn, _ = stderr_on_a_terminal(["treecache", "pull", str(tmp_path / "a"), *common])
    assert "download" in drawn and "\x1b[" in drawn  # rich's bar, with bytes
    assert "MiB" in drawn or "KiB" in drawn
    quiet, _ = stderr_on_a_terminal(
        ["treecache", "pull", str(tmp_path / "b"), *common, "--no-progress"]
    )
    assert "download" not in quiet
    piped = cli("treecache", "pull", tmp_path / "c", *common)
    assert piped.returncode == 0 and "\x1b[" not in piped.stderr
    assert (tmp_path / "b/meta/info.json").exists() and (tmp_path / "c/meta/info.json").exists()


def test_a_shared_directory_works_as_the_remote(tmp_path):
    share = tmp_path / "share"
    build = Builder()
    make_cache(tmp_path / "a", share, storage_options={}).ensure(build)
    assert (share / "slipcache-k1" / ".hashsync" / "manifest.json").exists()
    make_cache(tmp_path / "b", share, storage_options={}).ensure(build)
    assert build.calls == 1
    (tmp_path / "b" / "index.bin").write_bytes(b"i")
    assert make_cache(tmp_path / "b", share, storage_options={}).sync() == (0, 1)
    assert make_cache(tmp_path / "a", f"file://{share}", storage_options={}).sync() == (1, 0)
    procs = [
        start_builder(tmp_path, tmp_path / f"m{i}", str(tmp_path / "share2")) for i in range(2)
    ]
    errtexts = []
    for p in procs:
        out, errtext = p.communicate(timeout=120)
        assert p.returncode == 0, errtext
        errtexts.append(errtext)
    assert len(builds(tmp_path)) == 1, errtexts  # their warnings say why a second one built


def test_a_build_whose_output_is_still_being_written_is_refused(
    tmp_path, remote, s3_server, bucket
):
    import threading

    from hashsync.errors import IntegrityError

    stop = threading.Event()

    def sloppy(out: Path) -> None:
        # Returns while a background writer still appends to one of its files.
        (out / "log.txt").write_bytes(b"")

        def keep_writing() -> None:
            try:
                with open(out / "log.txt", "ab") as f:
                    while not stop.is_set():
                        f.write(os.urandom(4096))
                        f.flush()
                        time.sleep(0.0005)
            except OSError:
                pass

        threading.Thread(target=keep_writing, daemon=True).start()
        time.sleep(0.05)

    try:
        with pytest.raises(IntegrityError, match="changed|appeared or vanished"):
            make_cache(tmp_path / "cache", remote).ensure(sloppy)
    finally:
        stop.set()
    assert not (tmp_path / "cache" / ".hashsync").exists()
    assert remote_keys(s3_server, bucket) == {}  # nothing uploaded, the lease released


def test_a_download_killed_midway_is_completed_by_the_next_ensure(
    tmp_path, remote, s3_server, bucket
):
    from proxy_helpers import rewriting_proxy

    many = {f"part/{i:03d}.bin": os.urandom(2000 + i) for i in range(120)}
    make_cache(tmp_path / "built", remote).ensure(Builder(many))
    local = tmp_path / "victim"
    code = (
        "import sys, hashsync; hashsync.TreeCache(sys.argv[1], sys.argv[2], name='slipcache', "
        "key='k1', verbose=False, endpoint_url=sys.argv[3]).ensure()"
    )
    with rewriting_proxy(s3_server.endpoint_url, delay=0.1) as slow:
        victim = subprocess.Popen([sys.executable, "-c", code, str(local), remote, slow])
        deadline = time.monotonic() + 60
        while not (local / "part").exists() or len(list((local / "part").iterdir())) < 10:
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    assert not (local / ".hashsync" / "manifest.json").exists()  # not complete, not claimed
    status = make_cache(local, remote).status()
    assert status.local == "incomplete"
    make_cache(local, remote).ensure()
    for rel, data in many.items():
        assert (local / rel).read_bytes() == data
    assert not [p for p in local.rglob("*") if ".hashsync-tmp" in p.name]


# -- found by an adversarial review --------------------------------------------------------


def test_conflicts_in_the_same_second_on_two_machines_lose_no_edit(tmp_path, remote):
    a, b = _two_machines(tmp_path, remote)
    c = tmp_path / "c"
    make_cache(c, remote).ensure(Builder())
    (a / "f.txt").write_text("V0")
    make_cache(a, remote).sync()
    make_cache(b, remote).sync()
    make_cache(c, remote).sync()
    second = int(time.time()) - 60
    (a / "f.txt").write_text("edit by a")
    _set_mtime(a / "f.txt", second + 0.2)
    (b / "f.txt").write_text("edit by b")
    _set_mtime(b / "f.txt", second + 0.6)
    (c / "f.txt").write_text("edit by c, the newest")
    make_cache(c, remote).sync()
    with pytest.warns(HashsyncWarning, match="changed both"):
        make_cache(b, remote).sync()
    with pytest.warns(HashsyncWarning, match="changed both"):
        make_cache(a, remote).sync()
    for machine in (a, b, c, a, b, c):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_cache(machine, remote).sync()
    for machine in (a, b, c):
        contents = {p.read_text() for p in machine.glob("f.txt*")}
        assert contents == {"edit by a", "edit by b", "edit by c, the newest"}, machine
        assert (machine / "f.txt").read_text() == "edit by c, the newest"


def test_a_builder_paused_past_its_lease_uploads_nothing(tmp_path, remote, s3_server, bucket):
    victim = start_builder(tmp_path, tmp_path / "victim", remote, ttl=1.0, pause=3.0)
    deadline = time.monotonic() + 60
    while not builds(tmp_path):
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        build = Builder()
        make_cache(tmp_path / "heir", remote, lease_ttl=1.0, poll_interval=0.1).ensure(build)
        assert build.calls == 1
        heirs = remote_keys(s3_server, bucket)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    out, errtext = victim.communicate(timeout=60)
    assert victim.returncode == 0, errtext
    assert "could not upload" in errtext or "took over" in errtext
    assert remote_keys(s3_server, bucket) == heirs  # the heir's copy is untouched
    assert make_cache(tmp_path / "reader", remote).status().remote == "complete"


def test_restoring_base_files_keeps_local_derived_edits(tmp_path, remote):
    a, b = _two_machines(tmp_path, remote)
    (a / "idx.txt").write_text("v1")
    make_cache(a, remote).sync()
    make_cache(b, remote).sync()
    (b / "idx.txt").write_text("b's precious edit")
    (b / "meta/info.json").write_bytes(BASE["meta/info.json"].replace(b"2", b"7"))
    with pytest.warns(HashsyncWarning, match="will be restored"):
        make_cache(b, remote).ensure()
    assert (b / "meta/info.json").read_bytes() == BASE["meta/info.json"]
    assert (b / "idx.txt").read_text() == "b's precious edit"
    make_cache(a, remote).sync()
    assert (a / "idx.txt").read_text() == "b's precious edit"
    # pull only downloads: a local edit stays local.
    (b / "idx.txt").write_text("edit 2")
    (b / "meta/info.json").unlink()
    assert make_cache(b, remote).pull() == 1
    assert (b / "idx.txt").read_text() == "edit 2"


def test_repairing_a_damaged_remote_keeps_other_machines_derived_files(
    tmp_path, remote, s3_server, bucket
):
    a, b = _two_machines(tmp_path, remote)
    (b / "b_index.txt").write_text("b's index")
    make_cache(b, remote).sync()
    s3(s3_server, bucket, "caches/slipcache-k1").delete("meta/info.json")
    make_cache(a, remote).sync()  # republishes the base from a
    assert make_cache(tmp_path / "r", remote).status().remote == "complete"
    assert "b_index.txt" in remote_keys(s3_server, bucket)
    assert (a / "b_index.txt").read_text() == "b's index"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_a_remote_that_refuses_writes_still_gives_downloads(tmp_path):
    share = tmp_path / "share"
    a, b = tmp_path / "a", tmp_path / "b"
    make_cache(a, share, storage_options={}).ensure(Builder())
    make_cache(b, share, storage_options={}).ensure(Builder())
    (a / "new.idx").write_text("from a")
    make_cache(a, share, storage_options={}).sync()
    (b / "a_local.idx").write_text("only b")  # sorts first: its upload fails first
    subprocess.run(["chmod", "-R", "a-w", str(share)], check=True)
    r = sync_without_read_override(b, str(share), tmp_path / "state")
    subprocess.run(["chmod", "-R", "u+w", str(share)], check=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 0)", r.stderr
    assert "cannot be uploaded" in r.stderr
    assert (b / "new.idx").read_text() == "from a"


def test_a_remote_key_clashing_with_a_base_path_skips_only_that_key(
    tmp_path, remote, s3_server, bucket
):
    a = tmp_path / "a"
    make_cache(a, remote).ensure(Builder())
    raw = s3(s3_server, bucket).client
    raw.put_object(Bucket=bucket, Key="caches/slipcache-k1/meta/info.json/child", Body=b"x")
    raw.put_object(Bucket=bucket, Key="caches/slipcache-k1/ok.idx", Body=b"ok")
    with pytest.warns(HashsyncWarning, match="meta/info.json/child not synced"):
        assert make_cache(a, remote).sync() == (1, 0)
    with pytest.warns(HashsyncWarning, match="meta/info.json/child not synced"):
        make_cache(tmp_path / "new", remote).ensure()
    assert (tmp_path / "new/meta/info.json").read_bytes() == BASE["meta/info.json"]
    assert (tmp_path / "new/ok.idx").read_bytes() == b"ok"


def test_a_manifest_whose_sha256_lies_is_not_trusted(tmp_path, remote, s3_server, bucket):
    from hashsync.treecache._manifest import FileRecord, Manifest, tree_hash_of

    make_cache(tmp_path / "a", remote).ensure(Builder())
    store = s3(s3_server, bucket, "caches/slipcache-k1")
    good = Manifest.from_json(
        store.read_bytes(".hashsync/manifest.json"), name="slipcache", key="k1"
    )
    files = {p: FileRecord(r.size, r.etag, "0" * 64) for p, r in good.files.items()}
    lie = Manifest("slipcache", "k1", files, good.part_size, tree_hash_of(files))
    store.delete(".hashsync/manifest.json")
    store.write_bytes(".hashsync/manifest.json", lie.to_json())
    with pytest.raises(NotFound, match="SHA-256"):
        make_cache(tmp_path / "b", remote).ensure()
    assert not (tmp_path / "b" / ".hashsync" / "manifest.json").exists()


def test_two_processes_on_one_local_directory_take_turns(tmp_path, remote, s3_server, bucket):
    # A notebook and a job on one machine: the second waits for the first instead of building
    # or downloading into the same directory at the same time.
    local = tmp_path / "shared-local"
    procs = [start_builder(tmp_path, local, remote, pause=1.5) for _ in range(2)]
    for p in procs:
        out, errtext = p.communicate(timeout=120)
        assert p.returncode == 0, errtext
        assert out.strip() == "ok built"
    assert len(builds(tmp_path)) == 1
    assert not list(tmp_path.glob("*.hashsync-lock"))
    assert make_cache(local, remote).status().local == "complete"


# -- per-machine bookkeeping lives in $HASHSYNC_CACHE_DIR, not in the local copy (issue 23) --


def local_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def state_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "treecache" / "local").glob("*.json"))


def test_a_built_copy_and_its_download_are_the_same_tree(tmp_path, remote, monkeypatch):
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(machine_a))
    make_cache(a, remote).ensure(Builder())
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(machine_b))
    make_cache(b, remote).ensure()
    content = set(BASE) | {".hashsync/manifest.json"}
    assert local_files(a) == content == local_files(b)
    assert hashsync.tree_hash(a) == hashsync.tree_hash(b)
    # Syncing derived files records what each side last saw, on each machine, not in the copy.
    (b / "index.bin").write_bytes(b"index")
    assert make_cache(b, remote).sync() == (0, 1)
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(machine_a))
    assert make_cache(a, remote).sync() == (1, 0)
    assert local_files(a) == content | {"index.bin"} == local_files(b)
    assert hashsync.tree_hash(a) == hashsync.tree_hash(b)
    assert len(state_files(machine_a)) == 1 == len(state_files(machine_b))


class HashSpy:
    """Records the files hashsync.hash_files is asked to read."""

    def __init__(self, monkeypatch) -> None:
        self.paths: list[str] = []
        real = hashsync.hash_files

        def spy(paths, *args, **kw):
            paths = list(paths)
            self.paths += [Path(p).name for p in paths]
            return real(paths, *args, **kw)

        monkeypatch.setattr(hashsync, "hash_files", spy)


def test_bookkeeping_is_per_local_directory_and_spares_rehashing(tmp_path, remote, monkeypatch):
    a, b = _two_machines(tmp_path, remote)
    assert state_path(a) != state_path(b)
    assert recorded_state(a)["local_dir"] == os.path.realpath(a)
    assert set(recorded_state(a)["stats"]) == set(BASE)
    assert len(state_files(tmp_path / "hashsync-cache")) == 2
    # The key is the resolved path: another name for the same directory finds its state.
    (tmp_path / "alias").symlink_to(a)
    assert state_path(tmp_path / "alias") == state_path(a)
    spy = HashSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_cache(a, remote).ensure()
        assert spy.paths == []  # unchanged files are not read again
        os.utime(a / "meta/info.json")  # same content, new mtime: re-hashed once, then known
        make_cache(a, remote).ensure()
        assert spy.paths == ["info.json"]
        make_cache(a, remote).ensure()
        assert spy.paths == ["info.json"]
    assert local_files(a) == set(BASE) | {".hashsync/manifest.json"}


@pytest.mark.parametrize("damage", ["missing", "garbage", "another directory's"])
def test_a_missing_or_damaged_state_costs_only_speed(tmp_path, remote, damage):
    a, b = _two_machines(tmp_path, remote)
    (a / "index.bin").write_bytes(b"index v1")
    assert make_cache(a, remote).sync() == (0, 1)
    assert make_cache(b, remote).sync() == (1, 0)
    (b / "index.bin").write_bytes(b"index v2")
    _set_mtime(b / "index.bin", time.time() + 3600)
    edited = BASE["meta/info.json"].replace(b"2", b"9")  # same size
    (b / "meta/info.json").write_bytes(edited)
    _set_mtime(b / "meta/info.json", (a / "meta/info.json").stat().st_mtime)
    if damage == "missing":
        state_path(b).unlink()
    elif damage == "garbage":
        state_path(b).write_bytes(b"\0{not json")
    else:
        shutil.copyfile(state_path(a), state_path(b))
    # Without the stats every base file is hashed, so the edit is found and restored; without
    # the sync record the derived edit is a conflict: both versions are kept, none lost.
    with pytest.warns(HashsyncWarning) as caught:
        make_cache(b, remote).ensure()
    messages = " ".join(str(w.message) for w in caught)
    assert "changed after it was made" in messages and "changed both" in messages
    assert (b / "meta/info.json").read_bytes() == BASE["meta/info.json"]
    assert (b / "index.bin").read_bytes() == b"index v2"
    [conflict] = b.glob("index.bin.conflict-*")
    assert conflict.read_bytes() == b"index v1"
    assert recorded_state(b)["local_dir"] == os.path.realpath(b)  # written anew
    assert make_cache(b, remote).sync() == (0, 0)
    make_cache(a, remote).sync()
    assert hashsync.tree_hash(a) == hashsync.tree_hash(b)


@pytest.mark.parametrize("how", ["rebuilt", "copied in"])
def test_the_state_of_a_removed_copy_is_not_applied_to_a_new_one(tmp_path, remote, s3_env, how):
    from hub_helpers import free_port

    local = tmp_path / "cache"
    make_cache(local, remote).ensure(Builder())
    shutil.copytree(local, tmp_path / "aside")  # like `cp -a`: mtimes kept, manifest included
    (local / "index.bin").write_bytes(b"index v1")
    assert make_cache(local, remote).sync() == (0, 1)
    shutil.rmtree(local)
    # A new copy in the same place that never saw v1.
    if how == "rebuilt":  # while the remote is out of reach
        dead = f"http://127.0.0.1:{free_port()}"
        options = {"storage_options": {"max_attempts": 1, "connect_timeout": 1}}
        with pytest.warns(HashsyncWarning, match="building locally"):
            make_cache(local, "s3://b/caches", endpoint_url=dead, **options).ensure(Builder())
    else:
        shutil.copytree(tmp_path / "aside", local)
    (local / "index.bin").write_bytes(b"index v2")
    _set_mtime(local / "index.bin", time.time() - 3600)
    # Had the old record ("v1 is in sync") been trusted, v2 would silently replace v1.
    with pytest.warns(HashsyncWarning, match="changed both"):
        make_cache(local, remote).sync()
    assert (local / "index.bin").read_bytes() == b"index v1"
    [conflict] = local.glob("index.bin.conflict-*")
    assert conflict.read_bytes() == b"index v2"


def test_an_earlier_versions_bookkeeping_is_moved_out_of_the_copy(tmp_path, remote, monkeypatch):
    a, b = _two_machines(tmp_path, remote)
    (a / "index.bin").write_bytes(b"index v1")
    make_cache(a, remote).sync()
    make_cache(b, remote).sync()
    # What an earlier version left in b: its two maps inside the copy, no state outside.
    state = recorded_state(b)
    (b / ".hashsync/stats.json").write_text(json.dumps(state["stats"]))
    (b / ".hashsync/synced.json").write_text(json.dumps(state["synced"]))
    state_path(b).unlink()
    assert make_cache(b, remote).status().local == "complete"
    assert (b / ".hashsync/stats.json").exists()  # status changes nothing
    assert not state_path(b).exists()
    # Migrated: no base file re-hashed, and the edit flows without a conflict.
    (b / "index.bin").write_bytes(b"index v2")
    spy = HashSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_cache(b, remote).sync() == (0, 1)
        assert make_cache(a, remote).sync() == (1, 0)
    assert spy.paths == []
    assert local_files(b) == set(BASE) | {".hashsync/manifest.json", "index.bin"}
    assert set(recorded_state(b)["stats"]) == set(BASE)
    assert "index.bin" in recorded_state(b)["synced"]
    assert hashsync.tree_hash(a) == hashsync.tree_hash(b)


@pytest.mark.filterwarnings("ignore:the hash state cache:hashsync.errors.HashsyncWarning")
def test_an_unwritable_cache_dir_costs_speed_not_the_copy(tmp_path, remote, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(blocked))
    local = tmp_path / "cache"
    with pytest.warns(HashsyncWarning, match=r"cannot record .*HASHSYNC_CACHE_DIR"):
        make_cache(local, remote).ensure(Builder())
    assert local_files(local) == set(BASE) | {".hashsync/manifest.json"}
    (local / "index.bin").write_bytes(b"index")
    with pytest.warns(HashsyncWarning, match="cannot record"):
        assert make_cache(local, remote).sync() == (0, 1)
    assert local_files(local) == set(BASE) | {".hashsync/manifest.json", "index.bin"}
