"""What a Mac needs, run on Linux (issue 29): no Linux-only calls, full fsyncs, no clutter.

macOS has no ``os.copy_file_range`` and no ``/proc``: hashsync chooses by what ``os`` offers
and what the file system answers, so removing them here runs the code paths a Mac takes.
``F_FULLFSYNC`` is given to Linux to see that it is used; Finder's files are written here to
see that TreeCache leaves them out.
"""

from __future__ import annotations

import os

import pytest

import hashsync
from hashsync.cache import LocalCache
from hashsync.storage import SimpleLocalStorage


@pytest.fixture(autouse=True, params=["no-fd-paths", "dev-fd"])
def no_linux_calls(request, monkeypatch, tmp_path):
    # "dev-fd" is a Mac's shape: /dev/fd/N reaches a file descriptor, nothing resolves names
    # below a directory's; "no-fd-paths" has neither.
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    import hashsync._fdpath as fdpath

    monkeypatch.setattr(fdpath, "DIR_PREFIX", None)
    monkeypatch.setattr(fdpath, "FILE_PREFIX", "/dev/fd" if request.param == "dev-fd" else None)
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    assert not hasattr(os, "copy_file_range")


def _tree(root):
    for rel, size in (("a.txt", 10), ("d/b.bin", 3 * 1024**2), ("d/e/c", 0)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(size))
    return root


def test_local_sync(tmp_path):
    src = _tree(tmp_path / "src")
    result = hashsync.sync(src, tmp_path / "dst", progress=False)
    assert len(result.transferred) == 3 and result.ok
    assert hashsync.tree_hash(tmp_path / "dst") == hashsync.tree_hash(src)


def test_local_storage_writes(tmp_path):
    storage = SimpleLocalStorage(tmp_path / "store")
    storage.write_bytes("k/v.json", b"{}")
    assert storage.read_bytes("k/v.json") == b"{}"
    src = SimpleLocalStorage(_tree(tmp_path / "src"))
    storage.copy_from("d/b.bin", src)
    assert storage.path("d/b.bin").read_bytes() == src.path("d/b.bin").read_bytes()


def test_cache_put_and_get(tmp_path):
    cache = LocalCache(tmp_path / "cache")
    src = _tree(tmp_path / "src")
    path = cache.put("blob", src / "d" / "b.bin")
    assert path.read_bytes() == (src / "d" / "b.bin").read_bytes()
    assert cache.get("blob") == path


def test_treecache_with_a_directory_remote(tmp_path):
    from hashsync.treecache import TreeCache

    builds = []

    def build(out):
        builds.append(out)
        _tree(out)

    remote = tmp_path / "shared"
    remote.mkdir()
    TreeCache(tmp_path / "a", remote, name="t", key="k").ensure(build)
    TreeCache(tmp_path / "b", remote, name="t", key="k").ensure(build)
    assert len(builds) == 1
    assert (tmp_path / "b" / "d" / "b.bin").read_bytes() == (
        tmp_path / "a" / "d" / "b.bin"
    ).read_bytes()


@pytest.mark.s3
def test_s3_upload_without_proc(s3_server, s3_env, bucket, tmp_path):
    from sync_helpers import s3

    src = _tree(tmp_path / "src")
    remote = s3(s3_server, bucket, "np")
    assert len(hashsync.sync(src, remote, progress=False).transferred) == 3
    hashsync.sync(remote, tmp_path / "down", progress=False)
    assert hashsync.tree_hash(tmp_path / "down") == hashsync.tree_hash(src)


def test_writes_flush_the_drive_cache_where_the_os_can(tmp_path, monkeypatch):
    # macOS's fsync() leaves data in the drive's cache; F_FULLFSYNC flushes it. Here Linux
    # pretends to have it, and every durable write must use it.
    import fcntl

    from hashsync import atomic

    calls: list[int] = []
    monkeypatch.setattr(atomic, "_F_FULLFSYNC", 51)  # macOS's value of F_FULLFSYNC
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, *a: calls.append(cmd) or 0)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    src = _tree(tmp_path / "src")
    hashsync.sync(src, tmp_path / "dst", progress=False)
    LocalCache(tmp_path / "cache").put("k", src / "a.txt")
    assert calls and set(calls) == {51}
    assert fsyncs == []  # no plain fsync where the full one is offered


