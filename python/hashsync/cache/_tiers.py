"""The caches that copy files in from tiers: CopyToLocalCache, SynchronizedRemoteAndLocalCache."""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import stat
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from hashsync.atomic import KeyLock
from hashsync.cache import _settings
from hashsync.cache._api import WriteableCache
from hashsync.cache._index import Entry
from hashsync.cache._indexed import CannotReplace, Inbox, IndexedCache, file_to_put
from hashsync.cache._tree import META_DIR, fd_path, identity
from hashsync.errors import (
    HashsyncError,
    HashsyncWarning,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from hashsync.storage.base import ReadWriteStorage, Storage
from hashsync.storage.local import (
    LocalStorage,
    SimpleLocalStorage,
    SingleFileStorage,
    receive_file,
)
from hashsync.verify import content_matches_hash

__all__ = ["CopyToLocalCache", "SynchronizedRemoteAndLocalCache"]


class CopyToLocalCache(IndexedCache):
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
        num_workers: Threads of :meth:`get_many` (``$HASHSYNC_NUM_WORKERS``, else 64).
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
            inbox = Inbox(self, key, repr(storage))
            try:
                storage.copy(source_key, inbox)
            except NotFound as exc:
                errors.append(exc)
                continue
            except CannotReplace:
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
            raise NotFound(errno.ENOENT, self._missing(key))
        stale = self._intact(key, path)
        if stale is not None:
            warnings.warn(
                f"serving cached {key!r}: no tier could be reached ({errors[-1]})",
                HashsyncWarning,
                stacklevel=4,
            )
            return path
        raise errors[-1]

    def _missing(self, key: str) -> str:
        """What a missing ``key`` is called in the error: where it was looked for."""
        return f"key {key!r} not found in {', '.join(repr(s) for s in self.read_storages)}"


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
        source = file_to_put(file)
        size = source.stat().st_size
        if size > self.max_size_bytes:
            raise InvalidArgument(
                f"{key!r} ({size} bytes) is larger than the cache's budget of "
                f"{self.max_size_bytes} bytes; nothing was uploaded"
            )
        self.remote_storage.copy_from(key, SingleFileStorage(source))
        # From here the remote holds the new version: a local copy of the old one must go
        # whatever happens next.
        try:
            version = self.remote_storage.get_hash(key)
            # The local entry is the remote's new version: taken from the local file (the
            # same bytes, no download) and kept only if it is what the remote now names.
            inbox = Inbox(self, key, repr(self.remote_storage))
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
