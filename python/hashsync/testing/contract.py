"""The behaviour every Storage must have, as pytest classes to subclass per backend.

This ships in the package (like fsspec's ``tests/abstract``) so that a storage written
elsewhere and registered with :func:`hashsync.storage.register_scheme` can prove itself
against the same contract. A backend's test class subclasses :class:`ReadOnlyContract` or
:class:`ReadWriteContract`, sets :attr:`StorageContract.storage_class`, and provides:

* ``storage``: a fresh, empty storage of that backend (part size :data:`PART`);
* ``many``: a class-scoped ``(storage, keys)`` holding :data:`MANY` keys, for pagination;
* ``put`` (read-only backends only): ``put(key, data)`` makes ``key`` hold ``data`` by writing
  the backing store directly. Read-write backends get a default ``put`` that uploads through
  ``copy_from``.

``dest`` (an empty SimpleLocalStorage to copy into) is provided here. Every fixture a backend
must provide fails with a message naming it when it is missing.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from pathlib import Path

import pytest

import hashsync
from hashsync.atomic import is_internal_name
from hashsync.errors import (
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
)
from hashsync.storage import (
    ReadOnlyStorage,
    ReadWriteStorage,
    SimpleLocalStorage,
    Storage,
)
from hashsync.storage.base import reporting_progress
from hashsync.storage.local import TemporaryLocalStorage
from hashsync.storage.sink import BytesSink, Sink

#: The part size the contract's storages are made with (S3's minimum: small test files).
PART = 5 * 1024**2

MANY = 1050  # more than one ListObjectsV2 page (1,000 keys)

# 0 bytes, small, one below / at / above the part boundary, and three parts.
SIZES = [0, 1000, PART - 1, PART, PART + 1, 2 * PART + 12345]
SIZE_IDS = ["empty", "small", "part-1", "part", "part+1", "multipart"]

INVALID_KEYS = ["", "/abs", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\x00b"]

_BLOB = random.Random(1234).randbytes(2 * PART + 12345)


def blob(size: int) -> bytes:
    """``size`` bytes of fixed pseudo-random data (the same on every call)."""
    return _BLOB[:size]


def expected_hash(storage: Storage, path: Path) -> str:
    """What ``storage.get_hash`` must say of a key holding the content of the file ``path``.

    An S3 ETag with :data:`PART` parts, or ``"<algorithm>:<hex>"`` for a storage whose
    :attr:`~hashsync.storage.Storage.hash_algorithm` is a digest (a hub's SHA-256).
    """
    algorithm = storage.hash_algorithm
    if algorithm == "etag":
        return hashsync.etag(path, part_size=PART)
    return f"{algorithm}:{hashsync.hash_file(path, algorithm)}"


def hash_of(storage: Storage, data: bytes) -> str:
    """What ``storage.get_hash`` must say of a key holding ``data`` (as :func:`expected_hash`)."""
    algorithm = storage.hash_algorithm
    if algorithm == "etag":
        hasher = hashsync.Hasher("etag", part_size=PART)
        hasher.update(data)
        return hasher.hexdigest()
    return f"{algorithm}:{hashsync.hash_bytes(data, algorithm)}"


def temp_leftovers(directory: Path) -> list[str]:
    """Names of hashsync's temporaries and locks left anywhere under ``directory``."""
    return [p.name for p in directory.rglob("*") if is_internal_name(p.name)]


class StorageContract:
    """Reading: every storage."""

    writable = False
    #: The class under test; a suite collects every registered scheme's class (see tests).
    storage_class: type[Storage] | None = None

    @pytest.fixture
    def storage(self):
        pytest.fail(f"{type(self).__name__} must provide the 'storage' fixture")

    @pytest.fixture
    def put(self):
        pytest.fail(f"{type(self).__name__} must provide the 'put' fixture")

    @pytest.fixture(scope="class")
    def many(self):
        pytest.fail(f"{type(self).__name__} must provide the class-scoped 'many' fixture")

    @pytest.fixture
    def dest(self, tmp_path) -> SimpleLocalStorage:
        """An empty local storage to copy into."""
        return SimpleLocalStorage(tmp_path / "dest", part_size=PART)

    def test_storage_class(self, storage):
        assert self.storage_class is not None, "set storage_class on the test class"
        assert isinstance(storage, self.storage_class)

    @pytest.mark.parametrize("size", [1000, 2 * PART + 12345], ids=["small", "multipart"])
    def test_copy_reports_bytes_to_the_progress_channel(self, storage, put, dest, size):
        put("p.bin", blob(size))
        seen: list[int] = []
        with reporting_progress(seen.append):
            storage.copy("p.bin", dest)
        assert sum(seen) == size

    @pytest.fixture(autouse=True)
    def _private_hash_state(self, tmp_path, monkeypatch):
        # The hash state cache of local listings must not land in the user's ~/.cache.
        monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "hash-state"))

    def test_is_a_storage(self, storage):
        assert isinstance(storage, Storage)
        assert isinstance(storage, ReadWriteStorage) == self.writable
        assert isinstance(storage, ReadOnlyStorage) == (not self.writable)

    @pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
    def test_round_trip(self, storage, put, dest, size):
        data = blob(size)
        put("dir/obj.bin", data)
        assert storage.exists("dir/obj.bin")
        assert storage.get_size("dir/obj.bin") == size
        storage.copy("dir/obj.bin", dest)
        target = dest.path("dir/obj.bin")
        assert target.read_bytes() == data
        assert temp_leftovers(dest.root) == []
        # get_hash is comparable: the remote hash is the local copy's, of the same kind.
        assert storage.get_hash("dir/obj.bin") == expected_hash(storage, target)
        etag = hashsync.etag(target, part_size=PART)
        assert dest.get_hash("dir/obj.bin") == etag
        if storage.hash_algorithm == "etag":
            assert storage.get_hash("dir/obj.bin") == etag
        if size >= PART:
            assert etag.endswith(f"-{-(-size // PART)}")

    @pytest.mark.parametrize("size", [1000, PART + 1], ids=["small", "part+1"])
    def test_copy_into_any_sink(self, storage, put, size):
        # Storages write through the public Sink protocol, not into LocalStorage's internals.
        data = blob(size)
        put("in/sink.bin", data)

        class Recording(Sink):
            def __init__(self) -> None:
                self.received: dict[str, bytes] = {}

            def receive(self, key, fill, *, check=None):
                with TemporaryLocalStorage() as scratch:
                    tmp = scratch.root / "incoming"
                    fill(tmp)
                    self.received[key] = tmp.read_bytes()

        sink = Recording()
        storage.copy("in/sink.bin", sink)
        assert sink.received == {"in/sink.bin": data}
        small = BytesSink()
        storage.copy("in/sink.bin", small)
        assert small.contents["in/sink.bin"] == data
        assert storage.read_bytes("in/sink.bin") == data

    def test_copy_refuses_what_is_not_a_sink(self, storage, put, tmp_path):
        put("k", b"x")
        with pytest.raises(InvalidArgument, match="Sink"):
            storage.copy("k", tmp_path)  # a path, not a storage
        with pytest.raises(IntegrityError):
            storage.read_bytes("k", max_size=0)  # larger than allowed: refused, not cut

    def test_copy_replaces_existing_file(self, storage, put, dest):
        put("k", b"new content")
        dest.path("k").write_bytes(b"old content that is longer")
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == b"new content"

    def test_unusual_key_characters(self, storage, put, dest):
        key = "dir with space/ä+b%20c #1.txt"
        put(key, b"x")
        assert storage.exists(key)
        assert [info.key for info in storage.list()] == [key]
        storage.copy(key, dest)
        assert dest.path(key).read_bytes() == b"x"

    def test_last_modified(self, storage, put, dest):
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        put("k", b"data")
        modified = storage.get_last_modified("k")
        assert modified.tzinfo is not None
        assert modified.utcoffset() == datetime.timedelta(0)
        # Stores keep whole seconds; allow for that and a little clock skew.
        after = datetime.datetime.now(datetime.UTC)
        assert before - datetime.timedelta(seconds=2) <= modified <= after
        storage.copy("k", dest)
        # The download gets the time its uploader recorded (the uploaded file's mtime, in
        # rclone's metadata, just before the object's time), else the object's own.
        got = dest.get_last_modified("k")
        assert got == modified or modified - datetime.timedelta(seconds=5) <= got <= after

    def test_missing_key(self, storage, dest):
        assert not storage.exists("no/such/key")
        for call in (
            lambda: storage.get_size("no/such/key"),
            lambda: storage.get_hash("no/such/key"),
            lambda: storage.get_last_modified("no/such/key"),
            lambda: storage.copy("no/such/key", dest),
        ):
            with pytest.raises(NotFound, match="no/such/key") as info:
                call()
            assert isinstance(info.value, FileNotFoundError)
        assert not dest.path("no/such/key").exists()
        assert temp_leftovers(dest.root) == []

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_key_is_refused(self, storage, dest, key):
        calls = [
            storage.exists,
            storage.get_size,
            storage.get_hash,
            storage.get_last_modified,
            lambda k: storage.copy(k, dest),
        ]
        if self.writable:
            calls += [
                storage.delete,
                lambda k: storage.copy_from(k, dest),
                lambda k: storage.copy_from_if_overwriting_hash(k, None, dest),
                lambda k: storage.delete_if_hash_matches(k, "0" * 32),
            ]
        for call in calls:
            with pytest.raises(ValueError) as info:
                call(key)
            assert repr(key) in str(info.value) or key == ""

    def test_list_with_prefixes(self, storage, put):
        keys = ["a/1", "a/2", "ab", "b/c/d", "b/c/e", "z"]
        for i, key in enumerate(keys):
            put(key, b"x" * i)

        def listed(prefix=""):
            return [info.key for info in storage.list(prefix)]

        assert listed() == keys
        assert listed("a/") == ["a/1", "a/2"]
        assert listed("a") == ["a/1", "a/2", "ab"]
        assert listed("b/c/") == ["b/c/d", "b/c/e"]
        assert listed("b/c/e") == ["b/c/e"]
        assert listed("nothing") == []
        for info in storage.list():
            assert info.size == keys.index(info.key)
            assert info.hash == storage.get_hash(info.key)
            assert info.last_modified == storage.get_last_modified(info.key)

    def test_sync_listing_digests_are_the_hashes(self, storage, put):
        put("a", b"one")
        put("b/c", blob(PART + 1))
        listing = storage.list_for_sync([])
        digests = {entry.path: entry.digest for entry in listing.entries}
        # A sync compares bare digests: get_hash without an "<algorithm>:" label.
        assert digests == {k: storage.get_hash(k).rpartition(":")[2] for k in ("a", "b/c")}
        assert listing.errors == []

    def test_read_bytes(self, storage, put):
        put("small/m.json", b'{"a": 1}')
        assert storage.read_bytes("small/m.json") == b'{"a": 1}'
        with pytest.raises(IntegrityError):
            storage.read_bytes("small/m.json", max_size=3)

    def test_list_empty(self, storage):
        assert list(storage.list()) == []

    def test_list_beyond_one_page(self, many):
        storage, keys = many
        listed = [info.key for info in storage.list()]
        assert listed == sorted(keys)
        assert len(listed) == MANY
        assert [info.key for info in storage.list("k/01")] == [
            k for k in sorted(keys) if k.startswith("k/01")
        ]


