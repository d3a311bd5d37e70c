"""Sharded sync and tree hashing on Dask: a real LocalCluster (2 worker processes, 1 thread
each) against the real SeaweedFS server.

The reference for every distributed result is the single-machine sync of the same trees.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hashsync
from hashsync import distributed
from hashsync.errors import InvalidArgument, MissingDependency
from hashsync.storage import S3Storage, SimpleLocalStorage
from hashsync.storage.base import Segment
from proxy_helpers import rewriting_proxy
from sync_helpers import cli, keys, s3, write_tree

dask = pytest.importorskip("dask")
dask_distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client(s3_server):
    """Two worker processes that find the S3 credentials in their own environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        with (
            # Dask's statistical profiler calls sys._current_frames() every 10 ms. On Python
            # 3.11 that can deadlock a worker (CPython gh-106883: a garbage collection inside
            # it runs Dask's gc callback, which lets go of the GIL while the runtime's thread
            # list is locked, and a thread being started then waits for that lock holding
            # the GIL). A sync starts many transfer threads, so it met that within minutes.
            dask.config.set({"distributed.worker.profile.enabled": False}),
            dask_distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            dask_distributed.Client(cluster) as c,
        ):
            yield c


def tree_files(n: int, seed: int = 7) -> dict[str, bytes]:
    """``n`` small files in nested directories, a few at the top level."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        depth = rng.choice([0, 1, 2, 2, 3])
        parts = [f"d{rng.randrange(12)}", f"e{rng.randrange(6)}", f"f{rng.randrange(3)}"][:depth]
        files["/".join([*parts, f"file{i}.bin"])] = rng.randbytes(rng.randint(0, 2048))
    return files


def local_result(r):
    return (sorted(r.transferred), sorted(r.deleted), r.skipped, r.bytes_transferred, r.ok)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "tree"
    write_tree(root, tree_files(5000))
    return root


def test_local_s3_local_and_s3_s3_equal_a_single_machine_sync(
    client, s3_server, bucket, big_tree, tmp_path
):
    # local -> S3
    one = hashsync.sync(big_tree, s3(s3_server, bucket, "single"))
    many = hashsync.sync(big_tree, s3(s3_server, bucket, "sharded"), scheduler=client)
    assert local_result(many) == local_result(one)
    assert len(many.transferred) == 5000
    assert keys(s3(s3_server, bucket, "sharded")) == keys(s3(s3_server, bucket, "single"))
    # S3 -> local
    one = hashsync.sync(s3(s3_server, bucket, "single"), tmp_path / "down1")
    many = hashsync.sync(s3(s3_server, bucket, "sharded"), tmp_path / "down2", scheduler=client)
    assert local_result(many) == local_result(one)
    assert hashsync.tree_hash(tmp_path / "down2") == hashsync.tree_hash(big_tree)
    # S3 -> S3 (server-side copies), then a no-op
    one = hashsync.sync(s3(s3_server, bucket, "single"), s3(s3_server, bucket, "copy1"))
    many = hashsync.sync(
        s3(s3_server, bucket, "sharded"), s3(s3_server, bucket, "copy2"), scheduler=client
    )
    assert local_result(many) == local_result(one)
    assert keys(s3(s3_server, bucket, "copy2")) == keys(s3(s3_server, bucket, "copy1"))
    again = hashsync.sync(big_tree, s3(s3_server, bucket, "sharded"), scheduler=client)
    assert again.transferred == [] and again.skipped == 5000 and again.ok


def test_sharded_sync_to_and_from_gcs(client, gcs_env, gcs_bucket, tmp_path):
    # The workers were started without STORAGE_EMULATOR_HOST: the pickled storage carries
    # its endpoint (and, since it had none, no credentials).
    from hashsync.storage.gcs import GCSStorage

    src = tmp_path / "src"
    write_tree(src, tree_files(300, seed=3))
    remote = GCSStorage(gcs_bucket, "sharded", conditional_writes="best-effort")
    up = hashsync.sync(src, remote, scheduler=client)
    assert len(up.transferred) == 300 and up.ok
    down = hashsync.sync(remote, tmp_path / "down", scheduler=client)
    assert len(down.transferred) == 300 and down.ok
    assert hashsync.tree_hash(tmp_path / "down") == hashsync.tree_hash(src)
    again = hashsync.sync(src, remote, scheduler=client)
    assert again.transferred == [] and again.skipped == 300


def test_tasks_run_on_both_workers(client, tmp_path, big_tree):
    with dask_distributed.get_task_stream(client) as stream:
        r = hashsync.sync(big_tree, tmp_path / "copy", scheduler=client)
    assert len(r.transferred) == 5000
    ran = [t for t in stream.data if t["key"].startswith("hashsync-segments-")]
    assert len({t["worker"] for t in ran}) == 2
    # Thousands of segments at most, never one task per file.
    assert 2 <= len(ran) <= 64


def test_a_stale_same_size_edit_is_caught(client, s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, tree_files(300, seed=3))
    dst = s3(s3_server, bucket, "edit")
    assert len(hashsync.sync(src, dst, scheduler=client).transferred) == 300
    victim = sorted(tree_files(300, seed=3))[150]
    path = src / victim
    old = path.stat()
    data = bytearray(path.read_bytes() or b"x")
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))
    r = hashsync.sync(src, dst, scheduler=client)
    assert r.transferred == [victim] and r.skipped == 299


def test_same_filters_dry_run_and_compare_modes_as_a_local_sync(client, tmp_path, big_tree):
    dst_one, dst_many = tmp_path / "one", tmp_path / "many"
    write_tree(dst_one, {"d1/extra.txt": b"x", "top-extra.txt": b"y"})
    write_tree(dst_many, {"d1/extra.txt": b"x", "top-extra.txt": b"y"})
    for options in (
        {"exclude": "d1/*", "dry_run": True, "delete": True},
        {"include": "*.bin", "exclude": "*", "compare": "size"},
        {"exclude": "d2/*", "delete": True, "compare": "size-mtime"},
    ):
        one = hashsync.sync(big_tree, dst_one, **options)
        many = hashsync.sync(big_tree, dst_many, scheduler=client, **options)
        assert local_result(many) == local_result(one), options
        assert many.dry_run == one.dry_run
    assert hashsync.tree_hash(dst_many) == hashsync.tree_hash(dst_one)


def test_a_scan_error_in_one_segment_suppresses_delete_everywhere(client, tmp_path, big_tree):
    src = tmp_path / "src"
    write_tree(src, {"a/1.txt": b"1", "b/2.txt": b"2", "c/3.txt": b"3", "top.txt": b"t"})
    # A name that is not UTF-8 cannot be a key: an error of the source listing, in segment b/.
    fd = os.open(os.fsencode(src / "b") + b"/\xff.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    dst = tmp_path / "dst"
    write_tree(dst, {"a/gone.txt": b"g", "c/gone.txt": b"g", "gone.txt": b"g"})
    r = hashsync.sync(src, dst, delete=True, scheduler=client)
    assert r.delete_suppressed and "could not be listed" in r.delete_suppressed_reason
    assert r.deleted == [] and not r.ok
    assert sorted(r.transferred) == ["a/1.txt", "b/2.txt", "c/3.txt", "top.txt"]
    for survivor in ("a/gone.txt", "c/gone.txt", "gone.txt"):
        assert (dst / survivor).exists()
    os.unlink(os.fsencode(src / "b") + b"/\xff.bin")
    r = hashsync.sync(src, dst, delete=True, scheduler=client)
    assert r.ok and r.deleted == ["a/gone.txt", "c/gone.txt", "gone.txt"]


def test_a_failed_transfer_suppresses_delete_everywhere(client, s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {f"d{i}/f.txt": b"new" * i for i in range(6)})
    seed = s3(s3_server, bucket, "fail")
    seed.write_bytes("old/stale.txt", b"stale")
    seed.write_bytes("d0/stale.txt", b"stale")

    def refuse(method, path, headers):
        return (403, b"<Error><Code>AccessDenied</Code></Error>") if "d3/f.txt" in path else None

    with rewriting_proxy(s3_server.endpoint_url, answer_instead=refuse) as url:
        r = hashsync.sync(
            src, s3(s3_server, bucket, "fail", endpoint_url=url), delete=True, scheduler=client
        )
    assert [k for k, _ in r.failed] == ["d3/f.txt"]
    assert r.delete_suppressed and r.deleted == []
    assert {"old/stale.txt", "d0/stale.txt"} <= set(keys(seed))


def test_a_worker_killed_mid_sync_is_survived(client, s3_server, bucket, tmp_path):
    src = tmp_path / "src"
    write_tree(src, tree_files(400, seed=11))
    hashsync.sync(src, s3(s3_server, bucket, "kill"))
    dst = tmp_path / "dst"
    outcome = {}
    with rewriting_proxy(s3_server.endpoint_url, delay=0.02) as url:

        def run():
            try:
                outcome["result"] = hashsync.sync(
                    s3(s3_server, bucket, "kill", endpoint_url=url),
                    dst,
                    scheduler=client,
                    workers=2,
                )
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for _ in dst.rglob("*.bin")) < 40:
            time.sleep(0.05)
        at_kill = sum(1 for _ in dst.rglob("*.bin"))
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        worker.join(180)
    assert "error" not in outcome, outcome.get("error")
    assert 40 <= at_kill < 400  # the worker died mid-sync
    r = outcome["result"]
    assert r.ok
    assert hashsync.tree_hash(dst) == hashsync.tree_hash(src)
    leftovers = [p for p in dst.rglob("*") if ".hashsync-tmp-" in p.name]
    assert leftovers == []
    client.wait_for_workers(2, timeout=60)


@pytest.mark.parametrize("algorithm", ["sha256", "etag", "xxh3"])
def test_distributed_tree_hash_equals_the_local_one(client, big_tree, tmp_path, algorithm):
    assert distributed.tree_hash(big_tree, algorithm, scheduler=client) == hashsync.tree_hash(
        big_tree, algorithm
    )
    odd = tmp_path / "odd"
    write_tree(odd, {"a.txt": b"a", "a/b.txt": b"b", "a b/c": b"c", "é/ü.txt": b"u", "z": b""})
    (odd / "empty" / "deeper").mkdir(parents=True)
    (odd / "a" / "empty").mkdir()
    assert distributed.tree_hash(odd, algorithm, scheduler=client) == hashsync.tree_hash(
        odd, algorithm
    )


def test_bad_schedulers_are_clear_errors(tmp_path):
    (tmp_path / "src").mkdir()
    for bad in ("local:0", "local:x", "", 42):
        with pytest.raises(InvalidArgument, match="scheduler|local:N"):
            hashsync.sync(tmp_path / "src", tmp_path / "dst", scheduler=bad)


def test_missing_dask_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "dask.distributed", None)
    (tmp_path / "src").mkdir()
    with pytest.raises(MissingDependency, match=r"hashsync\[dask\]"):
        hashsync.sync(tmp_path / "src", tmp_path / "dst", scheduler="local:1")


def test_cli_sharded_sync_json_and_exit_code(s3_server, bucket, tmp_path, s3_env):
    src = tmp_path / "src"
    write_tree(src, tree_files(50, seed=5))
    done = cli("sync", src, f"s3://{bucket}/cli", "--scheduler", "local:1", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["transferred"]) == 50
    (src / "d0" / "new.txt").parent.mkdir(exist_ok=True)
    (src / "d0" / "new.txt").write_bytes(b"new")
    done = cli("sync", src, f"s3://{bucket}/cli", "--scheduler", "local:1", "-v")
    assert done.returncode == 0 and done.stdout.splitlines() == ["upload: d0/new.txt"]
    done = cli("sync", src, f"s3://{bucket}/cli", "--scheduler", "local:zero")
    assert done.returncode == 1 and "local:N" in done.stderr and "Traceback" not in done.stderr


# -- planning ---------------------------------------------------------------------------------

paths = st.lists(
    st.lists(st.sampled_from(["a", "b", "c", "dd", "a.b", "é"]), min_size=1, max_size=4).map(
        lambda parts: "/".join(parts[:-1] + [parts[-1] + ".f"])
    ),
    max_size=40,
    unique=True,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    src_paths=paths,
    dst_paths=paths,
    probe=st.integers(1, 5),
    budget=st.integers(1, 12),
    target=st.one_of(st.none(), st.integers(1, 30)),
)
def test_segments_cover_every_key_exactly_once(
    tmp_path_factory, src_paths, dst_paths, probe, budget, target
):
    base = tmp_path_factory.mktemp("plan")
    write_tree(base / "s", {p: b"s" for p in src_paths})
    write_tree(base / "d", {p: b"d" for p in dst_paths})
    src, dst = SimpleLocalStorage(base / "s"), SimpleLocalStorage(base / "d")
    batches = distributed.plan_segments(
        src, dst, workers=2, probe_limit=probe, max_segments=budget, target_segments=target
    )
    segments = [seg for batch in batches for seg in batch]
    for key in set(src_paths) | set(dst_paths):
        assert sum(seg.contains(key) for seg in segments) == 1, (key, segments)
    # Listing segment by segment gives exactly the full listing.
    listed = sorted(e.path for seg in segments for e in src.list_for_sync([], segment=seg).entries)
    assert listed == sorted(src_paths)


def test_s3_segments_list_one_level(s3_server, bucket):
    store = s3(s3_server, bucket, "lvl")
    for k in ("top.txt", "a/1", "a/b/2", "c/3", "c/d/e/4", "a b/5", "p+q/6", "%41/7", "é/8"):
        store.write_bytes(k, b"x")
    # The lean request path, and botocore's (a storage built around a given client).
    lean, through_boto = store, S3Storage(bucket, "lvl", client=s3_server.client())
    for store in (lean, through_boto):
        assert store.list_level("") == (1, ["%41/", "a b/", "a/", "c/", "p+q/", "é/"])
        for odd in ("%41/", "a b/", "p+q/", "é/"):
            assert [o.key[len(odd) :] for o in store.list_segment(Segment(odd))] != []
            assert store.count_keys(odd, 10) == 1
        assert store.list_level("c/") == (1, ["c/d/"])
        assert [o.key for o in store.list_segment(Segment("", shallow=True))] == ["top.txt"]
        assert [o.key for o in store.list_segment(Segment("c/"))] == ["c/3", "c/d/e/4"]
        assert store.count_keys("", 3) == 3
    with pytest.raises(InvalidArgument):
        store.list_level("../")


def test_local_segment_scan_does_not_follow_links(tmp_path):
    write_tree(tmp_path / "t", {"real/a.txt": b"a"})
    (tmp_path / "t" / "link").symlink_to(tmp_path / "t" / "real")
    store = SimpleLocalStorage(tmp_path / "t")
    assert store.list_level("") == (0, ["real/"])
    assert list(store.list_for_sync([], segment=Segment("link/")).entries) == []
    with pytest.raises(InvalidArgument):
        store.list_for_sync([], segment=Segment("../"))
    assert Path(tmp_path / "t" / "real" / "a.txt").exists()


def test_distributed_tree_hash_follows_links_like_the_local_one(client, tmp_path):
    tree = tmp_path / "linked"
    write_tree(tree, {"top.txt": b"t", "real/a.txt": b"a", "real/deep/b.txt": b"b"})
    (tree / "link").symlink_to(tree / "real")
    (tree / "real" / "deep" / "c").mkdir()
    for follow in (False, True):
        assert distributed.tree_hash(
            tree, "sha256", scheduler=client, follow_symlinks=follow
        ) == hashsync.tree_hash(tree, "sha256", follow_symlinks=follow), follow


def test_dask_sync_follows_source_links_and_spares_skipped_ones(client, tmp_path):
    write_tree(tmp_path / "src", {f"ckpt-123/{i}.bin": b"w%d" % i for i in range(4)})
    (tmp_path / "src" / "latest").symlink_to("ckpt-123")
    (tmp_path / "src" / "top.bin").symlink_to(tmp_path / "src" / "ckpt-123" / "0.bin")
    result = hashsync.sync(tmp_path / "src", tmp_path / "dst", scheduler=client)
    assert result.ok and len(result.transferred) == 9, result
    assert (tmp_path / "dst" / "latest" / "2.bin").read_bytes() == b"w2"
    # Skipped links: reported from the workers, and what lies below them is not deleted
    # (latest/ is a segment of its own on the destination side).
    result = hashsync.sync(
        tmp_path / "src", tmp_path / "dst", scheduler=client, delete=True, follow_symlinks=False
    )
    assert result.ok and result.deleted == [] and result.skipped_links == ["latest", "top.bin"]
    assert (tmp_path / "dst" / "latest" / "2.bin").exists() and (
        tmp_path / "dst" / "top.bin"
    ).exists()
