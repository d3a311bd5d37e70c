"""The cache classes (seed 001's names): served in place, kept locally, copied in from tiers."""

from __future__ import annotations

import abc
import contextlib
import datetime
import errno
import hashlib
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import hashsync
from hashsync._threads import run_on_threads
from hashsync.atomic import KeyLock, cleanup_stale_temporaries, temporary_path
from hashsync.cache import _settings
from hashsync.cache._index import Entry, Index
from hashsync.cache._tree import (
    META_DIR,
    Tree,
    Vouched,
    blake3_of,
    check_key,
    fd_path,
    identity,
    owner_of,
)
from hashsync.errors import (
    HashsyncError,
    HashsyncWarning,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    UnsafePath,
)
from hashsync.storage.base import ReadWriteStorage, Storage, reporting_progress, validate_key
from hashsync.storage.local import (
    FilesystemStorage,
    LocalStorage,
    SimpleLocalStorage,
    link_below,
    receive_file,
)
from hashsync.storage.sink import Check, Fill, Sink
from hashsync.verify import content_matches_hash

__all__ = [
    "Cache",
    "CacheStats",
    "CopyToLocalCache",
    "LocalCache",
    "LocalReadOnlyCache",
    "SynchronizedRemoteAndLocalCache",
    "WriteableCache",
]

# Entries are read-only: a shared content-addressed copy edited through one key would change
# every key that links to it.
_ENTRY_MODE = 0o444


@dataclass(frozen=True)
class CacheStats:
    """What a cache holds and how it has been used.

    Attributes:
        files: Entries in the cache.
        bytes: Bytes they take on disk (content shared by several keys counts once).
        max_bytes: The byte budget (None for a cache that holds no copies).
        hits: ``get`` calls served from the cache, by every process using its directory.
        misses: ``get`` calls that had to fetch.
        evictions: Entries removed to stay within the budget.
    """

    files: int
    bytes: int
    max_bytes: int | None
    hits: int
    misses: int
    evictions: int


class Cache(abc.ABC):
    """Files by key, as local paths; subclasses decide where the files come from.

    A cache is a context manager (``with`` closes it) and pickles (for multiprocessing pools
    and Dask workers): what it holds lives on disk, and clients are rebuilt on the other side.
    """

    num_workers: int = 1

    @abc.abstractmethod
    def get(self, key: str) -> Path:
        """Return a local path holding ``key``'s current content, fetching it if needed.

        Raises:
            NotFound: No tier has the key (or, offline, it is not cached).
        """

    def open(self, key: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
        """Open ``key``'s cached file for reading (``"r"`` or ``"rb"``).

        Raises:
            InvalidArgument: ``mode`` would write: cached files are read-only.
            NotFound: As :meth:`get`.
        """
        if any(c in mode for c in "wax+"):
            raise InvalidArgument(f"cached files are read-only; cannot open with mode {mode!r}")
        return open(self.get(key), mode, **kwargs)  # noqa: SIM115 - the caller owns it

    def get_hash(self, key: str) -> str:
        """The hash (S3 ETag, as :meth:`Storage.get_hash`) of the content :meth:`get` serves."""
        return hashsync.etag(self.get(key))

    def get_last_modified(self, key: str) -> datetime.datetime:
        """When the served content was last modified at its source (UTC)."""
        ns = self.get(key).stat().st_mtime_ns
        return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)

    def get_many(self, keys: Iterable[str], *, progress: bool = True) -> list[Path]:
        """:meth:`get` many keys on :attr:`num_workers` threads; paths in the keys' order.

        A byte progress bar is drawn on stderr when it is a terminal and ``progress`` is on.

        Raises:
            HashsyncError: The first key that failed (the others still complete).
        """
        keys = list(keys)
        if not keys:
            return []
        from hashsync._progress import byte_counter, byte_progress, quiet

        with byte_progress(f"fetching {len(keys)} files", enabled=progress) as bar:
            moved = byte_counter(bar)

            def one(key: str) -> Path:
                with reporting_progress(moved):
                    return self.get(key)

            if bar is quiet:
                one = self.get  # no bar drawn: no byte counting per chunk either

            workers = max(1, min(self.num_workers, len(keys)))
            if workers == 1:
                return [one(k) for k in keys]
            return run_on_threads(one, keys, workers)

    @abc.abstractmethod
    def stats(self) -> CacheStats:
        """Counts of entries, bytes and uses."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry that is not pinned."""

    @contextlib.contextmanager
    def pin(self, keys: Iterable[str]) -> Iterator[None]:
        """Within the block, the entries of ``keys`` are never evicted (by any process)."""
        yield

    def close(self) -> None:  # noqa: B027 - a hook; most caches hold nothing to close
        """Release connections and flush counters; the files stay."""

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WriteableCache(Cache):
    """A cache that files can be put into and deleted from."""

    @abc.abstractmethod
    def put(self, key: str, file: str | os.PathLike[str]) -> Path:
        """Copy the local ``file`` into the cache as ``key``; return the entry's path."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` from the cache (and, for a synchronized cache, from its remote).

        Raises:
            NotFound: The key is not there.
        """