class ReadWriteContract(StorageContract):
    """Writing: every read-write storage (``put`` uses ``copy_from``)."""

    writable = True

    @pytest.fixture
    def src(self, tmp_path) -> SimpleLocalStorage:
        return SimpleLocalStorage(tmp_path / "src", part_size=PART)

    @pytest.fixture
    def put(self, storage):
        """The default writer of a read-write backend: ``copy_from`` a temporary file."""

        def put(key: str, data: bytes) -> None:
            with TemporaryLocalStorage(part_size=PART) as staging:
                staging.path(key).parent.mkdir(parents=True, exist_ok=True)
                staging.path(key).write_bytes(data)
                storage.copy_from(key, staging)

        return put

    @pytest.mark.parametrize("size", [1000, 2 * PART + 12345], ids=["small", "multipart"])
    def test_copy_from_reports_bytes_to_the_progress_channel(self, storage, src, size):
        src.path("p.bin").write_bytes(blob(size))
        seen: list[int] = []
        with reporting_progress(seen.append):
            storage.copy_from("p.bin", src)
        assert sum(seen) == size

    def test_overwrite(self, storage, put, dest):
        put("k", b"first version")
        put("k", b"second")
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == b"second"

    def test_copy_from_missing_source(self, storage, src):
        with pytest.raises(NotFound, match="missing"):
            storage.copy_from("missing", src)
        assert not storage.exists("missing")

    def test_delete(self, storage, put):
        put("d/k", b"x")
        storage.delete("d/k")
        assert not storage.exists("d/k")
        assert list(storage.list()) == []
        with pytest.raises(NotFound, match="d/k"):
            storage.delete("d/k")

    def test_copy_from_if_local_is_newer(self, storage, src, dest):
        path = src.path("k")
        path.write_bytes(b"v1")
        old = time.time() - 3 * 24 * 3600
        os.utime(path, (old, old))
        assert storage.copy_from_if_local_is_newer("k", src) is True  # missing: copied
        assert storage.copy_from_if_local_is_newer("k", src) is False  # same or older
        path.write_bytes(b"v2")
        future = time.time() + 3600
        os.utime(path, (future, future))
        assert storage.copy_from_if_local_is_newer("k", src) is True
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == b"v2"
        path.write_bytes(b"v3 is stale")
        os.utime(path, (old, old))
        assert storage.copy_from_if_local_is_newer("k", src) is False
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == b"v2"

    @pytest.mark.parametrize("size", [10, 2 * PART + 1], ids=["small", "multipart"])
    def test_copy_from_if_overwriting_hash(self, storage, put, src, dest, size):
        put("k", blob(size))
        current = storage.get_hash("k")
        replacement = bytes(reversed(blob(size)))
        src.path("k").write_bytes(replacement)
        storage.copy_from_if_overwriting_hash("k", current, src)
        assert storage.get_hash("k") == expected_hash(storage, src.path("k"))
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == replacement
        # The old hash is stale now: refused, and the object is unchanged.
        src.path("k").write_bytes(b"third")
        with pytest.raises(PreconditionFailed, match="'k'"):
            storage.copy_from_if_overwriting_hash("k", current, src)
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == replacement

    def test_copy_from_if_overwriting_hash_accepts_quoted_etag(self, storage, put, src):
        put("k", b"v1")
        src.path("k").write_bytes(b"v2")
        storage.copy_from_if_overwriting_hash("k", f'"{storage.get_hash("k").upper()}"', src)
        assert storage.get_hash("k") == hash_of(storage, b"v2")

    def test_copy_from_if_overwriting_hash_missing_key(self, storage, src):
        src.path("k").write_bytes(b"v")
        with pytest.raises(PreconditionFailed, match="'k'"):
            storage.copy_from_if_overwriting_hash("k", hash_of(storage, b"v"), src)
        assert not storage.exists("k")

    def test_create_only(self, storage, src, dest):
        src.path("k").write_bytes(b"first")
        storage.copy_from_if_overwriting_hash("k", None, src)
        src.path("k").write_bytes(b"second")
        with pytest.raises(PreconditionFailed, match="already exists"):
            storage.copy_from_if_overwriting_hash("k", None, src)
        storage.copy("k", dest)
        assert dest.path("k").read_bytes() == b"first"

    def test_delete_if_hash_matches(self, storage, put):
        put("k", b"content")
        with pytest.raises(PreconditionFailed, match="'k'"):
            storage.delete_if_hash_matches("k", hash_of(storage, b"other"))
        assert storage.exists("k")
        storage.delete_if_hash_matches("k", storage.get_hash("k"))
        assert not storage.exists("k")
        with pytest.raises(NotFound, match="'k'"):
            storage.delete_if_hash_matches("k", hash_of(storage, b"content"))

    def test_delete_many(self, storage, put):
        for k in ("a", "b/c", "b/d", "keep"):
            put(k, k.encode())
        outcomes = storage.delete_many(["a", "b/c", "missing", "b/d", "../escape"])
        assert len(outcomes) == 5
        assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
        # A key that was not there: gone either way (S3 does not say), or NotFound.
        assert outcomes[2] is None or isinstance(outcomes[2], NotFound)
        assert isinstance(outcomes[4], InvalidArgument)
        assert [o.key for o in storage.list()] == ["keep"]
        assert storage.delete_many([]) == []

    def test_write_bytes_and_read_bytes(self, storage):
        etag = storage.write_bytes("meta/m.json", b"one")
        assert etag == storage.get_hash("meta/m.json") == hash_of(storage, b"one")
        assert storage.read_bytes("meta/m.json") == b"one"
        with pytest.raises(PreconditionFailed):
            storage.write_bytes("meta/m.json", b"two", create_only=True)
        with pytest.raises(PreconditionFailed):
            storage.write_bytes("meta/m.json", b"two", if_hash=hash_of(storage, b"x"))
        assert storage.read_bytes("meta/m.json") == b"one"
        new = storage.write_bytes("meta/m.json", b"two", if_hash=etag)
        assert storage.read_bytes("meta/m.json") == b"two" and new != etag
        with pytest.raises(PreconditionFailed):
            storage.write_bytes("meta/absent", b"x", if_hash=etag)
        assert not storage.exists("meta/absent")
        assert storage.write_bytes("meta/new", b"", create_only=True)
        with pytest.raises(IntegrityError):
            storage.read_bytes("meta/m.json", max_size=2)
        with pytest.raises(NotFound):
            storage.read_bytes("meta/absent")


class ReadOnlyContract(StorageContract):
    """Read-only storages refuse every write."""

    def test_has_no_write_access(self, storage, put, tmp_path):
        put("k", b"x")
        src = SimpleLocalStorage(tmp_path / "src")
        src.path("k").write_bytes(b"y")
        writes = [
            ("copy_from", ("k", src)),
            ("delete", ("k",)),
            ("copy_from_if_local_is_newer", ("k", src)),
            ("copy_from_if_overwriting_hash", ("k", None, src)),
            ("delete_if_hash_matches", ("k", storage.get_hash("k"))),
        ]
        for name, args in writes:
            method = getattr(storage, name, None)
            if method is None:
                continue  # HTTPStorage has no write methods at all
            with pytest.raises(PermissionDenied):
                method(*args)
        algorithm = storage.hash_algorithm
        if algorithm == "etag":
            assert storage.get_hash("k") == hashsync.hash_bytes(b"x", "md5")
        else:
            assert storage.get_hash("k") == f"{algorithm}:{hashsync.hash_bytes(b'x', algorithm)}"
