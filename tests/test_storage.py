"""Storage contract for the local and HTTP backends, and their own behaviour."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hashsync
from hashsync.atomic import KeyLock, temporary_path
from hashsync.errors import (
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from hashsync.storage import (
    HTTPStorage,
    PartitioningLocalStorage,
    ReadOnlyFilesystemStorage,
    S3Storage,
    SimpleLocalStorage,
    TemporaryLocalStorage,
    open_storage,
    register_scheme,
    registered_schemes,
)
from hashsync.testing.contract import (
    MANY,
    ReadOnlyContract,
    ReadWriteContract,
    blob,
    temp_leftovers,
)
from storage_helpers import PART, race_content, race_worker, serve_directory


def _writer(storage):
    def put(key, data):
        src = TemporaryLocalStorage(part_size=PART)
        try:
            src.path(key).parent.mkdir(parents=True, exist_ok=True)
            src.path(key).write_bytes(data)
            storage.copy_from(key, src)
        finally:
            src.close()

    return put


def _fill_directory(root: Path, keys: list[str]) -> None:
    for key in keys:
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())


MANY_KEYS = [f"k/{i:04d}" for i in range(MANY)]


def _direct_writer(root: Path):
    def put(key, data):
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


# -- the contract, per backend ---------------------------------------------------------


class TestSimpleLocalStorage(ReadWriteContract):
    storage_class = SimpleLocalStorage

    @pytest.fixture
    def storage(self, tmp_path):
        return SimpleLocalStorage(tmp_path / "store", part_size=PART)

    @pytest.fixture
    def put(self, storage):
        return _writer(storage)

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, tmp_path_factory):
        root = tmp_path_factory.mktemp("many-simple")
        _fill_directory(root, MANY_KEYS)
        return SimpleLocalStorage(root, part_size=PART), MANY_KEYS


class TestTemporaryLocalStorage(ReadWriteContract):
    storage_class = TemporaryLocalStorage

    @pytest.fixture
    def storage(self):
        with TemporaryLocalStorage(part_size=PART) as storage:
            yield storage

    @pytest.fixture
    def put(self, storage):
        return _writer(storage)

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls):
        storage = TemporaryLocalStorage(part_size=PART)
        _fill_directory(storage.root, MANY_KEYS)
        yield storage, MANY_KEYS
        storage.close()


class TestPartitioningLocalStorage(ReadWriteContract):
    storage_class = PartitioningLocalStorage

    @pytest.fixture
    def storage(self, tmp_path):
        return PartitioningLocalStorage(tmp_path / "store", part_size=PART)

    @pytest.fixture
    def put(self, storage):
        return _writer(storage)

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, tmp_path_factory):
        storage = PartitioningLocalStorage(tmp_path_factory.mktemp("many-part"), part_size=PART)
        for key in MANY_KEYS:
            storage.path(key).parent.mkdir(parents=True, exist_ok=True)
            storage.path(key).write_bytes(key.encode())
        return storage, MANY_KEYS


class TestReadOnlyFilesystemStorage(ReadOnlyContract):
    storage_class = ReadOnlyFilesystemStorage

    @pytest.fixture
    def storage(self, tmp_path):
        (tmp_path / "ro").mkdir()
        return ReadOnlyFilesystemStorage(tmp_path / "ro", part_size=PART)

    @pytest.fixture
    def put(self, tmp_path):
        return _direct_writer(tmp_path / "ro")

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, tmp_path_factory):
        root = tmp_path_factory.mktemp("many-ro")
        _fill_directory(root, MANY_KEYS)
        return ReadOnlyFilesystemStorage(root, part_size=PART), MANY_KEYS


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("http-root")) as server:
        yield server


class TestHTTPStorage(ReadOnlyContract):
    storage_class = HTTPStorage

    @pytest.fixture
    def served(self, http_server, tmp_path):
        # Each test gets its own directory on the shared server.
        name = f"t-{tmp_path.name}"
        root = http_server.root / name
        root.mkdir()
        return root, f"{http_server.url}/{name}"

    @pytest.fixture
    def storage(self, served):
        return HTTPStorage(served[1], verify=True, timeout=5, max_attempts=3)

    @pytest.fixture
    def put(self, served):
        return _direct_writer(served[0])

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, http_server):
        root = http_server.root / "many"
        _fill_directory(root, MANY_KEYS)
        return HTTPStorage(f"{http_server.url}/many/"), MANY_KEYS


# -- local storage specifics -----------------------------------------------------------


def test_partitioning_spreads_keys_over_hashed_directories(tmp_path):
    storage = PartitioningLocalStorage(tmp_path)
    src = SimpleLocalStorage(tmp_path / "src-elsewhere")
    for i in range(20):
        src.path(f"same/prefix/{i}").parent.mkdir(parents=True, exist_ok=True)
        src.path(f"same/prefix/{i}").write_bytes(b"x")
        storage.copy_from(f"same/prefix/{i}", src)
    top = {p.name for p in tmp_path.iterdir() if p.name != "src-elsewhere"}
    assert len(top) > 5 and all(len(name) == 2 for name in top)
    path = storage.path("same/prefix/3")
    assert path.relative_to(tmp_path).parts[2:] == ("same", "prefix", "3")
    # A stray file outside the layout is not a key.
    (tmp_path / "stray.txt").write_bytes(b"?")
    assert len(list(storage.list())) == 20
    for i in range(20):
        storage.delete(f"same/prefix/{i}")
    assert {p.name for p in tmp_path.iterdir()} == {"src-elsewhere", "stray.txt"}


def test_open_writes_atomically(tmp_path):
    storage = SimpleLocalStorage(tmp_path)
    with storage.open("f.txt", "w") as fh:
        fh.write("half")
        assert not storage.exists("f.txt")  # nothing under the final name yet
    assert storage.open("f.txt").read() == "half"
    with pytest.raises(RuntimeError), storage.open("f.txt", "wb") as fh:
        fh.write(b"broken")
        raise RuntimeError
    assert storage.open("f.txt", "rb").read() == b"half"  # the failed write left no trace
    assert temp_leftovers(tmp_path) == []
    with pytest.raises(FileExistsError):
        storage.open("f.txt", "x")
    with storage.open("new.txt", "x") as fh:
        fh.write("exclusive")
    with storage.open("new.txt", "a") as fh:
        fh.write("!")
    assert storage.path("new.txt").read_text() == "exclusive!"
    with pytest.raises(NotFound, match="nope"):
        storage.open("nope")


def test_interrupted_write_leaves_only_a_temporary_that_a_later_write_removes(tmp_path):
    # A process killed mid-write (no cleanup handlers run) leaves its temporary behind...
    code = textwrap.dedent(
        f"""
        import os, signal
        from hashsync.storage import SimpleLocalStorage
        s = SimpleLocalStorage({str(tmp_path)!r})
        f = s.open("dir/big.bin", "wb")
        f.write(b"x" * 100000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], check=False)
    assert result.returncode == -signal.SIGKILL
    assert not (tmp_path / "dir" / "big.bin").exists()
    leftovers = temp_leftovers(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.bin.hashsync-tmp-")
    # ...which the next write into that directory, in another process, cleans up.
    storage = SimpleLocalStorage(tmp_path)
    with storage.open("dir/other.bin", "wb") as fh:
        fh.write(b"y")
    assert temp_leftovers(tmp_path) == []
    assert [info.key for info in storage.list()] == ["dir/other.bin"]


def test_live_temporaries_and_locks_are_not_listed_or_removed(tmp_path):
    storage = SimpleLocalStorage(tmp_path, part_size=PART)
    live = temporary_path(tmp_path / "k")
    live.write_bytes(b"in progress")
    with KeyLock(tmp_path / "k"):
        (tmp_path / "k").write_bytes(b"data")
        assert [info.key for info in storage.list()] == ["k"]
        storage.copy_from("k", storage)  # copying onto itself is a no-op
    assert live.exists()


def test_stale_lock_of_dead_process_is_broken(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from hashsync.atomic import KeyLock; "
            f"KeyLock(Path({str(tmp_path / 'k')!r})).__enter__()",
        ],
        check=True,
    )
    assert proc.returncode == 0
    assert temp_leftovers(tmp_path) == [".k.hashsync-lock"]
    storage = SimpleLocalStorage(tmp_path)
    src = SimpleLocalStorage(tmp_path / "src")
    src.path("k").write_bytes(b"v")
    started = time.monotonic()
    storage.copy_from_if_overwriting_hash("k", None, src)
    assert time.monotonic() - started < 5
    assert storage.path("k").read_bytes() == b"v"