def test_treecache_leaves_macos_clutter_behind(tmp_path):
    # Finder's .DS_Store and AppleDouble ._ files are not part of a tree: a copy built on a Mac
    # must not carry them to every machine (nor count them in its manifest).
    import json

    from hashsync.treecache import TreeCache

    def build(out):
        (out / "sub").mkdir(parents=True)
        (out / "index.bin").write_bytes(b"index")
        (out / ".DS_Store").write_bytes(b"finder")
        (out / "sub" / ".DS_Store").write_bytes(b"finder")
        (out / "sub" / "._index.bin").write_bytes(b"appledouble")

    remote = tmp_path / "shared"
    remote.mkdir()
    TreeCache(tmp_path / "a", remote, name="t", key="k").ensure(build)
    copy = remote / "t-k"
    manifest = json.loads((copy / ".hashsync" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["index.bin"]
    assert not any(p.name in (".DS_Store", "._index.bin") for p in copy.rglob("*"))
    # A clutter file appearing in the local copy later is not uploaded as a derived file.
    (tmp_path / "a" / ".DS_Store").write_bytes(b"again")
    TreeCache(tmp_path / "a", remote, name="t", key="k").sync()
    assert not (copy / ".DS_Store").exists()
    TreeCache(tmp_path / "b", remote, name="t", key="k").ensure(build)
    assert sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file()) == [
        "index.bin",
        "manifest.json",
    ]


def test_config_lives_where_the_platform_keeps_settings(monkeypatch, tmp_path):
    import sys

    from hashsync.cache._config import config_path

    monkeypatch.delenv("HASHSYNC_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert config_path() == tmp_path / "Library/Application Support/hashsync/config.yaml"
    monkeypatch.setattr(sys, "platform", "linux")
    assert config_path() == tmp_path / ".config/hashsync/config.yaml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # the variables still win
    monkeypatch.setattr(sys, "platform", "darwin")
    assert config_path() == tmp_path / "xdg/hashsync/config.yaml"


def _unshare(*flags: str) -> list[str]:
    import shutil
    import subprocess

    tool = shutil.which("unshare")
    if tool is None or subprocess.run([tool, *flags, "true"], check=False).returncode:
        pytest.skip("unshare(1) cannot make namespaces here")
    return [tool, *flags]


def test_a_killed_runs_temporary_is_reclaimed_after_the_hostname_changed(tmp_path):
    # A laptop's hostname follows the network: the run killed at home is still this
    # machine's at the office, so its debris is reclaimed, not left as another host's.
    import subprocess
    import sys

    from hashsync.atomic import HOST, temporary_path

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    debris = temporary_path(tmp_path / "data.bin")
    debris = debris.with_name(debris.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    debris.write_bytes(b"half")
    code = (
        "import sys, hashsync.atomic as a; from pathlib import Path; "
        "print(a.HOST); print(len(a.cleanup_stale_temporaries(Path(sys.argv[1]))))"
    )
    out = subprocess.run(
        [*_unshare("--uts"), "sh", "-c", 'hostname "moved-$$" && exec "$0" "$@"', sys.executable,
         "-c", code, str(tmp_path)],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert out == [HOST, "1"] and not debris.exists()


def test_another_pid_namespace_is_another_host(tmp_path):
    import subprocess
    import sys

    from hashsync.atomic import HOST

    out = subprocess.run(
        [*_unshare("--pid", "--fork", "--mount-proc"), sys.executable, "-c",
         "import hashsync.atomic as a; print(a.HOST)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert len(out) == 8 and out != HOST


def test_without_a_machine_id_the_hostname_stands_in(monkeypatch):
    import socket

    import hashsync.atomic as atomic

    monkeypatch.setattr(atomic, "_machine_id", lambda: None)
    assert atomic.host_identity() == f"host:{socket.gethostname()}"


def test_hub_serves_ranges_without_proc(tmp_path):
    pytest.importorskip("fastapi")
    import urllib.request

    from hub_helpers import KEY, running_hub

    data = os.urandom(100_000)
    (tmp_path / "ds" / "set").mkdir(parents=True)
    (tmp_path / "ds" / "set" / "f.bin").write_bytes(data)
    with running_hub(tmp_path / "ds") as url:
        request = urllib.request.Request(
            f"{url}/file/set/f.bin",
            headers={"Authorization": f"Bearer {KEY}", "Range": "bytes=10-99"},
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 206 and response.read() == data[10:100]


def test_hash_of_an_open_file_leaves_its_offset_and_sees_changes(tmp_path):
    from hashsync._fdpath import hash_open_file

    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    with open(path, "rb") as fh:
        fh.seek(5)
        assert hash_open_file(fh.fileno(), "crc32c") == hashsync.hash_file(path, "crc32c")
        assert fh.tell() == 5
