"""Caches and other users (issue 24): a cache directory someone else can write to.

The attacker is another user, played with ``setpriv`` (uid 65534, "nobody"), as in
``test_cache_hostile.py``: it either pre-creates the cache directory (a "planted" cache, in a
world-writable directory like /tmp) or is a member of a shared cache's group (gid 0 here) and
writes what the group may write. Each attack once served, leaked or deleted data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

import hashsync
from hashsync import errors
from hashsync.atomic import TMP_MARK
from hashsync.cache import CopyToLocalCache, LocalCache, get_cache
from hashsync.storage import SimpleLocalStorage

SETPRIV = shutil.which("setpriv")
NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (another user)"
)

# The attacker's index edit: a row for KEY describing whatever file TARGET is (any file it
# can stat; its digest only if it can read it). It writes the index in place where it may
# (a shared cache's index is the group's), else edits a copy and renames it over.
REWRITE_ROW = r"""
import os, shutil, sqlite3, sys
import hashsync
def rewrite(db, key, target, *, linked=0, digest=None, version=None, source="put"):
    st = os.stat(target)
    if digest is None:
        digest = hashsync.hash_file(target, "blake3") if os.access(target, os.R_OK) else "0" * 64
    row = (key, st.st_size, st.st_ino, st.st_mtime_ns, digest, linked, version, source,
           st.st_mtime_ns, 0, 2**62)
    def edit(path):
        con = sqlite3.connect(path, isolation_level=None, timeout=30)
        con.execute("DELETE FROM entries WHERE key = ?", (key,))
        con.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        con.close()
    try:
        edit(db)
    except sqlite3.Error:
        copy = db + ".copy"
        shutil.copy(db, copy)
        edit(copy)
        os.replace(copy, db)
