"""Scanning, the hash state cache, diffing and tree_hash."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import hashsync
from hashsync import errors
from refs import MIB, s3_etag

# Digests recorded less than this long after a file's last change are not trusted (racy).
RACY_SECONDS = 2.05


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


@pytest.fixture
def state_dir(tmp_path_factory):
    # Outside tmp_path, so the state database is never part of the scanned tree.
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def settled_tree(tmp_path_factory):
    """A tree whose files are old enough that their digests can be trusted."""
    root = tmp_path_factory.mktemp("settled")
    write_tree(root, {f"d{i % 5}/f{i}.bin": os.urandom(100 + i) for i in range(60)})
    time.sleep(RACY_SECONDS)
    return root


def test_scan_lists_relative_sorted_paths(tmp_path):
    write_tree(tmp_path, {"b.txt": b"b", "a/z.bin": b"zz", "a/é.txt": b"", "c/d/e": b"e"})
    (tmp_path / "empty").mkdir()
    listing = hashsync.scan(tmp_path, state=False)
    assert listing.paths() == sorted(["b.txt", "a/z.bin", "a/é.txt", "c/d/e"], key=str.encode)
    assert len(listing) == 4 and listing[1].path == listing.paths()[1]
    assert [e.path for e in listing] == listing.paths()
    assert listing[-1] == listing[len(listing) - 1]
    assert listing.stats["bytes"] == 4 and listing.stats["files"] == 4
    assert listing.empty_dirs == ["empty"]
    assert "b.txt" in listing and "nope" not in listing
    assert listing.find("a/z.bin").size == 2
    e = listing.find("c/d/e")
    assert e.mtime_ns == os.stat(tmp_path / "c/d/e").st_mtime_ns and e.digest is None


def test_scan_digests_match_hashlib(tmp_path, state_dir):
    files = {f"x/{i}": os.urandom(i * 1000) for i in range(20)}
    write_tree(tmp_path, files)
    listing = hashsync.scan(tmp_path, algorithm="sha256", state_dir=state_dir)
    assert {e.path: e.digest for e in listing} == {
        k: hashlib.sha256(v).hexdigest() for k, v in files.items()
    }


def test_symlinks_special_files_and_loops(tmp_path):
    write_tree(tmp_path, {"real/f": b"data"})
    os.symlink(tmp_path / "real/f", tmp_path / "link-file")
    os.symlink(tmp_path / "real", tmp_path / "link-dir")
    os.symlink(tmp_path, tmp_path / "real/loop")
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    plain = hashsync.scan(tmp_path, state=False)
    assert plain.paths() == ["real/f"]
    assert plain.stats["symlinks_skipped"] == 4 and plain.stats["special_skipped"] == 1
    followed = hashsync.scan(tmp_path, follow_symlinks=True, state=False)
    assert followed.paths() == ["link-dir/f", "link-file", "real/f"]
    reasons = dict(followed.errors)
    assert "loop" in reasons["real/loop"] and "loop" in reasons["link-dir/loop"]
    assert "broken symbolic link" in reasons["dangling"]


def test_unreadable_and_undecodable_entries_do_not_abort(tmp_path):
    write_tree(tmp_path, {"ok": b"1"})
    bad = os.fsencode(tmp_path) + b"/bad-\xff-name"
    with open(bad, "wb") as f:
        f.write(b"x")
    listing = hashsync.scan(tmp_path, state=False)
    assert listing.paths() == ["ok"]
    assert any("UTF-8" in why for _, why in listing.errors)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0)
        try:
            listing = hashsync.scan(tmp_path, state=False)
            assert ("locked", "Permission denied") in listing.errors
        finally:
            locked.chmod(0o755)


def test_a_file_deleted_during_a_scan_is_left_out_not_an_error(tmp_path):
    # A file that goes between the directory walk and its hashing was deleted: a listing
    # without it is as true as one from a moment later (the walk already treats a file gone
    # before its stat so), and so is a directory removed during the walk. Reported as an
    # error, it made a TreeCache builder's upload fail on a shared directory while a waiter
    # tried to create its lease file there.
    import threading

    write_tree(tmp_path, {f"f{i:04}": b"x" * 4096 for i in range(400)})
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            path = tmp_path / f"churn{n % 4}"
            path.write_bytes(b"y" * 65536)
            path.unlink()
            (tmp_path / "gone" / "deeper").mkdir(parents=True)
            shutil.rmtree(tmp_path / "gone")
            n += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(100):
            listing = hashsync.scan(tmp_path, algorithm="md5", state=False, threads=2)
            assert listing.errors == []
            assert len([p for p in listing.paths() if p.startswith("f")]) == 400
        # The same through a directory storage, which walks without following links.
        storage = hashsync.storage.LocalStorage(tmp_path)
        for _ in range(100):
            assert len([o for o in storage.list() if o.key.startswith("f")]) == 400
    finally:
        stop.set()
        thread.join()


def test_bad_roots(tmp_path):
    with pytest.raises(errors.NotFound):
        hashsync.scan(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.NotADirectory):
        hashsync.scan(tmp_path / "file")
    with pytest.raises(errors.UnknownAlgorithm):
        hashsync.scan(tmp_path, algorithm="sha512")


# --- include / exclude -------------------------------------------------------------------


def aws_filter(path: str, rules: list[tuple[str, str]]) -> bool:
    """awscli's rule (awscli/customizations/s3/filters.py): fnmatch on the path, in order,
    the last match wins; everything starts included."""
    included = True
    for kind, pattern in rules:
        if fnmatch.fnmatchcase(path, pattern):
            included = kind == "include"
    return included


names = st.text(alphabet="ab.-_x", min_size=1, max_size=6).filter(lambda n: n not in (".", ".."))
rel_paths = st.lists(names, min_size=1, max_size=3).map("/".join)
patterns = st.text(alphabet="ab.x/*?[]!-", min_size=0, max_size=7)


@given(
    paths=st.lists(rel_paths, min_size=1, max_size=12, unique=True),
    rules=st.lists(st.tuples(st.sampled_from(["include", "exclude"]), patterns), max_size=4),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_filters_match_aws_semantics(tmp_path, paths, rules):
    # A path cannot be both a file and a directory.
    assume(not any(a != b and b.startswith(a + "/") for a in paths for b in paths))
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    write_tree(root, {p: b"" for p in paths})
    got = hashsync.scan(root, filters=rules, state=False).paths()
    assert got == sorted((p for p in paths if aws_filter(p, rules)), key=str.encode)
    shutil.rmtree(root)


def test_include_exclude_lists(tmp_path):
    write_tree(tmp_path, {"a.txt": b"", "b.bin": b"", "logs/c.txt": b"", "logs/d.bin": b""})
    assert hashsync.scan(tmp_path, exclude="*.bin", state=False).paths() == ["a.txt", "logs/c.txt"]
    assert hashsync.scan(tmp_path, exclude=["*"], include=["logs/*"], state=False).paths() == [
        "logs/c.txt",
        "logs/d.bin",
    ]
    with pytest.raises(errors.InvalidArgument):
        hashsync.scan(tmp_path, filters=[("keep", "*")])


# --- the hash state cache ----------------------------------------------------------------


def test_second_scan_of_unchanged_tree_reads_nothing(settled_tree, state_dir):
    first = hashsync.scan(settled_tree, algorithm="etag", state_dir=state_dir)
    assert first.stats["digests_computed"] == 60
    second = hashsync.scan(settled_tree, algorithm="etag", state_dir=state_dir)
    assert second.stats["digests_computed"] == 0
    assert second.stats["digests_reused"] == 60
    assert second.stats["bytes_hashed"] == 0
    assert [e.digest for e in second] == [e.digest for e in first]
    # Another algorithm or part size is another key.
    other = hashsync.scan(settled_tree, algorithm="md5", state_dir=state_dir)
    assert other.stats["digests_computed"] == 60
    disabled = hashsync.scan(settled_tree, algorithm="etag", state=False)
    assert disabled.stats["digests_computed"] == 60


def test_same_size_edit_with_mtime_put_back_is_seen(tmp_path, state_dir):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"A" * 1000)
    old = time.time() - 3600
    os.utime(f, (old, old))
    time.sleep(RACY_SECONDS)  # let ctime settle so the first digest is trusted
    first = hashsync.scan(tmp_path, algorithm="md5", state_dir=state_dir)
    assert (
        hashsync.scan(tmp_path, algorithm="md5", state_dir=state_dir).stats["digests_reused"] == 1
    )
    st_before = f.stat()
    f.write_bytes(b"B" * 1000)
    os.utime(f, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    assert f.stat().st_mtime_ns == st_before.st_mtime_ns and f.stat().st_size == 1000
    after = hashsync.scan(tmp_path, algorithm="md5", state_dir=state_dir)
    assert after[0].digest == hashlib.md5(b"B" * 1000).hexdigest() != first[0].digest
    assert after.stats["digests_computed"] == 1


def test_racy_file_is_rehashed(tmp_path, state_dir):
    f = tmp_path / "hot.log"
    f.write_bytes(b"x" * 10)
    hashsync.scan(tmp_path, algorithm="sha1", state_dir=state_dir)
    # Recorded within the racy window of the write: not trusted on the next scan.
    again = hashsync.scan(tmp_path, algorithm="sha1", state_dir=state_dir)
    assert again.stats["digests_computed"] == 1 and again.stats["digests_reused"] == 0


def test_truncated_or_foreign_state_is_rebuilt(settled_tree, state_dir):
    hashsync.scan(settled_tree, algorithm="sha256", state_dir=state_dir)
    db = state_dir / "hash-state.sqlite3"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
            "c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()",
            str(db),
        ],
        check=True,
    )
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    fixed = hashsync.scan(settled_tree, algorithm="sha256", state_dir=state_dir)
    assert fixed.stats["digests_computed"] == 60  # nothing trusted from the broken file
    assert all(
        e.digest == hashlib.sha256((settled_tree / e.path).read_bytes()).hexdigest() for e in fixed
    )
    db.write_text('{"definitely": "not sqlite"}')
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    again = hashsync.scan(settled_tree, algorithm="sha256", state_dir=state_dir)
    assert again.stats["digests_computed"] == 60 and not again.errors


SCAN_IN_CHILD = """
import hashlib, sys, hashsync
root, state = sys.argv[1], sys.argv[2]
for _ in range(5):
    l = hashsync.scan(root, algorithm="sha256", state_dir=state)
    assert not l.errors, l.errors
    for e in l:
        with open(f"{root}/{e.path}", "rb") as f:
            assert e.digest == hashlib.sha256(f.read()).hexdigest(), e.path
print("ok")
"""


def test_two_processes_scanning_at_once(settled_tree, state_dir):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCAN_IN_CHILD, str(settled_tree), str(state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err


# Each child meets the others at a file barrier before every call, so that all of them open the
# same brand-new HASHSYNC_CACHE_DIR at once: the window in which one creates the schema while
# another looks at it is a few microseconds, and only a simultaneous start reaches it.
FRESH_STATE_IN_CHILD = """
import json, os, sys, time, traceback, warnings
import hashsync
# The hash state falling back to "unavailable" (a warning) would hide a schema race.
warnings.simplefilter("error")
tree, work, me = sys.argv[1], sys.argv[2], sys.argv[3]
n, rounds = int(sys.argv[4]), int(sys.argv[5])
problems = []

def barrier(name):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, me), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(d)) < n and time.monotonic() < deadline:
        time.sleep(0.0005)

expected = None
for r in range(rounds):
    for call in ("scan", "tree_hash"):
        os.environ["HASHSYNC_CACHE_DIR"] = os.path.join(work, f"cache-{r}-{call}")
        barrier(f"go-{r}-{call}")
        try:
            if call == "scan":
                listing = hashsync.scan(tree, algorithm="sha256")
                problems += [f"scan: {p}: {why}" for p, why in listing.errors]
                if listing.stats["state_unavailable"]:
                    problems.append("scan: hash state unavailable")
                if len(listing) != 3:
                    problems.append(f"scan: {len(listing)} entries")
            else:
                h = hashsync.tree_hash(tree)
                expected = expected or h
                if h != expected:
                    problems.append(f"tree_hash: {h} != {expected}")
        except Exception:
            problems.append(f"{call}: {traceback.format_exc(limit=1).strip()}")
print(json.dumps(problems))
"""


def test_fresh_state_dir_shared_by_many_processes(tmp_path):
    tree = tmp_path / "tree"
    write_tree(tree, {"a.txt": b"a", "sub/b.bin": b"bb" * 100, "sub/deep/c.txt": b"ccc"})
    work = tmp_path / "work"
    work.mkdir()
    n, rounds = 10, 8
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH_STATE_IN_CHILD, *map(str, (tree, work, i, n, rounds))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    problems = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        problems += json.loads(out)
    assert problems == [], f"{len(problems)} failed calls of {2 * n * rounds}: {problems[:5]}"


# --- an unusable hash state location ------------------------------------------------------

UNUSABLE_TREE = {"a.txt": b"a", "sub/b.bin": b"bb" * 100, "sub/deep/c.txt": b"ccc"}


def check_runs_without_state(tree: Path, location: str) -> None:
    """Full, correct digests without errors, and one warning naming the location."""
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in UNUSABLE_TREE.items()}
    plain_tree_hash = hashsync.tree_hash(tree, state=False)
    with pytest.warns(errors.HashsyncWarning) as caught:
        listing = hashsync.scan(tree, algorithm="sha256", state_dir=location)
    assert listing.errors == []
    assert {e.path: e.digest for e in listing} == want
    assert listing.stats["state_unavailable"] == 1 and listing.stats["errors"] == 0
    assert listing.stats["digests_computed"] == 3 and listing.stats["digests_reused"] == 0
    [w] = caught
    assert location in str(w.message) and "hash state cache" in str(w.message)
    assert w.filename == __file__  # points at the caller, not at hashsync's insides
    # Once per process per location: later calls stay quiet, and tree_hash works too.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = hashsync.scan(tree, algorithm="sha256", state_dir=location)
        assert again.errors == [] and again.stats["state_unavailable"] == 1
        assert hashsync.tree_hash(tree, state_dir=location) == plain_tree_hash


@pytest.mark.parametrize("kind", ["parent-is-a-file", "proc", "immutable-file"])
def test_unusable_state_location_runs_without_it(tmp_path, kind):
    tree = tmp_path / "tree"
    write_tree(tree, UNUSABLE_TREE)
    if kind == "parent-is-a-file":
        (tmp_path / "file").write_text("x")
        location = str(tmp_path / "file" / "state")
    elif kind == "proc":
        location = f"/proc/{os.getpid()}/hashsync-state-{tmp_path.name}"
    else:
        location = str(tmp_path / "state")
        hashsync.scan(tree, algorithm="sha256", state_dir=location)
        db = Path(location) / "hash-state.sqlite3"
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
    try:
        check_runs_without_state(tree, location)
    finally:
        if kind == "immutable-file":
            subprocess.run(["chattr", "-i", str(db)], check=True)


def test_tree_hash_warns_too(tmp_path):
    write_tree(tmp_path / "tree", UNUSABLE_TREE)
    (tmp_path / "file").write_text("x")
    location = str(tmp_path / "file" / "state")
    with pytest.warns(errors.HashsyncWarning, match="hash state cache"):
        got = hashsync.tree_hash(tmp_path / "tree", state_dir=location)
    assert got == hashsync.tree_hash(tmp_path / "tree", state=False)


READ_ONLY_STATE_IN_CHILD = """
import hashlib, json, sys, warnings
import hashsync
tree, locations = sys.argv[1], sys.argv[2:]
out = []
for location in locations:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listing = hashsync.scan(tree, algorithm="sha256", state_dir=location)
        again = hashsync.tree_hash(tree, state_dir=location)
    out.append({
        "errors": listing.errors,
        "digests": {e.path: e.digest for e in listing},
        "stats": listing.stats,
        "tree_hash": again,
        "warnings": [(w.category.__name__, str(w.message)) for w in caught],
    })
