"""The indexed cache core: IndexedCache (entries verified, indexed, in budget), its Inbox sink."""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import hashsync
from hashsync._folding import check_keys
from hashsync.atomic import KeyLock, cleanup_stale_temporaries, full_fsync, temporary_path
from hashsync.cache import _settings
from hashsync.cache._api import Cache, CacheStats
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
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from hashsync.storage.base import validate_key
from hashsync.storage.local import LocalStorage, SimpleLocalStorage
from hashsync.storage.sink import Check, Fill, Sink

__all__ = ["CannotReplace", "Inbox", "IndexedCache", "file_to_put"]

# Entries are read-only: a shared content-addressed copy edited through one key would change
# every key that links to it.
_ENTRY_MODE = 0o444

_check_cache_key = check_key


class CannotReplace(PermissionDenied):
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


class Inbox(Sink):
    """The sink a source downloads one cache entry into.

    The source fills and verifies the temporary file as for any sink; the cache's index then
    publishes it (dedup, rename, budget) instead of a plain rename. Whatever key the source
    names (a tier may store the entry under another), the file becomes this entry.
    """

    def __init__(self, cache: IndexedCache, key: str, source: str) -> None:
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

    def _cannot_replace(self, dir_fd: int, name: str) -> CannotReplace:
        try:
            owner = owner_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid)
        except OSError:
            owner = "another user"
        return CannotReplace(
            errno.EPERM,
            f"cannot replace the cached {self._key!r} in {self._cache!r}: its file belongs to "
            f"{owner}, and in a shared cache only a file's owner (or root) may replace it",
        )


class IndexedCache(Cache):
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

    def _check_spellings(self, keys: list[str]) -> None:
        folding = self.storage.name_folding()
        if folding:
            check_keys(keys, folding, repr(self))

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
            full_fsync(fd)
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
            folding=self.storage.name_folding(),
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


def file_to_put(file: str | os.PathLike[str]) -> Path:
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