def test_get_hash_uses_part_size_and_scan_state(tmp_path):
    storage = SimpleLocalStorage(tmp_path / "s", part_size=PART, hash_state_dir=tmp_path / "st")
    storage.path("big").write_bytes(blob(2 * PART + 1))
    assert storage.get_hash("big") == hashsync.etag(storage.path("big"), part_size=PART)
    assert storage.get_hash("big").endswith("-3")
    default = SimpleLocalStorage(tmp_path / "s")
    assert default.get_hash("big") == hashsync.etag(storage.path("big"))  # 8 MiB parts
    assert default.get_hash("big").endswith("-2")
    (info,) = storage.list()
    assert info.hash == storage.get_hash("big")
    assert any((tmp_path / "st").iterdir())  # the hash state cache was used
    (info,) = storage.list(hashes=False)
    assert info.hash is None


def test_temporary_storage_removed_on_close_and_collection(tmp_path):
    storage = TemporaryLocalStorage()
    root = storage.root
    storage.path("a/b").parent.mkdir(parents=True)
    storage.path("a/b").write_bytes(b"x")
    storage.close()
    assert not root.exists()
    with pytest.raises(InvalidArgument, match="closed"):
        storage.open("x", "w")
    storage = TemporaryLocalStorage(dir=tmp_path)
    root = storage.root
    del storage
    gc.collect()
    assert not root.exists()


def test_temporary_storage_removed_at_interpreter_exit():
    code = (
        "from hashsync.storage import TemporaryLocalStorage\n"
        "s = TemporaryLocalStorage(); s.path('f').write_bytes(b'x'); print(s.root)\n"
        "import builtins; builtins.keep = s\n"  # still referenced when the interpreter exits
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    root = Path(out.stdout.strip())
    assert root.name.startswith("hashsync-")
    assert not root.exists()


def test_read_only_filesystem_refuses_writes_and_creates_nothing(tmp_path):
    (tmp_path / "k").write_bytes(b"x")
    storage = ReadOnlyFilesystemStorage(tmp_path)
    for mode in ("w", "wb", "a", "r+", "x"):
        with pytest.raises(PermissionDenied, match="read-only"):
            storage.open("new", mode)
    assert storage.open("k", "rb").read() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]
    with pytest.raises(NotFound):
        ReadOnlyFilesystemStorage(tmp_path / "missing")


def test_copy_between_local_storages_keeps_mtime(tmp_path):
    a = SimpleLocalStorage(tmp_path / "a")
    b = PartitioningLocalStorage(tmp_path / "b")
    a.path("x").write_bytes(b"data")
    os.utime(a.path("x"), ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    a.copy("x", b)
    assert b.path("x").stat().st_mtime_ns == 1_600_000_000_123_456_789
    with pytest.raises(InvalidArgument, match="LocalStorage"):
        a.copy("x", HTTPStorage("http://127.0.0.1:9/"))  # type: ignore[arg-type]


def test_local_race_exactly_one_winner(tmp_path):
    """Two processes replace the same version at once: one wins, one is refused."""
    rounds, size = 6, 64 * 1024
    store = tmp_path / "store"
    storage = SimpleLocalStorage(store, part_size=PART)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    options = {"root_path": str(store), "part_size": PART}
    workers = [
        ctx.Process(
            target=race_worker,
            args=("local", options, {}, who, rounds, size, str(tmp_path), barrier, results),
        )
        for who in ("left", "right")
    ]
    for worker in workers:
        worker.start()
    try:
        _referee(storage, rounds, size, barrier, results)
    finally:
        barrier.abort()  # a failed round must not leave the workers waiting
        for worker in workers:
            worker.join(30)


def _referee(storage, rounds, size, barrier, results, put=None):
    for r in range(rounds):
        base = race_content(r, "base", size)
        if put is None:
            storage.path("obj").write_bytes(base)
        else:
            put("obj", base)
        barrier.wait(timeout=60)
        outcomes = dict(results.get(timeout=120)[1:] for _ in range(2))
        assert sorted(outcomes.values()) == ["ok", "precondition"], outcomes
        winner = next(who for who, outcome in outcomes.items() if outcome == "ok")
        winner_hash = hashsync.hash_bytes(race_content(r, winner, size), "etag", part_size=PART)
        assert storage.get_hash("obj") == winner_hash
        barrier.wait(timeout=60)


# -- HTTP specifics --------------------------------------------------------------------


@pytest.fixture
def http_dir(http_server, tmp_path):
    root = http_server.root / f"x-{tmp_path.name}"
    root.mkdir()
    yield root, f"{http_server.url}/{root.name}"
    http_server.drop_after = None
    http_server.lie_etag = None


def test_http_resumes_a_dropped_download_with_range(http_server, http_dir, dest):
    root, url = http_dir
    data = blob(2 * PART + 12345)
    (root / "big.bin").write_bytes(data)
    http_server.range_requests.clear()
    http_server.drop_after = 3 * 1024 * 1024
    HTTPStorage(url, verify=True).copy("big.bin", dest)
    assert dest.path("big.bin").read_bytes() == data
    assert http_server.range_requests == [f"bytes={3 * 1024 * 1024}-"]


def test_http_wrong_etag_is_an_integrity_error(http_server, http_dir, dest):
    root, url = http_dir
    (root / "f").write_bytes(b"real content")
    http_server.lie_etag = hashsync.hash_bytes(b"something else", "md5")
    with pytest.raises(IntegrityError, match="ETag"):
        HTTPStorage(url, verify=True).copy("f", dest)
    assert not dest.path("f").exists()
    assert temp_leftovers(dest.root) == []
    # Without verification (an opaque ETag, as most web servers send) it is accepted.
    HTTPStorage(url, verify=False).copy("f", dest)
    assert dest.path("f").read_bytes() == b"real content"


def test_http_server_gone(dest):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = HTTPStorage(f"http://127.0.0.1:{port}/", max_attempts=2, timeout=2)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        storage.copy("k", dest)
    with pytest.raises(StorageUnavailable):
        storage.get_hash("k")
    assert time.monotonic() - started < 5
    assert temp_leftovers(dest.root) == []


def test_http_rejects_non_http_urls():
    with pytest.raises(InvalidArgument):
        HTTPStorage("ftp://example.com/")


# -- open_storage ----------------------------------------------------------------------


def test_open_storage_paths_and_urls(tmp_path, monkeypatch):
    local = open_storage(tmp_path / "p")
    assert isinstance(local, SimpleLocalStorage) and local.root == tmp_path / "p"
    assert open_storage(str(tmp_path / "q")).root == tmp_path / "q"
    assert open_storage(f"file://{tmp_path}/r%20s").root == tmp_path / "r s"
    monkeypatch.chdir(tmp_path)
    assert open_storage("rel").root == tmp_path / "rel"
    assert open_storage("data", part_size=PART).part_size == PART
    http = open_storage("https://example.com/data/")
    assert isinstance(http, HTTPStorage) and http.url("a b") == "https://example.com/data/a%20b"
    s3 = open_storage("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    with pytest.raises(InvalidArgument, match="unknown storage URL scheme 'gopher'"):
        open_storage("gopher://x/y")
    assert {"file", "s3", "http", "https"} <= set(registered_schemes())


def test_register_scheme(tmp_path):
    register_scheme("memtest", lambda url, **kw: SimpleLocalStorage(tmp_path / url[10:], **kw))
    try:
        storage = open_storage("memtest://abc", part_size=PART)
        assert storage.root == tmp_path / "abc" and storage.part_size == PART
        with pytest.raises(InvalidArgument, match="already registered"):
            register_scheme("memtest", lambda url: storage)
    finally:
        from hashsync.storage import registry

        registry._factories.pop("memtest", None)


def test_concurrent_copies_of_one_key_never_expose_partial_files(tmp_path):
    src = SimpleLocalStorage(tmp_path / "src")
    dst = SimpleLocalStorage(tmp_path / "dst")
    data = blob(PART)
    src.path("k").write_bytes(data)
    seen: list[int] = []

    def reader():
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                seen.append(len(dst.path("k").read_bytes()))
            except FileNotFoundError:
                pass

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(reader)] + [pool.submit(src.copy, "k", dst) for _ in range(20)]
        for future in futures:
            future.result()
    assert set(seen) <= {len(data)}
    assert temp_leftovers(dst.root) == []


# -- every registered storage runs the contract --------------------------------------------


def test_every_registered_scheme_runs_the_contract(tmp_path):
    import test_hub_storage  # noqa: F401 - defines the hub contract class
    import test_storage_gcs  # noqa: F401 - defines the GCS contract class
    import test_storage_s3  # noqa: F401 - defines the S3 contract classes

    from hashsync.testing.contract import StorageContract

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    covered = {
        c.storage_class for c in subclasses(StorageContract) if c.__name__.startswith("Test")
    }
    samples = {
        "file": f"file://{tmp_path}/f",
        "s3": "s3://bucket/prefix",
        "gs": "gs://bucket/prefix",
        "http": "http://127.0.0.1:1/base/",
        "https": "https://127.0.0.1:1/base/",
        "hub": "hub://127.0.0.1:1/dataset",
        "hubs": "hubs://127.0.0.1:1/dataset",
    }
    for scheme in registered_schemes():
        assert scheme in samples, f"no contract sample for the registered scheme {scheme!r}"
        options = {"endpoint_url": "http://127.0.0.1:1"} if scheme in ("s3", "gs") else {}
        if scheme == "gs":
            options["anonymous"] = True
        storage = open_storage(samples[scheme], **options)
        assert type(storage) in covered, f"{type(storage).__name__} ({scheme}://) is untested"


def test_concurrent_directory_fsyncs_are_shared_and_none_is_skipped(tmp_path, monkeypatch):
    # Group commit: every caller returns only after an fsync of its directory that began
    # after it called, and callers that overlap share fsyncs.
    from hashsync import atomic

    started: list[float] = []
    ended: list[float] = []
    clock = threading.Lock()

    def slow_fsync(directory: str) -> None:
        with clock:
            started.append(time.monotonic())
        time.sleep(0.02)
        with clock:
            ended.append(time.monotonic())

    monkeypatch.setattr(atomic, "_fsync_directory_now", slow_fsync)
    calls: list[tuple[float, float]] = []

    def call(_: int) -> None:
        t0 = time.monotonic()
        atomic.fsync_directory(tmp_path)
        calls.append((t0, time.monotonic()))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(200)))
    fsyncs = list(zip(started, ended, strict=True))
    for t0, t1 in calls:
        assert any(t0 <= s and e <= t1 for s, e in fsyncs), (t0, t1)
    assert len(fsyncs) < len(calls) / 2
    assert atomic._directory_syncs._state == {}