class LocalReadOnlyCache(Cache):
    """Files served in place from a local or mounted storage, without copying.

    The shared read-only tier of a cluster (a network share every machine mounts): nothing
    is written, nothing counts against a budget, and ``clear`` refuses.

    Args:
        storage: A storage with local paths (``LocalStorage`` or ``ReadOnlyFilesystemStorage``).
    """

    def __init__(self, storage: Storage) -> None:
        if not isinstance(storage, FilesystemStorage):
            raise InvalidArgument(
                f"LocalReadOnlyCache serves files in place and needs a local storage, "
                f"not {storage!r}"
            )
        self.storage: FilesystemStorage = storage
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        return f"LocalReadOnlyCache({self.storage!r})"

    def get(self, key: str) -> Path:
        """Return the storage's path of ``key``.

        Raises:
            NotFound: The storage has no such file.
        """
        path: Path = self.storage.path(key)
        where = link_below(self.storage.root, path)
        if where is not None:
            raise UnsafePath(
                errno.ELOOP,
                f"refusing to serve {key!r} from {self.storage!r}: {where!r} is a symbolic "
                "link (it may lead outside the storage)",
            )
        if not self.storage.exists(key):
            self._misses += 1
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self.storage!r}")
        self._hits += 1
        return path

    def get_hash(self, key: str) -> str:
        """The storage's hash of ``key``."""
        return self.storage.get_hash(key)

    def get_last_modified(self, key: str) -> datetime.datetime:
        """The storage's last-modified time of ``key``."""
        return self.storage.get_last_modified(key)

    def stats(self) -> CacheStats:
        """Files and bytes in the storage; hits and misses of this object."""
        files = size = 0
        for info in self.storage.list(hashes=False):
            files += 1
            size += info.size
        return CacheStats(files, size, None, self._hits, self._misses, 0)

    def clear(self) -> None:
        """Refuse: a read-only cache's files are not hashsync's to delete.

        Raises:
            PermissionDenied: Always.
        """
        raise PermissionDenied(errno.EACCES, f"{self!r} is read-only; nothing was removed")


_check_cache_key = check_key


class _CannotReplace(PermissionDenied):
    """A shared cache's entry another user owns could not be replaced (sticky directory)."""


_swept: dict[tuple[int, str], float] = {}
_swept_lock = threading.Lock()


def _sweep_once(dir_fd: int, real: Path) -> None:
    """Remove dead writers' temporaries from the open directory, once a minute per process.

    As :func:`hashsync.atomic.cleanup_once`, but through the directory already opened (its
    path could lead elsewhere by now); listing a large directory on every write would cost.
    """
    tag = (os.getpid(), str(real))
    now = time.monotonic()
    with _swept_lock:
        last = _swept.get(tag)
        if last is not None and now - last < 60.0:
            return
        _swept[tag] = now
    cleanup_stale_temporaries(fd_path(dir_fd, real))


class _Inbox(Sink):
    """The sink a source downloads one cache entry into.

    The source fills and verifies the temporary file as for any sink; the cache's index then
    publishes it (dedup, rename, budget) instead of a plain rename. Whatever key the source
    names (a tier may store the entry under another), the file becomes this entry.
    """

    def __init__(self, cache: _IndexedCache, key: str, source: str) -> None:
        self._cache = cache
        self._key = key
        self._source = source
        self.entry: Entry | None = None

    def __repr__(self) -> str:
        return f"<entry {self._key!r} of {self._cache!r}>"

    def receive(self, key: str, fill: Fill, *, check: Check | None = None) -> None:
        """Publish what ``fill`` writes as this entry (see :class:`~hashsync.storage.sink.Sink`)."""
        if check is not None:
            raise InvalidArgument("a cache entry is published by the index: it takes no check")
        cache = self._cache
        *parents, name = self._key.split("/")
        try:
            dir_fd = cache.tree.open_dir(parents, create=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidArgument(
                f"cannot cache key {self._key!r}: a parent path is a cached file"
            ) from None
        except PermissionError as exc:
            if isinstance(exc, HashsyncError):
                raise
            raise PermissionDenied(
                errno.EACCES, f"cannot write {self._key!r} in {cache!r}: {exc.strerror}"
            ) from None
        try:
            there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            if there is not None and stat.S_ISLNK(there.st_mode):
                raise cache.tree._link(self._key)
            if there is not None and stat.S_ISDIR(there.st_mode):
                raise InvalidArgument(
                    f"cannot cache key {self._key!r}: it is a directory of other cached keys"
                )
            real = cache._path(self._key).parent
            _sweep_once(dir_fd, real)
            # Everything below is done through the directory opened above: renaming a
            # directory on the way and putting a link in its place cannot redirect it.
            final = fd_path(dir_fd, real) / name
            tmp = temporary_path(final)
            try:
                version = fill(tmp)
                try:
                    self.entry = cache._publish(
                        self._key,
                        tmp,
                        final,
                        version=version if isinstance(version, str) else None,
                        source=self._source,
                    )
                except PermissionError as exc:
                    if isinstance(exc, HashsyncError) or not cache.shared:
                        raise
                    raise self._cannot_replace(dir_fd, name) from None
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
        finally:
            os.close(dir_fd)

    def _cannot_replace(self, dir_fd: int, name: str) -> _CannotReplace:
        try:
            owner = owner_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid)
        except OSError:
            owner = "another user"
        return _CannotReplace(
            errno.EPERM,
            f"cannot replace the cached {self._key!r} in {self._cache!r}: its file belongs to "
            f"{owner}, and in a shared cache only a file's owner (or root) may replace it",
        )