print(json.dumps(out))
"""


def test_read_only_state_dir_runs_without_it(tmp_path):
    # Root ignores permission bits; without CAP_DAC_OVERRIDE it obeys them like anyone else.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    tree = tmp_path / "tree"
    write_tree(tree, UNUSABLE_TREE)
    empty = tmp_path / "empty-state"
    empty.mkdir()
    used = tmp_path / "used-state"
    hashsync.scan(tree, algorithm="sha256", state_dir=used)
    for p in used.iterdir():
        p.chmod(0o444)
    for d in (empty, used):
        d.chmod(0o555)
    drop = "-dac_override,-dac_read_search"
    try:
        r = subprocess.run(
            [
                setpriv,
                f"--inh-caps={drop}",
                f"--bounding-set={drop}",
                "--",
                sys.executable,
                "-c",
                READ_ONLY_STATE_IN_CHILD,
                str(tree),
                str(empty),
                str(used),
            ],
            capture_output=True,
            text=True,
        )
    finally:
        for d in (empty, used):
            d.chmod(0o755)
    if r.returncode != 0 and "setpriv" in r.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in UNUSABLE_TREE.items()}
    plain = hashsync.tree_hash(tree, state=False)
    for location, got in zip((empty, used), json.loads(r.stdout), strict=True):
        assert got["errors"] == [] and got["digests"] == want and got["tree_hash"] == plain
        assert got["stats"]["state_unavailable"] == 1
        [(category, message)] = got["warnings"]
        assert category == "HashsyncWarning" and str(location) in message


def test_cli_with_unusable_state_location_exits_0(tmp_path):
    write_tree(tmp_path / "a", UNUSABLE_TREE)
    write_tree(tmp_path / "b", UNUSABLE_TREE)
    env = {**os.environ, "HASHSYNC_CACHE_DIR": "/proc/1/nope"}
    for cmd in (["diff"], ["sync"]):
        r = subprocess.run(
            [sys.executable, "-m", "hashsync", *cmd, str(tmp_path / "a"), str(tmp_path / "b")],
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert "/proc/1/nope" in r.stderr and "skipped" not in r.stderr


# --- diff and tree_hash --------------------------------------------------------------------

entries = st.dictionaries(
    rel_paths,
    st.tuples(st.integers(0, 50), st.integers(0, 5), st.sampled_from(["a", "b", None])),
    max_size=20,
)


def as_entries(d):
    return [hashsync.FileEntry(p, s, m, h) for p, (s, m, h) in d.items()]


@given(entries)
@settings(max_examples=100, deadline=None)
def test_diff_with_itself_is_empty(d):
    es = as_entries(d)
    for compare in ("size", "size-mtime"):
        plan = hashsync.diff(es, es, compare=compare)
        assert not plan and plan.unchanged == len(es)
    plan = hashsync.diff(es, es)
    # Entries without a digest can never be proven equal by checksum.
    assert plan.copy == sorted((e.path for e in es if e.digest is None), key=str.encode)
    assert plan.delete == []


@given(entries, entries)
@settings(max_examples=100, deadline=None)
def test_diff_partitions_paths(a, b):
    plan = hashsync.diff(as_entries(a), as_entries(b), compare="size-mtime")
    assert set(plan.delete) == set(b) - set(a)
    assert set(plan.copy) >= set(a) - set(b)
    assert len(plan.copy) + plan.unchanged == len(a)
    for p in set(a) & set(b):
        # mtimes compare in whole seconds, as S3's Last-Modified has no more precision
        changed = a[p][0] != b[p][0] or a[p][1] // 10**9 > b[p][1] // 10**9
        assert (p in plan.copy) == changed


def apply_plan(plan, src: Path, dst: Path) -> None:
    # Deletes first: a file may replace a directory of the same name, or the reverse.
    for rel in plan.delete:
        (dst / rel).unlink()
        parent = (dst / rel).parent
        while parent != dst and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    for rel in plan.copy:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)


contents = st.sampled_from([b"", b"a", b"b", b"ab", b"x" * 70_000, bytes(range(256))])
trees = st.dictionaries(rel_paths, contents, max_size=10).filter(
    lambda t: not any(a != b and b.startswith(a + "/") for a in t for b in t)
)


@given(src=trees, dst=trees, algorithm=st.sampled_from(["etag", "sha256", "xxh3"]))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_applying_the_plan_makes_tree_hashes_equal(tmp_path, src, dst, algorithm):
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    write_tree(case / "src", src)
    write_tree(case / "dst", dst)
    (case / "src").mkdir(parents=True, exist_ok=True)
    (case / "dst").mkdir(parents=True, exist_ok=True)
    s = hashsync.scan(case / "src", algorithm=algorithm, state=False)
    d = hashsync.scan(case / "dst", algorithm=algorithm, state=False)
    plan = hashsync.diff(s, d)
    changed = {p for p in set(src) & set(dst) if src[p] != dst[p]}
    assert set(plan.copy) == (set(src) - set(dst)) | changed
    assert set(plan.delete) == set(dst) - set(src)
    apply_plan(plan, case / "src", case / "dst")
    h = lambda p: hashsync.tree_hash(p, algorithm, state=False)  # noqa: E731
    assert h(case / "src") == h(case / "dst")
    assert not hashsync.diff(
        hashsync.scan(case / "src", algorithm=algorithm, state=False),
        hashsync.scan(case / "dst", algorithm=algorithm, state=False),
    )
    shutil.rmtree(case)


def test_tree_hash_definition(tmp_path):
    write_tree(tmp_path, {"b/c.txt": b"C", "a.txt": b"A"})
    (tmp_path / "e").mkdir()
    records = b"".join(
        [
            b"file\0a.txt\0" + hashlib.sha256(b"A").hexdigest().encode() + b"\n",
            b"file\0b/c.txt\0" + hashlib.sha256(b"C").hexdigest().encode() + b"\n",
            b"dir\0e\0\n",
        ]
    )
    assert hashsync.tree_hash(tmp_path, state=False) == hashlib.sha256(records).hexdigest()
    os.utime(tmp_path / "a.txt", (1, 1))
    assert hashsync.tree_hash(tmp_path, state=False) == hashlib.sha256(records).hexdigest()


def test_checksum_diff_infers_etag_part_size(tmp_path):
    data = os.urandom(12 * MIB + 5)
    (tmp_path / "big.bin").write_bytes(data)
    local = hashsync.scan(tmp_path, algorithm="etag", state=False)
    assert local[0].digest == s3_etag(data, 8 * MIB)
    remote = [hashsync.FileEntry("big.bin", len(data), 0, s3_etag(data, 5 * MIB))]
    plan = hashsync.diff(local, remote)
    assert plan.unchanged == 1 and not plan
    other = bytearray(data)
    other[0] ^= 1
    remote = [hashsync.FileEntry("big.bin", len(data), 0, s3_etag(bytes(other), 5 * MIB))]
    assert hashsync.diff(local, remote).copy == ["big.bin"]


def test_cli_diff(tmp_path):
    write_tree(tmp_path / "a", {"same": b"1", "changed": b"new", "only-a": b"x"})
    write_tree(tmp_path / "b", {"same": b"1", "changed": b"old", "only-b": b"y"})
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "hashsync", "diff", *map(str, a)], capture_output=True, text=True
    )
    r = run(tmp_path / "a", tmp_path / "b", "--no-state")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["~ changed", "+ only-a", "- only-b"]
    assert "2 to copy" in r.stderr and "1 unchanged" in r.stderr
    r = run(tmp_path / "a", tmp_path / "b", "--json", "--exclude", "*", "--include", "only-*")
    import json

    out = json.loads(r.stdout)
    assert out["copy"] == [{"path": "only-a", "new": True}] and out["delete"] == ["only-b"]
    assert run(tmp_path / "a", tmp_path / "a", "--exit-code").returncode == 0
    assert run(tmp_path / "a", tmp_path / "b", "--exit-code").returncode == 1
    r = run(tmp_path / "missing", tmp_path / "b")
    assert r.returncode == 1 and "missing" in r.stderr