"""


def _as_nobody(code: str, *args: object, gid: int = NOBODY) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as uid 65534 (in group ``gid``) without root's powers."""
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups",
           "--inh-caps=-all", "--bounding-set=-all", "--",
           sys.executable, "-c", REWRITE_ROW + textwrap.dedent(code), *map(str, args)]  # fmt: skip
    env = {**os.environ, "HASHSYNC_CACHE_DIR": str(_NOBODY_HOME)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


_NOBODY_HOME = Path("/nonexistent")


@pytest.fixture
def world(monkeypatch):
    """A directory other users can reach (pytest's own are private to root)."""
    global _NOBODY_HOME
    top = Path(tempfile.mkdtemp(prefix="hashsync-trust-"))
    os.chmod(top, 0o755)
    _NOBODY_HOME = top / "nobody-home"
    _NOBODY_HOME.mkdir()
    os.chown(_NOBODY_HOME, NOBODY, NOBODY)
    probe = _as_nobody("import hashsync.cache")
    if probe.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip("this checkout's interpreter or package cannot be read by another user")
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(top / "root-home"))
    monkeypatch.setenv("HASHSYNC_CONFIG", str(top / "config.yaml"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _victim(world: Path) -> Path:
    """A file of root's outside any cache that other users may stat but not write."""
    return _file(world / "victim" / "precious", b"root's precious data")


def _cache_root(world: Path, kind: str) -> Path:
    """The cache directory of an attack.

    "planted": root's default cache, ``$HASHSYNC_CACHE_DIR/caches/default`` with the
    variable naming a directory in a /tmp-like one, where nobody made it first; "shared":
    root's own shared cache, nobody being a member of its group.
    """
    if kind == "planted":
        tmp = world / "tmp"
        tmp.mkdir()
        os.chmod(tmp, 0o1777)
        os.environ["HASHSYNC_CACHE_DIR"] = str(tmp / "hashsync")  # undone by the fixture
        root = tmp / "hashsync" / "caches" / "default"
        r = _as_nobody(
            """
            import sys
            from hashsync.cache import LocalCache
            LocalCache(sys.argv[1]).close()
            """,
            root,
        )
        assert r.returncode == 0, r.stderr
        assert root.stat().st_uid == NOBODY
        return root
    root = world / "shared"
    LocalCache(root, shared=True).close()
    return root


def _open(root: Path, kind: str) -> LocalCache:
    if kind == "planted":
        assert root == Path(os.environ["HASHSYNC_CACHE_DIR"]) / "caches" / "default"
        return get_cache()  # type: ignore[return-value]
    return LocalCache(root, shared=True)


def _config(world: Path, root: Path, kind: str) -> None:
    shared = "true" if kind == "shared" else "false"
    (world / "config.yaml").write_text(
        f"caches:\n  c:\n    type: local\n    directory: {root}\n    shared: {shared}\n"
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hashsync", *args], capture_output=True, text=True, timeout=120
    )


def _index(root: Path) -> Path:
    return root / ".hashsync-cache" / "index.db"


# -- the four attacks, on a planted cache and on a shared one ------------------------


@needs_root
@pytest.mark.parametrize("kind", ["planted", "shared"])
def test_get_never_serves_bytes_another_user_swapped_in(world, kind):
    root = _cache_root(world, kind)
    good = _file(world / "good.bin", b"root's model weights")
    try:
        cache = _open(root, kind)
    except errors.PermissionDenied as exc:
        assert kind == "planted" and "belongs to" in str(exc)
        assert not (root / "model.bin").exists()  # nothing written, nothing read
        return
    cache.put("model.bin", good)
    cache.close()
    r = _as_nobody(
        """
        import os, sys
        root = sys.argv[1]
        evil = os.path.join(root, "evil")
        with open(evil, "wb") as f:
            f.write(b"attacker's weights!!")
        os.chmod(evil, 0o444)
        try:
            os.replace(evil, os.path.join(root, "model.bin"))
        except OSError as exc:
            print("replace refused:", exc)
        rewrite(os.path.join(root, ".hashsync-cache", "index.db"), "model.bin",
                os.path.join(root, "model.bin"))
        """,
        root,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    again = _open(root, kind)
    try:
        served = again.get("model.bin").read_bytes()
    except errors.NotFound:
        served = None
    assert served in (None, b"root's model weights")
    assert kind == "shared" and "replace refused" in r.stdout


@needs_root
@pytest.mark.parametrize("kind", ["planted", "shared"])
def test_open_never_reaches_through_a_planted_link(world, kind):
    secret = _file(world / "private" / "secret", b"root's secret", mode=0o600)
    root = _cache_root(world, kind)
    if kind == "shared":
        LocalCache(root, shared=True).put("ok", _file(world / "ok", b"ok"))
    r = _as_nobody(
        """
        import os, sys
        root, private, secret = sys.argv[1:]
        os.symlink(private, os.path.join(root, "ev"))
        rewrite(os.path.join(root, ".hashsync-cache", "index.db"), "ev/secret", secret)
        """,
        root,
        secret.parent,
        secret,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    try:
        cache = _open(root, kind)
    except errors.PermissionDenied:
        assert kind == "planted"
        return
    with pytest.raises(errors.UnsafePath):
        with cache.open("ev/secret", "rb") as f:
            pytest.fail(f"served a root-only file: {f.read()!r}")
    with pytest.raises(errors.UnsafePath):
        cache.get("ev/secret")
    assert secret.read_bytes() == b"root's secret"


@needs_root
@pytest.mark.parametrize("kind", ["planted", "shared"])
def test_cli_verify_never_deletes_through_a_planted_link(world, kind):
    precious = _victim(world)
    root = _cache_root(world, kind)
    r = _as_nobody(
        """
        import os, sys
        root, victim_dir, precious = sys.argv[1:]
        os.symlink(victim_dir, os.path.join(root, "ev"))
        rewrite(os.path.join(root, ".hashsync-cache", "index.db"), "ev/precious", precious,
                digest="f" * 64)
        """,
        root,
        precious.parent,
        precious,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    _config(world, root, kind)
    r = _cli("cache", "verify", "--name", "c", "--no-progress")
    assert precious.read_bytes() == b"root's precious data"
    assert "Traceback" not in r.stderr
    if kind == "planted":
        assert r.returncode == 1 and "belongs to" in r.stderr
    else:
        assert r.returncode == 2 and "ev/precious" in r.stdout  # the row is dropped


@needs_root
@pytest.mark.parametrize("kind", ["planted", "shared"])
def test_cli_clear_never_deletes_a_path_an_index_row_names(world, kind):
    precious = _victim(world)
    root = _cache_root(world, kind)
    key = os.path.relpath(precious, root)
    assert key.startswith("../")
    r = _as_nobody(
        """
        import os, sys
        root, key, precious = sys.argv[1:]
        db = os.path.join(root, ".hashsync-cache", "index.db")
        rewrite(db, key, precious)
        rewrite(db, "x", precious, linked=1, digest="../" + key)  # objects/../../KEY
        rewrite(db, "/" + precious.lstrip("/"), precious)
        """,
        root,
        key,
        precious,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    _config(world, root, kind)
    r = _cli("cache", "clear", "--name", "c")
    assert precious.read_bytes() == b"root's precious data"
    assert "Traceback" not in r.stderr
    if kind == "planted":
        assert r.returncode == 1 and "belongs to" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert _open(root, kind).stats().files == 0  # the rows went, the file stayed


# -- a shared cache: what a member of the group can and cannot do to the others --------------


def test_a_shared_cache_has_the_sticky_bit(tmp_path):
    cache = LocalCache(tmp_path / "shared", shared=True)
    path = cache.put("a/b/k", _file(tmp_path / "f", b"x"))
    meta = tmp_path / "shared" / ".hashsync-cache"
    dirs = [tmp_path / "shared", path.parent, path.parent.parent, meta, *meta.rglob("*")]
    for d in [d for d in dirs if d.is_dir()]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o3775, (d, oct(d.stat().st_mode))
    assert stat.S_IMODE(_index(tmp_path / "shared").stat().st_mode) == 0o664


@needs_root
def test_an_entry_another_member_altered_in_place_is_not_served(world):
    root = world / "shared"
    LocalCache(root, shared=True).close()
    r = _as_nobody(
        """
        import os, sys
        from hashsync.cache import LocalCache
        root, src = sys.argv[1], os.path.join(os.environ["HASHSYNC_CACHE_DIR"], "notes")
        with open(src, "wb") as f:
            f.write(b"the real notes")
        path = LocalCache(root, shared=True).put("notes", src)
        st = os.stat(path)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.write(b"THE EVIL NOTES")  # same size
        os.chmod(path, 0o444)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        """,
        root,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    cache = LocalCache(root, shared=True)
    with pytest.raises(errors.NotFound):
        served = cache.get("notes").read_bytes()
        pytest.fail(f"served bytes that are not the ones published: {served!r}")


@needs_root
def test_a_shared_copy_is_checked_against_its_source_not_the_index(world):
    src = _file(world / "src" / "data.bin", b"the true dataset")
    tier = SimpleLocalStorage(world / "src")
    root = world / "shared"
    CopyToLocalCache([tier], root, shared=True).close()
    r = _as_nobody(
        """
        import os, sys
        import hashsync
        from hashsync.cache import LocalCache
        root, src, source = sys.argv[1:]
        poison = os.path.join(os.environ["HASHSYNC_CACHE_DIR"], "poison")
        with open(poison, "wb") as f:
            f.write(b"a poisoned copy!")
        path = LocalCache(root, shared=True).put("data.bin", poison)
        # The row claims the source's current version for the attacker's bytes.
        rewrite(os.path.join(root, ".hashsync-cache", "index.db"), "data.bin", str(path),
                version=hashsync.etag(src), source=source)
        """,
        root,
        src,
        repr(tier),
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    cache = CopyToLocalCache([tier], root, shared=True)
    assert cache.get("data.bin").read_bytes() == b"the true dataset"
    with cache.open("data.bin", "rb") as f:
        assert f.read() == b"the true dataset"


@needs_root
def test_a_member_cannot_replace_or_remove_the_entries_of_another(world):
    root = world / "shared"
    mine = LocalCache(root, shared=True)
    mine.put("d/k", _file(world / "mine", b"root's entry"))
    r = _as_nobody(
        """
        import os, sys
        from hashsync import errors
        from hashsync.cache import LocalCache
        root = sys.argv[1]
        src = os.path.join(os.environ["HASHSYNC_CACHE_DIR"], "theirs")
        with open(src, "wb") as f:
            f.write(b"nobody's bytes")
        cache = LocalCache(root, shared=True)
        try:
            cache.put("d/k", src)
        except errors.PermissionDenied as exc:
            print("put refused:", exc)
        cache.clear()
        cache.put("d/other", src)
        print(cache.get("d/other").read_bytes().decode())
        """,
        root,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    assert "put refused" in r.stdout and "nobody's bytes" in r.stdout
    assert mine.get("d/k").read_bytes() == b"root's entry"


@needs_root
def test_two_users_share_one_cache_at_once(world):
    root = world / "shared"
    LocalCache(root, shared=True, max_size_bytes=1000).close()
    code = """
        import os, sys
        from hashsync import errors
        from hashsync.cache import LocalCache
        root, who, home = sys.argv[1:]
        cache = LocalCache(root, shared=True, max_size_bytes=1000)
        src = os.path.join(home, who)
        for i in range(40):
            with open(src, "wb") as f:
                f.write((who * 100)[:100].encode() + str(i).encode())
            cache.put(f"{who}/{i % 7}", src)
            try:
                cache.put("both", src)
            except errors.PermissionDenied:
                pass  # the other user's entry: theirs to replace
            for key in ("both", f"{who}/{i % 7}"):
                try:
                    data = cache.get(key).read_bytes()
                except errors.NotFound:
                    continue
                assert data[:100] in ((b"root" * 25), (b"nobody" * 17)[:100]), data
        print("ok")
    """
    code = textwrap.dedent(code)
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def as_root() -> None:
        results["root"] = subprocess.run(
            [sys.executable, "-c", code, str(root), "root", str(world)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    thread = threading.Thread(target=as_root)
    thread.start()
    results["nobody"] = _as_nobody(code, root, "nobody", _NOBODY_HOME, gid=0)
    thread.join()
    for who, r in results.items():
        assert r.returncode == 0 and r.stdout.strip() == "ok", (who, r.stderr)
    cache = LocalCache(root, shared=True, max_size_bytes=1000)
    assert cache.verify(progress=None)["corrupt"] == []
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name]


@needs_root
@pytest.mark.parametrize("name", ["index.db-wal", "index.db-shm"])
def test_a_member_opening_the_index_while_another_creates_its_wal_waits(world, name):
    # SQLite creates -wal and -shm with open(O_CREAT) under the umask, then fchmods them to the
    # database's mode: between the two another member can only open them read-only, and its
    # connection's writes then fail ("attempt to write a readonly database"). Held open here.
    root = world / "shared"
    LocalCache(root, shared=True).close()
    made = root / ".hashsync-cache" / name
    made.touch(mode=0o644)
    os.chmod(made, 0o644)
    timer = threading.Timer(0.5, os.chmod, (made, 0o664))
    timer.start()
    try:
        r = _as_nobody(
            """
            import os, sys
            from hashsync.cache import LocalCache
            root, home = sys.argv[1:]
            src = os.path.join(home, "f")
            with open(src, "wb") as f:
                f.write(b"nobody's file")
            cache = LocalCache(root, shared=True)
            cache.put("k", src)
            print(cache.get("k").read_bytes().decode())
            """,
            root, _NOBODY_HOME, gid=0,
        )  # fmt: skip
    finally:
        timer.join()
    assert r.returncode == 0 and r.stdout.strip() == "nobody's file", r.stderr


@needs_root
def test_an_index_a_member_can_never_write_is_one_clear_error(world):
    root = world / "shared"
    LocalCache(root, shared=True).close()
    wal = root / ".hashsync-cache" / "index.db-wal"
    wal.touch(mode=0o644)
    os.chmod(wal, 0o644)
    r = _as_nobody(
        """
        import os, sys
        from hashsync import errors
        from hashsync.cache import LocalCache
        root, home = sys.argv[1:]
        src = os.path.join(home, "f")
        with open(src, "wb") as f:
            f.write(b"x")
        try:
            LocalCache(root, shared=True).put("k", src)
        except errors.PermissionDenied as exc:
            print("refused:", exc)
        """,
        root, _NOBODY_HOME, gid=0,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused:") and "index.db-wal" in r.stdout, r.stdout


@needs_root
def test_a_content_copy_another_member_planted_is_never_linked_to(world):
    root = world / "shared"
    LocalCache(root, shared=True).close()
    good = b"root's checkpoint"
    digest = hashsync.hash_bytes(good, "blake3")
    r = _as_nobody(
        """
        import os, sys
        root, digest, victim_dir = sys.argv[1:]
        objects = os.path.join(root, ".hashsync-cache", "objects")
        # A copy under the digest of what root will put, with a row vouching for it...
        bucket = os.path.join(objects, digest[:2])
        os.makedirs(bucket, exist_ok=True)
        poison = os.path.join(bucket, digest)
        with open(poison, "wb") as f:
            f.write(b"nobody's payload!")
        os.chmod(poison, 0o444)
        rewrite(os.path.join(root, ".hashsync-cache", "index.db"), "decoy", poison,
                linked=1, digest=digest)
        # ...and a bucket that is a link, for a second digest.
        os.symlink(victim_dir, os.path.join(objects, "ff"))
        """,
        root,
        digest,
        world / "victim",
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    (world / "victim").mkdir()
    cache = LocalCache(root, shared=True)
    assert cache.put("ckpt", _file(world / "ckpt", good)).read_bytes() == good
    assert cache.get("ckpt").read_bytes() == good
    for i in range(200):  # until a content's digest falls into the linked bucket
        data = b"other %d" % i
        if hashsync.hash_bytes(data, "blake3").startswith("ff"):
            assert cache.put("other", _file(world / "other", data)).read_bytes() == data
            break
    else:
        pytest.fail("no digest starting with ff")
    assert list((world / "victim").iterdir()) == []


@needs_root
def test_a_shared_index_that_another_member_made_a_link_is_refused(world):
    # Root's private cache, and a shared one whose index nobody created first.
    private = LocalCache(world / "private")
    private.put("mine", _file(world / "mine", b"root's own entry"))
    private.close()
    os.chmod(world / "private", 0o755)
    os.chmod(world / "private" / ".hashsync-cache", 0o755)
    root = world / "shared"
    root.mkdir()
    os.chmod(root, 0o3775)
    r = _as_nobody(
        """
        import os, sys
        from hashsync.cache import LocalCache
        root, target = sys.argv[1:]
        LocalCache(root, shared=True).close()
        index = os.path.join(root, ".hashsync-cache", "index.db")
        os.unlink(index)
        os.symlink(target, index)
        """,
        root,
        _index(world / "private"),
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(errors.UnsafePath):
        LocalCache(root, shared=True).clear()
    assert LocalCache(world / "private").get("mine").read_bytes() == b"root's own entry"


@needs_root
def test_a_lease_another_member_planted_as_a_link_is_not_waited_on(world):
    src = _file(world / "src" / "k", b"data")
    root = world / "shared"
    CopyToLocalCache([SimpleLocalStorage(src.parent)], root, shared=True).close()
    victim = _victim(world)
    before = victim.stat()
    name = hashlib.sha256(b"k").hexdigest()[:32]
    r = _as_nobody(
        """
        import os, sys
        root, name, victim = sys.argv[1:]
        os.symlink(victim, os.path.join(root, ".hashsync-cache", "leases", name))
        """,
        root,
        name,
        victim,
        gid=0,
    )
    assert r.returncode == 0, r.stderr
    cache = CopyToLocalCache([SimpleLocalStorage(src.parent)], root, shared=True, lock_timeout=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.HashsyncWarning)
        assert cache.get("k").read_bytes() == b"data"
    after = victim.stat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)


@needs_root
@pytest.mark.parametrize(("mode", "word"), [(0o2775, "sticky"), (0o3777, "every user")])
def test_a_shared_root_of_another_user_that_lets_members_replace_entries(tmp_path, mode, word):
    root = tmp_path / "shared"
    root.mkdir()
    os.chown(root, NOBODY, 0)
    os.chmod(root, mode)
    with pytest.raises(errors.PermissionDenied, match=word):
        LocalCache(root, shared=True)
    assert list(root.iterdir()) == []


# -- refusals: whose directory, writable by whom ---------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in [root, *root.rglob("*")]}


@needs_root
@pytest.mark.parametrize(
    "damage",
    [
        "root-world-writable",
        "root-group-writable",
        "root-owned-by-another",
        "meta-owned-by-another",
        "meta-world-writable",
        "index-owned-by-another",
        "index-group-writable",
        "wal-owned-by-another",
        "objects-owned-by-another",
        "parent-world-writable",
    ],
)
def test_a_private_cache_that_others_can_write_is_refused(world, damage):
    root = world / "parent" / "cache"
    cache = LocalCache(root)
    cache.put("k", _file(world / "f", b"data"))
    cache.close()
    meta = root / ".hashsync-cache"
    target, change = {
        "root-world-writable": (root, 0o777),
        "root-group-writable": (root, 0o775),
        "root-owned-by-another": (root, NOBODY),
        "meta-owned-by-another": (meta, NOBODY),
        "meta-world-writable": (meta, 0o777),
        "index-owned-by-another": (meta / "index.db", NOBODY),
        "index-group-writable": (meta / "index.db", 0o664),
        "wal-owned-by-another": (meta / "index.db-wal", NOBODY),
        "objects-owned-by-another": (meta / "objects", NOBODY),
        "parent-world-writable": (root.parent, 0o777),
    }[damage]
    if damage.endswith("group-writable"):
        os.chown(target, 0, NOBODY)  # a group root is not the only member of
    if not target.exists():
        _file(target, b"")
    if change == NOBODY:
        os.chown(target, NOBODY, NOBODY)
    else:
        os.chmod(target, change)
    before = _snapshot(root)
    with pytest.raises(errors.PermissionDenied) as caught:
        LocalCache(root).get("k")
    assert str(target) in str(caught.value)
    assert _snapshot(root) == before  # nothing read into the index, nothing deleted


def test_an_index_that_is_a_link_is_refused(tmp_path):
    root = tmp_path / "cache"
    LocalCache(root).put("k", _file(tmp_path / "f", b"data"))
    other = tmp_path / "other.db"
    index = _index(root)
    index.rename(other)
    index.symlink_to(other)
    with pytest.raises(errors.UnsafePath):
        LocalCache(root)
    (root / ".hashsync-cache" / "index.db").unlink()
    meta = root / ".hashsync-cache"
    meta.rename(tmp_path / "meta")
    meta.symlink_to(tmp_path / "meta")
    with pytest.raises(errors.UnsafePath):
        LocalCache(root)


def test_a_private_cache_made_under_a_group_umask_is_not_group_writable(tmp_path):
    old = os.umask(0o002)
    try:
        cache = LocalCache(tmp_path / "cache")
        path = cache.put("a/b/k", _file(tmp_path / "f", b"x"))
    finally:
        os.umask(old)
    meta = tmp_path / "cache" / ".hashsync-cache"
    for d in (tmp_path / "cache", path.parent, path.parent.parent, meta, meta / "objects"):
        assert d.stat().st_mode & 0o022 == 0, (d, oct(d.stat().st_mode))
    assert LocalCache(tmp_path / "cache").get("a/b/k").read_bytes() == b"x"


# -- an index nobody should trust for paths --------------------------------------------------


def _row(db: Path, key: object, target: Path, *, linked: int = 0, digest: str | None = None):
    st = target.stat()
    digest = digest or hashsync.hash_file(target, "blake3")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(
        "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (key, st.st_size, st.st_ino, st.st_mtime_ns, digest, linked, None, "put",
         st.st_mtime_ns, 0, 2**62),
    )  # fmt: skip
    con.close()


HOSTILE_ROWS = [
    ("../outside/precious", 0, None),
    ("a/../../outside/precious", 0, None),
    ("ABSOLUTE", 0, None),
    ("a\x00b", 0, None),
    ("a//b", 0, None),
    (".hashsync-cache/index.db", 0, None),
    (b"../outside/precious", 0, None),
    ("z", 1, "../../outside/precious"),  # objects/../../../outside/precious
    ("y", 1, "/ABSOLUTE"),
    ("w", 1, "ab\x00cd"),
]


@pytest.mark.parametrize(("key", "linked", "digest"), HOSTILE_ROWS)
def test_hostile_index_rows_never_name_a_path(tmp_path, key, linked, digest):
    precious = _file(tmp_path / "outside" / "precious", b"precious")
    root = tmp_path / "cache"
    cache = LocalCache(root, shared=True)
    cache.put("ok", _file(tmp_path / "f", b"fine"))
    if key == "ABSOLUTE":
        key = str(precious)
    if digest is not None:
        digest = digest.replace("/ABSOLUTE", str(precious))
    _row(_index(root), key, precious, linked=linked, digest=digest)
    if isinstance(key, str):
        with pytest.raises((errors.InvalidArgument, errors.NotFound)):
            cache.get(key)
    assert [e.key for e in cache.entries()] == ["ok"]
    for step in (cache.verify, cache.prune, cache.clear, lambda: cache.evict("ok")):
        step()
        assert precious.read_bytes() == b"precious"
    assert cache.stats().files == 0
    con = sqlite3.connect(_index(root))
    assert con.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_index_rows_of_the_wrong_types_are_ignored(tmp_path):
    root = tmp_path / "cache"
    cache = LocalCache(root, shared=True)
    cache.put("ok", _file(tmp_path / "f", b"fine"))
    con = sqlite3.connect(_index(root), isolation_level=None)
    con.execute(
        "INSERT INTO entries VALUES ('bad', 'big', 'x', 1.5, 'nothex', 1, 3, 4, 'a', 'b', 'c')"
    )
    con.execute("UPDATE counters SET value = 'lots' WHERE name = 'hits'")
    con.execute("INSERT INTO pins VALUES ('ok', 'someone', 'host', 'not a pid')")
    con.close()
    with pytest.raises(errors.NotFound):
        cache.get("bad")
    assert [e.key for e in cache.entries()] == ["ok"]
    assert cache.stats().files >= 1
    r = subprocess.run(
        [sys.executable, "-m", "hashsync", "cache", "ls", "--json", "--name", "c"],
        capture_output=True, text=True,
        env={**os.environ, "HASHSYNC_CONFIG": str(_config_file(tmp_path, root))},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [row["key"] for row in json.loads(r.stdout)] == ["ok"]
    cache.clear()
    cache.prune()


def _config_file(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"caches:\n  c:\n    type: local\n    directory: {root}\n    shared: true\n")
    return config


# -- a directory swapped for a link while an entry is written --------------------------------


class _SwappingTier(SimpleLocalStorage):
    """A tier whose download swaps the cache's directory for a link to ``outside`` midway."""

    def __init__(self, root: Path, cache_dir: Path, outside: Path) -> None:
        super().__init__(root)
        self._swap = (cache_dir, outside)

    def copy(self, key, destination):
        cache_dir, outside = self._swap

        def fill(tmp):
            (cache_dir / "sub").rename(cache_dir / "moved")
            (cache_dir / "sub").symlink_to(outside)
            Path(tmp).write_bytes(self.path(key).read_bytes())
            return self.get_hash(key)

        destination.receive(key, fill)


def test_a_directory_swapped_for_a_link_mid_download_is_not_written_through(tmp_path):
    src = tmp_path / "src"
    _file(src / "sub" / "authorized_keys", b"ssh-ed25519 attacker")
    _file(src / "sub" / "first", b"1")
    outside = tmp_path / "outside"
    outside.mkdir()
    cache_dir = tmp_path / "cache"
    CopyToLocalCache([SimpleLocalStorage(src)], cache_dir).get("sub/first")
    cache = CopyToLocalCache([_SwappingTier(src, cache_dir, outside)], cache_dir)
    try:
        cache.get("sub/authorized_keys")
    except errors.HashsyncError:
        pass
    assert list(outside.iterdir()) == []


def test_prune_never_follows_or_keeps_planted_links(tmp_path):
    precious = _file(tmp_path / "outside" / "precious", b"precious")
    cache = LocalCache(tmp_path / "cache")
    cache.put("ok", _file(tmp_path / "f", b"fine"))
    (tmp_path / "cache" / "ev").symlink_to(precious.parent)
    (tmp_path / "cache" / "pw").symlink_to(precious)
    report = cache.prune()
    assert precious.read_bytes() == b"precious"
    assert sorted(report["orphans"]) == ["ev", "pw"]
    assert not (tmp_path / "cache" / "ev").is_symlink()
    assert cache.get("ok").read_bytes() == b"fine"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root's own group (gid 0, no members)")
def test_group_write_for_a_users_own_private_group_is_accepted(tmp_path):
    # Systems that give each user a group of their own use umask 002: nobody else is in it.
    root = tmp_path / "cache"
    LocalCache(root).put("k", _file(tmp_path / "f", b"data"))
    os.chown(root, 0, 0)
    os.chmod(root, 0o775)
    assert LocalCache(root).get("k").read_bytes() == b"data"