class _IndexedCache(Cache):
    """Entries in a local storage's directory, indexed, in budget; fetched by subclasses."""

    _ACCESS_RESOLUTION_NS = 1_000_000_000  # last-access updates at most once a second per key

    def __init__(
        self,
        local_storage: LocalStorage | str | os.PathLike[str],
        *,
        max_size_bytes: int | None = None,
        num_workers: int | None = None,
        max_age: float | None = 0.0,
        shared: bool = False,
        locking: bool = True,
        lock_timeout: float = 600.0,
        dedup: bool = True,
    ) -> None:
        if not isinstance(local_storage, LocalStorage):
            # The cache makes its own directory: with no group write whatever the umask.
            local_storage = SimpleLocalStorage(local_storage, create=False)
        self.storage = local_storage
        self.max_size_bytes = _settings.max_size_bytes(max_size_bytes)
        self.num_workers = _settings.num_workers(num_workers)
        if max_age is not None and max_age < 0:
            raise InvalidArgument(f"max_age must not be negative, not {max_age}")
        self.max_age = max_age
        self.shared = shared
        self.locking = locking
        self.lock_timeout = lock_timeout
        self.dedup = dedup
        self._start()

    def _start(self) -> None:
        self.tree = Tree(self.storage.root, shared=self.shared)
        # Content this process hashed (another user's files), and when it last asked a
        # source about such a file: an index others write cannot vouch for either.
        self._vouched = Vouched()
        self._source_checked: dict[tuple[int, ...], tuple[int, str]] = {}
        self.index = Index(
            self.tree,
            dedup=self.dedup,
            shared=self.shared,
            trusted=self._trusted,
            content_is=self._content_is,
        )
        self._pending = {"hits": 0, "misses": 0}
        self._pending_lock = threading.Lock()
        self._flushed = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("index", "tree", "_vouched", "_source_checked", "_pending",
                     "_pending_lock", "_flushed"):  # fmt: skip
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage!r})"

    # -- bookkeeping -----------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._pending_lock:
            self._pending[name] += 1

    def _take_counts(self) -> dict[str, int]:
        with self._pending_lock:
            counts, self._pending = self._pending, {"hits": 0, "misses": 0}
            self._flushed = time.monotonic()
        return counts

    def _due_counts(self) -> dict[str, int]:
        """This process's pending counters if they were last written a second ago, else {}.

        An UPDATE per insertion would be a tenth of an insertion's cost; ``stats`` and
        ``close`` write them at once.
        """
        if time.monotonic() - self._flushed < 1.0:
            return {}
        return self._take_counts()

    def _path(self, key: str) -> Path:
        # At the key's own path whatever the storage's layout: the index, the walks and
        # prune know entries by it.
        return self.storage.root.joinpath(*_check_cache_key(key).split("/"))

    def _intact(self, key: str, path: Path) -> Entry | None:
        found = self._found(key)
        return found[0] if found is not None else None

    def _found(self, key: str) -> tuple[Entry, os.stat_result] | None:
        """``key``'s entry and its file's stat, if the file is still the one published.

        Raises:
            UnsafePath: A component of the key's path is a symbolic link.
        """
        entry = self.index.lookup(key)
        if entry is None:
            return None
        st = self.tree.lstat(key)
        if st is None or not stat.S_ISREG(st.st_mode) or not entry.intact(st):
            return None
        if not self._trusted(st) and not self._file_is(key, st, entry.digest):
            return None
        return entry, st

    def _trusted(self, st: os.stat_result) -> bool:
        """Whether a file's content needs no hashing before it is served.

        Only this user's own entries: another user may rewrite theirs in place (keeping inode,
        size and mtime), and in a shared cache, a file of ours that is not an entry's 0444 may
        be a hard link someone made to a private file.
        """
        if st.st_uid != os.geteuid():
            return False
        return not self.shared or stat.S_IMODE(st.st_mode) == _ENTRY_MODE

    def _content_is(self, fd: int, st: os.stat_result, digest: str) -> bool:
        """Whether the open file ``fd`` (whose stat is ``st``) has BLAKE3 ``digest``."""
        if self._vouched.has(st, digest):
            return True
        try:
            actual = blake3_of(fd)
            after = os.fstat(fd)
        except (OSError, HashsyncError):
            return False
        if actual != digest or identity(after) != identity(st):
            return False
        self._vouched.add(st, digest)
        return True

    def _file_is(self, key: str, st: os.stat_result, digest: str) -> bool:
        """Whether the file at ``key`` is still ``st`` and has BLAKE3 ``digest``."""
        if self._vouched.has(st, digest):
            return True
        try:
            fd = self.tree.open_file(key)
        except OSError:
            return False
        try:
            return identity(os.fstat(fd)) == identity(st) and self._content_is(fd, st, digest)
        finally:
            os.close(fd)

    def open(self, key: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
        """Open ``key``'s cached file for reading (``"r"`` or ``"rb"``).

        The file is opened without following links and checked to be the entry just served
        (hashed first if another user wrote it), so a directory swapped for a link between
        the two cannot hand out another file.

        Raises:
            InvalidArgument: ``mode`` would write: cached files are read-only.
            NotFound: As :meth:`get`.
            UnsafePath: A component of the key's path is a symbolic link.
        """
        if any(c in mode for c in "wax+"):
            raise InvalidArgument(f"cached files are read-only; cannot open with mode {mode!r}")
        for _ in range(3):  # replaced between get and open (a newer version): once more
            self.get(key)
            fd = self._open_entry(key)
            if fd is not None:
                try:
                    return open(fd, mode, **kwargs)  # noqa: SIM115 - the caller owns it
                except BaseException:
                    os.close(fd)
                    raise
        raise NotFound(errno.ENOENT, f"key {key!r} kept changing while it was opened")

    def _open_entry(self, key: str) -> int | None:
        entry = self.index.lookup(key)
        if entry is None:
            return None
        try:
            fd = self.tree.open_file(key)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            served = stat.S_ISREG(st.st_mode) and entry.intact(st)
            if served and (self._trusted(st) or self._content_is(fd, st, entry.digest)):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _hit(self, entry: Entry, path: Path) -> Path:
        self._count("hits")
        now = time.time_ns()
        if now - entry.last_access >= self._ACCESS_RESOLUTION_NS:
            self.index.touch(entry.key, now, self._due_counts())
        return path

    def _publish(
        self, key: str, tmp: Path, final: Path, *, version: str | None, source: str
    ) -> Entry:
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:
            tmp.touch()  # a 0-byte copy may never open its file
            fd = os.open(tmp, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if st.st_size > self.max_size_bytes:
                raise InvalidArgument(
                    f"{key!r} ({st.st_size} bytes) is larger than the cache's budget of "
                    f"{self.max_size_bytes} bytes"
                )
            os.fchmod(fd, _ENTRY_MODE if self.shared else _ENTRY_MODE & ~_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        digest = hashsync.hash_file(tmp, "blake3")
        counts = self._due_counts()
        entry, _ = self.index.publish(
            key,
            tmp,
            final,
            digest=digest,
            version=version,
            source=source,
            modified_ns=st.st_mtime_ns,
            stat=st,
            max_bytes=self.max_size_bytes,
            counts=counts,
        )
        # No fsync of the directory: after a power loss an entry whose name did not reach the
        # disk is simply missing (its index row no longer matches a file) and is fetched
        # again; the data itself was fsynced above, so a name that survived has its bytes.
        return entry

    # -- the Cache API ---------------------------------------------------------------

    def get_last_modified(self, key: str) -> datetime.datetime:
        """When the served content was last modified at its source (UTC)."""
        self.get(key)
        entry = self.index.lookup(key)
        ns = entry.modified_ns if entry is not None else self._path(key).stat().st_mtime_ns
        return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)

    def get_hash(self, key: str) -> str:
        """The source's hash of the served content (else its S3 ETag with 8 MiB parts)."""
        path = self.get(key)
        entry = self.index.lookup(key)
        if entry is not None and entry.version:
            return entry.version
        return hashsync.etag(path)

    def stats(self) -> CacheStats:
        """Entries and bytes in the directory; hits, misses and evictions of all processes."""
        counts = self._take_counts()
        if any(counts.values()):
            with self.index.transaction() as db:
                self.index.add_counts(db, counts)
        c = self.index.counters()
        return CacheStats(
            self.index.count(), c["bytes"], self.max_size_bytes, c["hits"], c["misses"],
            c["evictions"],
        )  # fmt: skip

    def clear(self) -> None:
        """Remove every entry that is not pinned (the files too)."""
        self.index.clear()

    @contextlib.contextmanager
    def pin(self, keys: Iterable[str]) -> Iterator[None]:
        """Within the block, the entries of ``keys`` are never evicted (by any process).

        A pin of a process that dies ends with it.
        """
        token = self.index.pin([validate_key(k) for k in keys])
        try:
            yield
        finally:
            self.index.unpin(token)

    def evict(self, key: str) -> bool:
        """Remove ``key``'s local entry (never its source); True if there was one."""
        self._path(key)
        return self.index.remove(key) is not None

    def entries(self) -> list[Entry]:
        """The index's entries, least recently used first."""
        return self.index.entries()

    def prune(self) -> dict[str, Any]:
        """Tidy the directory: what crashes and outside edits left, and what is over budget.

        Drops index rows whose file is gone or was altered (or that describe no entry),
        removes files that are no entry (orphans: a process killed between publishing and
        recording; links planted by hand), temporaries of dead processes, content copies no
        entry uses, expired leases and empty directories, then evicts down to the budget. The
        cache directory belongs to the cache: any other file in it is an orphan. The tree is
        walked by directory descriptors and never through a link. In a shared cache, files of
        other users stay (theirs to remove).

        Returns:
            ``{"dropped", "orphans", "temporaries", "objects", "evicted"}``: what went.
        """
        from hashsync.atomic import TMP_MARK, is_internal_name

        dropped, _ = self.index.reconcile()
        root = self.storage.root
        temporaries: list[str] = []
        orphans: list[str] = []
        objects = 0

        def remove(name: str, dir_fd: int) -> bool:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, PermissionError):
                return False  # gone meanwhile, or another user's in a shared cache
            return True

        def stale(dir_fd: int, real: Path) -> list[str]:
            removed = cleanup_stale_temporaries(fd_path(dir_fd, real))
            return [str(real / p.name) for p in removed]

        with self.index.transaction() as db:
            known = {k for (k,) in db.execute("SELECT key FROM entries").fetchall()}
            with self.tree.opened_root() as root_fd:
                for dirpath, dirs, files, dir_fd in os.fwalk(".", dir_fd=root_fd):
                    rel = dirpath[2:]  # "./a/b" -> "a/b"
                    if not rel:
                        dirs[:] = [d for d in dirs if d != META_DIR]
                    for name in list(dirs):
                        # fwalk lists a link to a directory with the directories (and never
                        # enters it): it is no entry either.
                        try:
                            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISLNK(st.st_mode):
                            dirs.remove(name)
                            if remove(name, dir_fd):
                                orphans.append(f"{rel}/{name}" if rel else name)
                    real = root.joinpath(*rel.split("/")) if rel else root
                    if any(TMP_MARK in name for name in files):
                        temporaries += stale(dir_fd, real)
                    for name in files:
                        if is_internal_name(name):
                            continue
                        key = f"{rel}/{name}" if rel else name
                        if key not in known and remove(name, dir_fd):
                            orphans.append(key)
            used = {d for (d,) in db.execute("SELECT DISTINCT digest FROM entries WHERE linked")}
            try:
                objects_fd = self.tree.open_dir([META_DIR, "objects"])
            except OSError:
                objects_fd = None
            if objects_fd is not None:
                try:
                    for bucket in os.listdir(objects_fd):
                        try:
                            bucket_fd = os.open(
                                bucket, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                dir_fd=objects_fd,
                            )  # fmt: skip
                        except OSError:
                            remove(bucket, objects_fd)  # a link or a file: no bucket
                            continue
                        try:
                            stale(bucket_fd, self.index.objects / bucket)
                            for name in os.listdir(bucket_fd):
                                if is_internal_name(name) or name in used:
                                    continue
                                if remove(name, bucket_fd):
                                    objects += 1
                        finally:
                            os.close(bucket_fd)
                finally:
                    os.close(objects_fd)
        self._break_stale_leases()
        self.tree.remove_empty_dirs(skip=META_DIR)
        evicted = self.index.enforce(self.max_size_bytes)
        self.index.reconcile()
        return {
            "dropped": dropped,
            "orphans": orphans,
            "temporaries": temporaries,
            "objects": objects,
            "evicted": evicted,
        }

    def _break_stale_leases(self) -> None:
        try:
            leases_fd = self.tree.open_dir([META_DIR, "leases"])
        except OSError:
            return
        try:
            where = fd_path(leases_fd, self.index.meta / "leases")
            for name in os.listdir(leases_fd):
                try:
                    st = os.stat(name, dir_fd=leases_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=leases_fd)  # a link: never read through
                    continue
                # Entering and leaving a lease breaks it if its holder is dead or expired.
                with contextlib.suppress(StorageUnavailable, OSError):
                    with KeyLock(where / name, lock_path=where / name, timeout=0.0,
                                 stale_after=60.0):  # fmt: skip
                        pass
        finally:
            os.close(leases_fd)

    def verify(self, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Re-hash every entry (BLAKE3, through the hash state cache) and drop corrupt ones.

        Unchanged files are not read again (the hash state cache knows them by device, inode,
        size, mtime and ctime); a file whose bytes differ from what was published is removed,
        so the next ``get`` fetches it again. An entry behind a link is corrupt too: its row
        goes, and nothing is removed through the link.

        Returns:
            ``{"checked": N, "corrupt": [keys]}``.
        """
        # The entries first: one published while the scan runs is not judged by a listing
        # that could not see it.
        entries = self.index.entries()
        listing = hashsync.scan(
            self.storage.root,
            algorithm="blake3",
            filters=[("exclude", f"{META_DIR}/*")],
            progress=progress,
        )
        corrupt: list[str] = []
        for entry in entries:
            found = listing.find(entry.key)
            if found is not None and found.size == entry.size and found.digest == entry.digest:
                continue
            with self.index.transaction() as db:
                now = self.index.lookup(entry.key)
                if now is None or (now.ino, now.mtime_ns, now.digest) != (
                    entry.ino,
                    entry.mtime_ns,
                    entry.digest,
                ):
                    continue  # replaced (or removed) since the snapshot: not what was checked
                gone = self.index._remove(db, entry.key)
                corrupt.append(entry.key)
                if gone is not None and gone.linked:
                    # Its bytes changed, so did the copy's (one inode): no one may share it.
                    self.index.unlink_object(gone)
        return {"checked": len(entries), "corrupt": corrupt}

    def close(self) -> None:
        """Flush this process's counters and close this thread's index connection."""
        counts = self._take_counts()
        if any(counts.values()):
            with contextlib.suppress(Exception), self.index.transaction() as db:
                self.index.add_counts(db, counts)
        self.index.close()


class LocalCache(_IndexedCache, WriteableCache):
    """A local directory of files put there by the program, kept within a byte budget.

    Args:
        storage: The directory (a LocalStorage, or a path for a SimpleLocalStorage).
        max_size_bytes: Byte budget (default ``$HASHSYNC_CACHE_SIZE_BYTES``, else 128 GiB);
            least recently used entries are evicted after every insertion.
        shared: A cache its group writes (multi-user machines): directories group-writable
            and sticky, entries of other users hashed before they are served. Otherwise the
            directory must be the user's alone (``PermissionDenied`` if others can write it).
        dedup: Store identical content once, through hard links.
    """

    def __init__(
        self,
        storage: LocalStorage | str | os.PathLike[str],
        *,
        max_size_bytes: int | None = None,
        shared: bool = False,
        dedup: bool = True,
    ) -> None:
        super().__init__(storage, max_size_bytes=max_size_bytes, shared=shared, dedup=dedup)

    def get(self, key: str) -> Path:
        """Return the path of ``key``'s entry.

        Raises:
            NotFound: Nothing was put under ``key`` (or it was evicted, or altered on disk).
        """
        path = self._path(key)
        entry = self._intact(key, path)
        if entry is None:
            self._count("misses")
            raise NotFound(errno.ENOENT, f"key {key!r} is not in {self!r}")
        return self._hit(entry, path)

    def put(self, key: str, file: str | os.PathLike[str]) -> Path:
        """Copy ``file`` into the cache as ``key`` (atomically); return the entry's path.

        Raises:
            NotFound: ``file`` does not exist.
            FileChanged: ``file`` changed while it was copied.
            InvalidArgument: It is larger than the whole budget.
        """
        path = self._path(key)
        source = _source_file(file)
        inbox = _Inbox(self, key, "put")
        receive_file(inbox, key, source)
        return path

    def delete(self, key: str) -> None:
        """Remove ``key``'s entry.

        Raises:
            NotFound: The key is not in the cache.
        """
        self._path(key)
        if self.index.remove(key) is None:
            raise NotFound(errno.ENOENT, f"key {key!r} is not in {self!r}")


class CopyToLocalCache(_IndexedCache):
    """Local copies of files from a list of storage tiers, verified, revalidated, in budget.

    ``get(key)`` serves the local copy while its source still has the same version (asked at
    most every ``max_age`` seconds), and otherwise fetches it from the first tier that has
    the key (``prefer="first"``: e.g. a shared network share, then S3) or from the tier
    whose copy is newest (``prefer="newest"``). A copy is published under its key's path only
    after its size and hash were verified, through a temporary file and a rename. Eight
    processes asking for one key download it once (a lease file, refreshed while the
    download runs); if the lease cannot be had (a holder that hangs, a filesystem where
    exclusive creation does not work) each downloads for itself, and the result is still
    one correct entry.

    Args:
        read_storages: The tiers, in order (a single storage is accepted too).
        local_storage: Where entries live (a LocalStorage or a path); default
            ``$HASHSYNC_CACHE_DIR/caches/default``.
        prefer: ``"first"`` or ``"newest"``.
        max_size_bytes: Byte budget (``$HASHSYNC_CACHE_SIZE_BYTES``, else 128 GiB).
        num_workers: Threads of :meth:`get_many` (``$HASHSYNC_NUM_WORKERS``, else the CPUs).
        max_age: Seconds a served entry may go without asking its source; ``0`` asks on
            every ``get`` (one HEAD), ``None`` never asks again.
        offline: Serve only what is cached; ``NotFound`` otherwise (default
            ``$HASHSYNC_OFFLINE``).
        shared: A cache its group writes (multi-user machines): directories group-writable
            and sticky, entries of other users hashed before they are served. Otherwise the
            directory must be the user's alone (``PermissionDenied`` if others can write it).
        locking: Use lease files against duplicate downloads (correctness never needs them).
        lock_timeout: Seconds to wait for another process's download of the same key before
            downloading it too.
        dedup: Store identical content once, through hard links.
    """

    def __init__(
        self,
        read_storages: Storage | Sequence[Storage],
        local_storage: LocalStorage | str | os.PathLike[str] | None = None,
        *,
        prefer: Literal["first", "newest"] = "first",
        max_size_bytes: int | None = None,
        num_workers: int | None = None,
        max_age: float | None = 0.0,
        offline: bool | None = None,
        shared: bool = False,
        locking: bool = True,
        lock_timeout: float = 600.0,
        dedup: bool = True,
    ) -> None:
        tiers = [read_storages] if isinstance(read_storages, Storage) else list(read_storages)
        if not tiers or not all(isinstance(s, Storage) for s in tiers):
            raise InvalidArgument("read_storages must be a non-empty list of storages")
        if prefer not in ("first", "newest"):
            raise InvalidArgument(f"prefer must be 'first' or 'newest', not {prefer!r}")
        self.read_storages = tiers
        self.prefer = prefer
        self._offline = offline
        if local_storage is None:
            local_storage = _settings.caches_dir() / "default"
        if not isinstance(local_storage, LocalStorage):
            local_storage = SimpleLocalStorage(local_storage, create=False)
        _refuse_overlap(tiers, local_storage)
        super().__init__(
            local_storage,
            max_size_bytes=max_size_bytes,
            num_workers=num_workers,
            max_age=max_age,
            shared=shared,
            locking=locking,
            lock_timeout=lock_timeout,
            dedup=dedup,
        )

    @property
    def offline(self) -> bool:
        """Whether only cached entries are served (the argument, else ``$HASHSYNC_OFFLINE``)."""
        return self._offline if self._offline is not None else _settings.offline()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.read_storages!r}, {self.storage!r})"

    # Subclasses map a cache key to (storage, key-at-that-storage) pairs.
    def _tiers(self, key: str) -> list[tuple[Storage, str]]:
        return [(storage, key) for storage in self.read_storages]

    def get(self, key: str) -> Path:
        """Return a local path with ``key``'s current content.

        Raises:
            NotFound: No tier has the key (offline: it is not cached).
            IntegrityError: Every download failed verification.
            StorageUnavailable: No tier could be reached and nothing is cached.
        """
        path = self._path(key)
        found = self._found(key)
        entry = found[0] if found is not None else None
        if found is not None:
            if self._still_current(*found, path):
                return self._hit(found[0], path)
        elif self.offline:
            self._count("misses")
            raise NotFound(errno.ENOENT, f"key {key!r} is not cached and HASHSYNC_OFFLINE is set")
        self._count("misses")
        return self._fetch(key, path, stale=entry)

    def _still_current(self, entry: Entry, st: os.stat_result, path: Path) -> bool:
        """Whether ``entry`` may be served: fresh enough, or confirmed by its source now.

        For a file another user wrote, neither the index's version nor its time of the last
        check counts (whoever wrote the file may have written them too): its content is
        compared with what the source names, once per version of the file and ``max_age``.
        """
        if self.offline:
            return True
        now = time.time_ns()
        trusted = self._trusted(st)
        if trusted:
            validated = entry.validated if entry.validated <= now else 0
        else:
            validated = self._source_checked.get(identity(st), (0, ""))[0]
        if self.max_age is None or now - validated < self.max_age * 1e9:
            return True
        tier = next(((s, k) for s, k in self._tiers(entry.key) if repr(s) == entry.source), None)
        if tier is None:
            return False  # its tier is no longer configured
        storage, source_key = tier
        try:
            current = storage.get_hash(source_key)
        except (StorageUnavailable, PermissionDenied) as exc:
            warnings.warn(
                f"serving cached {entry.key!r}: could not check it at {storage!r}: {exc}",
                HashsyncWarning,
                stacklevel=4,
            )
            return True
        except HashsyncError:
            # Gone there (look in the other tiers, or report it gone), or a source that
            # cannot name its version without a download (an HTTP server without ETags).
            return False
        if not trusted:
            same = self._file_has_hash(entry.key, st, current, storage)
            if same:
                if len(self._source_checked) > 4096:
                    self._source_checked.clear()
                self._source_checked[identity(st)] = (now, current)
            return same
        if entry.version is not None:
            same = entry.version == current
        else:
            same = _content_has_hash(path, current, storage)
        if same:
            self.index.validated(entry.key, now, None if entry.version else current)
        return same

    def _file_has_hash(self, key: str, st: os.stat_result, current: str, storage: Storage) -> bool:
        """Whether the file at ``key`` is still ``st`` and holds what the source's hash names."""
        if self._vouched.has(st, f"source:{current}"):
            return True
        try:
            fd = self.tree.open_file(key)
        except OSError:
            return False
        try:
            if identity(os.fstat(fd)) != identity(st):
                return False
            same = _content_has_hash(fd_path(fd, self._path(key)), current, storage)
            if same and identity(os.fstat(fd)) == identity(st):
                self._vouched.add(st, f"source:{current}")
                return True
            return False
        except (OSError, HashsyncError):
            return False
        finally:
            os.close(fd)

    def _fetch(self, key: str, path: Path, *, stale: Entry | None) -> Path:
        with self._lease(key) as waited:
            # Another process may have fetched it while we waited for the lease. (One that
            # finished just before we asked costs a second download of the same content.)
            entry = self._intact(key, path) if waited else None
            if entry is not None and (stale is None or entry.validated > stale.validated):
                return path
            return self._download(key, path)

    @contextlib.contextmanager
    def _lease(self, key: str) -> Iterator[bool]:
        """Hold ``key``'s download lease; yields whether another process held it first."""
        leases_fd = None
        if self.locking:
            with contextlib.suppress(OSError):
                leases_fd = self.tree.open_dir([META_DIR, "leases"], create=True)
        if leases_fd is None:
            # No locking, or no usable lease directory: correctness never needs the lease.
            yield False
            return
        try:
            with self._lease_in(key, leases_fd) as waited:
                yield waited
        finally:
            os.close(leases_fd)

    @contextlib.contextmanager
    def _lease_in(self, key: str, leases_fd: int) -> Iterator[bool]:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        try:
            there = os.stat(name, dir_fd=leases_fd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None and not stat.S_ISREG(there.st_mode):
            # Planted (a link, a FIFO): never read or touched through; without the lease if
            # it cannot go.
            try:
                os.unlink(name, dir_fd=leases_fd)
            except OSError:
                yield False
                return
        # Through the directory opened above: the lease's reads, renames and refreshes stay
        # in it whatever is renamed meanwhile.
        lease_file = fd_path(leases_fd, self.index.meta / "leases") / name
        lease = KeyLock(
            lease_file,
            timeout=self.lock_timeout,
            stale_after=60.0,
            refresh=10.0,
            lock_path=lease_file,
        )
        try:
            lease.__enter__()
        except StorageUnavailable:
            # Waited long enough: download too. The result is still one correct entry.
            warnings.warn(
                f"{key!r}: another process's download did not finish in "
                f"{self.lock_timeout:g} s; downloading it here too",
                HashsyncWarning,
                stacklevel=5,
            )
            yield True
            return
        try:
            yield lease.waited
        finally:
            lease.__exit__(None, None, None)

    def _download(self, key: str, path: Path) -> Path:
        tiers = self._tiers(key)
        if not tiers:
            raise NotFound(errno.ENOENT, f"no source for key {key!r} in {self!r}")
        if self.prefer == "newest" and len(tiers) > 1:
            dated: list[tuple[datetime.datetime, int, Storage, str]] = []
            for i, (storage, source_key) in enumerate(tiers):
                with contextlib.suppress(NotFound, StorageUnavailable, PermissionDenied):
                    dated.append((storage.get_last_modified(source_key), -i, storage, source_key))
            dated.sort(reverse=True)
            tiers = [(s, k) for _, _, s, k in dated] or tiers
        errors: list[HashsyncError] = []
        for storage, source_key in tiers:
            inbox = _Inbox(self, key, repr(storage))
            try:
                storage.copy(source_key, inbox)
            except NotFound as exc:
                errors.append(exc)
                continue
            except _CannotReplace:
                raise  # another tier would fail the same way
            except (StorageUnavailable, PermissionDenied) as exc:
                errors.append(exc)
                continue
            except PermissionError as exc:  # a local tier's file that this user cannot read
                errors.append(PermissionDenied(errno.EACCES, f"{storage!r}: {exc}"))
                continue
            return path
        # Nowhere to be had: a copy whose source says it is gone must not be served.
        if errors and all(isinstance(e, NotFound) for e in errors):
            self.index.remove(key)
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self._where()}")
        stale = self._intact(key, path)
        if stale is not None:
            warnings.warn(
                f"serving cached {key!r}: no tier could be reached ({errors[-1]})",
                HashsyncWarning,
                stacklevel=4,
            )
            return path
        raise errors[-1]

    def _where(self) -> str:
        return ", ".join(repr(s) for s in self.read_storages)


def _refuse_overlap(tiers: list[Storage], local: LocalStorage) -> None:
    """Refuse a tier that is the cache's own directory, or inside it, or around it.

    Publishing makes entries read-only hard links and ``prune`` removes what is not an entry:
    done to a tier, that would change or delete the source data.
    """
    here = local.location()
    for tier in tiers:
        there = tier.location()
        if here is None or there is None or here[0] != there[0]:
            continue
        if here[1].startswith(there[1]) or there[1].startswith(here[1]):
            raise InvalidArgument(
                f"{tier!r} and the cache directory {local!r} overlap; keep the cache elsewhere"
            )


def _content_has_hash(path: Path, current: str, storage: Storage) -> bool:
    """Whether the local file's content is what the source's hash ``current`` names."""
    return content_matches_hash(path, current, part_sizes=[storage.part_size])


class SynchronizedRemoteAndLocalCache(CopyToLocalCache, WriteableCache):
    """A local cache of one read-write remote: writes go to both, reads refresh from it.

    ``put`` uploads first and publishes the local copy only once the remote has it, so both
    hold the same version; ``delete`` removes both; ``get`` fetches again when the remote's
    hash differs from the local copy's (checked at most every ``max_age`` seconds).

    Args:
        remote_storage: The read-write remote (e.g. an S3Storage).
        local_storage: Where entries live (a LocalStorage or a path).
        max_size_bytes: Byte budget (``$HASHSYNC_CACHE_SIZE_BYTES``, else 128 GiB).
        **options: As :class:`CopyToLocalCache` (``max_age``, ``num_workers``, ...).
    """

    def __init__(
        self,
        remote_storage: Storage,
        local_storage: LocalStorage | str | os.PathLike[str] | None = None,
        *,
        max_size_bytes: int | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(remote_storage, ReadWriteStorage):
            raise InvalidArgument(f"{remote_storage!r} is read-only; use CopyToLocalCache")
        options.pop("prefer", None)
        super().__init__([remote_storage], local_storage, max_size_bytes=max_size_bytes, **options)
        self.remote_storage = remote_storage

    def put(self, key: str, file: str | os.PathLike[str]) -> Path:
        """Upload ``file`` as ``key``, then keep the same bytes locally; return the local path.

        Raises:
            NotFound: ``file`` does not exist.
            FileChanged: ``file`` changed while it was read.
            StorageUnavailable: The remote could not be reached (nothing changed locally).
        """
        path = self._path(key)
        source = _source_file(file)
        size = source.stat().st_size
        if size > self.max_size_bytes:
            raise InvalidArgument(
                f"{key!r} ({size} bytes) is larger than the cache's budget of "
                f"{self.max_size_bytes} bytes; nothing was uploaded"
            )
        self.remote_storage.copy_from(key, _SingleFile(source))
        # From here the remote holds the new version: a local copy of the old one must go
        # whatever happens next.
        try:
            version = self.remote_storage.get_hash(key)
            # The local entry is the remote's new version: taken from the local file (the
            # same bytes, no download) and kept only if it is what the remote now names.
            inbox = _Inbox(self, key, repr(self.remote_storage))
            receive_file(inbox, key, source)
        except BaseException:
            self.index.remove(key)
            raise
        if _content_has_hash(path, version, self.remote_storage):
            self.index.validated(key, time.time_ns(), version)
        else:
            self.index.remove(key)  # changed after the upload: the next get fetches it
        return path

    def delete(self, key: str) -> None:
        """Remove ``key`` from the remote and from the local cache.

        Raises:
            NotFound: Neither has the key.
        """
        self._path(key)
        found = self.index.remove(key) is not None
        try:
            self.remote_storage.delete(key)
        except NotFound:
            if not found:
                raise


def _source_file(file: str | os.PathLike[str]) -> Path:
    """The regular file to ``put``, or NotFound / InvalidArgument / PermissionDenied."""
    source = Path(file).expanduser().absolute()
    try:
        st = source.stat()
    except FileNotFoundError:
        raise NotFound(errno.ENOENT, f"no such file to put: {str(source)!r}") from None
    except PermissionError as exc:
        raise PermissionDenied(
            errno.EACCES, f"cannot read {str(source)!r}: {exc.strerror}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"can only put a regular file, not {str(source)!r}")
    if not os.access(source, os.R_OK):
        raise PermissionDenied(errno.EACCES, f"cannot read {str(source)!r}: permission denied")
    return source


class _SingleFile(LocalStorage):
    """One local file, under whatever key an upload names it."""

    def __init__(self, file: Path) -> None:
        super().__init__(file.parent, create=False, hash_state=False)
        self._file = file

    def path(self, key: str) -> Path:
        return self._file


def _read_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads creating
    # files; Linux shows it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK
