"""Storages on the local filesystem.

Every write is atomic (see :mod:`hashsync.atomic`): a per-process temporary file in
the destination directory is filled, fsynced and renamed into place, so a reader never sees
a half-written file and an interrupted copy leaves only a temporary that a later write into
the same directory removes. Conditional writes take a per-key lock file, which makes
compare-and-swap exact between processes, on NFS as well.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import datetime
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import hashsync
from hashsync._folding import Folding, probe
from hashsync.atomic import (
    AtomicFile,
    KeyLock,
    cleanup_listed,
    cleanup_once,
    commit,
    temporary_path,
)
from hashsync.errors import (
    HashsyncError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    UnsafePath,
)
from hashsync.storage._files import (
    digest_memo,
    link_below,
    open_nofollow,
    receive_file,
    stat_or_none,
)
from hashsync.storage.base import (
    ObjectInfo,
    ReadOnlyStorage,
    ReadWriteStorage,
    Segment,
    Storage,
    SyncListing,
    validate_key,
    validate_prefix,
)
from hashsync.storage.sink import Check, Fill, Sink, as_sink

__all__ = [
    "FilesystemStorage",
    "LocalStorage",
    "PartitioningLocalStorage",
    "ReadOnlyFilesystemStorage",
    "SimpleLocalStorage",
    "SingleFileStorage",
    "TemporaryLocalStorage",
    "link_below",
    "normalize_hash",
    "open_nofollow",
    "receive_file",
    "source_file",
    "stat_or_none",
    "transfer_through_staging",
]

_WRITE_MODES = frozenset("wxa+")


def _utc(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)


def normalize_hash(value: str) -> str:
    """Return ``value`` as :meth:`Storage.get_hash` spells hashes: lowercase, no quotes."""
    if not isinstance(value, str):
        raise InvalidArgument(f"hash must be a str, not {type(value).__name__}: {value!r}")
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def source_file(source: object, key: str) -> Path:
    """The local file behind ``source``'s ``key``, checked to be a regular file.

    No path component may be a symbolic link, except the links that a listing of a storage
    following links (:attr:`FilesystemStorage.follow_symlinks`) went through.
    """
    if not isinstance(source, FilesystemStorage):
        raise InvalidArgument(
            f"source must be a LocalStorage (or ReadOnlyFilesystemStorage), not {source!r}"
        )
    path = source.path(key)
    where = link_below(source.root, path, source._links_readable)
    if where is not None:
        raise UnsafePath(
            errno.ELOOP,
            f"refusing to read key {key!r} of {source!r}: {where!r} is a symbolic link "
            "that the listing did not follow (it was not a link then, or links are not "
            "followed)",
        )
    if os.path.islink(path):
        # A link the listing followed: read what it points to (readers refuse a link in the
        # last component, so that nothing else is ever read through one).
        path = Path(os.path.realpath(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(errno.ENOENT, f"key {key!r} not found in {source!r}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotFound(errno.ENOENT, f"key {key!r} not found in {source!r} (not a file)")
    return path


class FilesystemStorage(Storage):
    """A storage whose files are on this machine's filesystem, below :attr:`root`.

    The base of the writable and the read-only filesystem storages, with the reading
    operations they share; generic code that needs files in place (a cache serving them
    where they are, a sync reading a local source) asks for this type.
    """

    root: Path
    part_size: int
    hash_state: bool
    hash_state_dir: Path | None
    is_local = True
    # Whether scans may remove stale temporaries (never in a read-only storage).
    _reaps_temporaries = False
    #: Whether listings follow symbolic links (files and directories, loops detected) and
    #: reads pass through the links they followed. Off by default: a storage used as a
    #: destination or a cache never looks through links; a sync follows a local source's.
    follow_symlinks = False
    # The links (relative paths) that listings followed; None until a listing ran. Following
    # is decided at listing time: a path swapped for a link afterwards is refused on read.
    _followed_links: frozenset[str] | None = None
    _folding: Folding | None = None

    def local_path(self, key: str) -> Path:
        """The file that holds ``key`` (see :meth:`path`)."""
        return self.path(key)

    def with_symlinks_followed(self, follow: bool) -> Any:
        """This storage, or a copy of it that follows symbolic links (or not) when listing.

        See :meth:`Storage.with_symlinks_followed`.
        """
        if follow == self.follow_symlinks:
            return self
        twin = copy.copy(self)
        twin.follow_symlinks = follow
        twin._followed_links = None
        return twin

    @property
    def _links_readable(self) -> frozenset[str] | None:
        """The links a read may pass through: none unless following, then what was listed."""
        if not self.follow_symlinks:
            return frozenset()
        return self._followed_links  # None: nothing listed yet, so every link

    def _links_to(self, directory: str) -> list[str]:
        """The symbolic links among the components of ``directory`` (relative, ``/``-ended)."""
        links: list[str] = []
        parts = [p for p in directory.split("/") if p]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if os.path.islink(self.root.joinpath(*parts[:i])):
                links.append(rel)
        return links

    def _record_links(
        self, listing: hashsync.Listing, prefix: str = "", passed: Sequence[str] = ()
    ) -> list[str]:
        """Note what a listing (of the directory ``prefix``) did with links.

        ``passed``: links on the way to where the listing started, followed too.

        Returns:
            The links it skipped (relative to the root).
        """
        if not self.follow_symlinks:
            return [prefix + link for link in listing.symlinks]
        met = frozenset([*(prefix + link for link in listing.symlinks), *passed])
        self._followed_links = met if self._followed_links is None else self._followed_links | met
        return []

    def name_folding(self) -> Folding:
        """How this storage's directory compares file names, asked of it once.

        Case-insensitive or Unicode-normalising directories (macOS's APFS and HFS+, SMB,
        exFAT) hold one file for keys that differ only so; syncs and caches refuse such
        pairs instead of letting one replace the other (:class:`~hashsync.errors.NameCollision`).
        """
        if self._folding is None:
            self._folding = probe(self.root)
        return self._folding

    def location(self) -> tuple[tuple[str, ...], str] | None:
        """``(("file",), "<resolved root>/")``: overlaps are judged on the real paths."""
        return ("file",), self.root.resolve().as_posix().rstrip("/") + "/"

    def list_for_sync(
        self,
        rules: Any,
        *,
        checksum: bool = True,
        progress: Callable[[int, int], object] | None = None,
        must_exist: bool = False,
        reap_temporaries: bool = True,
        algorithm: str | None = None,
        segment: Segment | None = None,
    ) -> SyncListing:
        """Scan the root (or one segment of it) in Rust, with digests from the hash state cache.

        Digests are ETags with :attr:`part_size` parts, or of ``algorithm`` when one is given
        (a sync from a hub compares SHA-256).

        Stale temporaries of killed writers that the scan comes across are removed (in
        writable storages). See :meth:`Storage.list_for_sync`.

        Raises:
            NotFound: ``must_exist`` and the root does not exist.
        """
        if not self.root.exists():
            if must_exist:
                raise NotFound(errno.ENOENT, "the directory does not exist", str(self.root))
            return SyncListing([])
        segment = (segment or Segment()).check()
        listing = self._scan_tree(
            self.root,
            rules,
            checksum=checksum,
            progress=progress,
            algorithm=algorithm,
            subdir=segment.prefix.rstrip("/") or None,
            recursive=not segment.shallow,
        )
        if listing.temporaries and self._reaps_temporaries and reap_temporaries:
            cleanup_listed(self.root, listing.temporaries)
        # A segment's scan starts below the links on its way (a Dask task's "latest/" with
        # latest -> ckpt-123): the walk never meets them, yet reads pass through them.
        passed = self._links_to(segment.prefix) if self.follow_symlinks else []
        return SyncListing(
            listing,
            errors=list(listing.errors),
            links_skipped=self._record_links(listing, passed=passed),
        )

    def _relpath(self, key: str) -> str:
        """Where ``key`` lives, relative to the root (``/``-separated)."""
        return key

    def _key_of(self, relpath: str) -> str | None:
        """The key stored at ``relpath``, or None if that file holds no key."""
        return relpath

    def path(self, key: str) -> Path:
        """Return the filesystem path of ``key`` (which need not exist yet).

        Args:
            key: The object's key.

        Raises:
            InvalidArgument: The key is not valid.
        """
        return self.root.joinpath(*self._relpath(validate_key(key)).split("/"))

    def _stat(self, key: str) -> tuple[Path, os.stat_result]:
        path = self.path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None
        except NotADirectoryError:
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None
        except PermissionError as exc:
            raise PermissionDenied(
                errno.EACCES, f"cannot read key {key!r} in {self!r}: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r} (not a file)")
        return path, st

    def exists(self, key: str) -> bool:
        """Return whether a file has this key."""
        try:
            self._stat(key)
        except NotFound:
            return False
        return True

    def get_size(self, key: str) -> int:
        """Return the file's size in bytes.

        Raises:
            NotFound: No file has this key.
        """
        return self._stat(key)[1].st_size

    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return the file's mtime as a UTC-aware datetime.

        Raises:
            NotFound: No file has this key.
        """
        return _utc(self._stat(key)[1].st_mtime_ns)

    def get_hash(self, key: str) -> str:
        """Return the S3 ETag the file gets when uploaded with :attr:`part_size` parts.

        Digests are remembered per process and keyed on device, inode, size, mtime and
        ctime, so asking again for an unchanged file does not read it again.

        Raises:
            NotFound: No file has this key.
        """
        path, st = self._stat(key)
        return self._digest(path, st, key)

    def _digest(self, path: Path, st: os.stat_result, key: str) -> str:
        cached = digest_memo.get(st, self.part_size)
        if cached is not None:
            return cached
        try:
            digest = hashsync.etag(path, part_size=self.part_size)
        except FileNotFoundError:
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None
        digest_memo.put(st, self.part_size, digest)
        return digest

    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield the files whose keys start with ``prefix``, in key order.

        Hashes come from :func:`hashsync.scan` with the hash state cache, so files that have
        not changed since an earlier listing are not read again.

        Args:
            prefix: Key prefix to filter on.
            hashes: Compute :attr:`ObjectInfo.hash`; ``False`` leaves it ``None`` and reads
                no file content.

        Yields:
            One :class:`ObjectInfo` per file.

        Raises:
            HashsyncError: Some files could not be listed or hashed (the message names them).
        """
        validate_prefix(prefix)
        entries = sorted(self._scan(prefix, hashes), key=lambda info: info.key)
        yield from (info for info in entries if info.key.startswith(prefix))

    def _scan_root(self, prefix: str) -> tuple[Path, str]:
        """The directory to scan for ``prefix`` and the key prefix of what it holds."""
        directory = prefix.rpartition("/")[0]
        if not directory:
            return self.root, ""
        return self.root.joinpath(*directory.split("/")), directory + "/"

    def _scan_tree(
        self,
        base: Path,
        rules: Any,
        *,
        checksum: bool,
        progress: Callable[[int, int], object] | None = None,
        algorithm: str | None = None,
        subdir: str | None = None,
        recursive: bool = True,
    ) -> hashsync.Listing:
        """The Rust scan of ``base`` with this storage's part size and hash state options."""
        return hashsync.scan(
            base,
            algorithm=(algorithm or "etag") if checksum else None,
            part_size=self.part_size,
            filters=list(rules),
            state=self.hash_state,
            state_dir=self.hash_state_dir,
            progress=progress,
            subdir=subdir,
            recursive=recursive,
            follow_symlinks=self.follow_symlinks,
        )

    lists_by_level = True

    def list_level(self, prefix: str = "") -> tuple[int, builtins.list[str]]:
        """Count the files directly in the directory ``prefix`` and name its subdirectories.

        Symbolic links count as what they point to when the storage follows them, else as
        neither (a scan skips them); see :meth:`Storage.list_level`.
        """
        Segment(prefix).check()
        files = 0
        subdirs = []
        follow = self.follow_symlinks
        try:
            with os.scandir(self.root / prefix if prefix else self.root) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=follow):
                            subdirs.append(prefix + entry.name + "/")
                        elif entry.is_file(follow_symlinks=follow):
                            files += 1
                    except OSError:
                        files += 1  # let the scan of the segment report it
        except (FileNotFoundError, NotADirectoryError):
            return 0, []
        return files, sorted(subdirs)

    def count_keys(self, prefix: str, limit: int) -> int:
        """Count the files under the directory ``prefix``, stopping at ``limit``."""
        Segment(prefix).check()
        n = 0
        stack = [self.root / prefix if prefix else self.root]
        while stack and n < limit:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        # Bounded by ``limit`` even through a link loop.
                        if entry.is_dir(follow_symlinks=self.follow_symlinks):
                            stack.append(Path(entry.path))
                        else:
                            n += 1
            except OSError:
                continue
        return min(n, limit)

    def _scan(self, prefix: str, hashes: bool) -> builtins.list[ObjectInfo]:
        base, key_prefix = self._scan_root(prefix)
        if not base.is_dir():
            return []
        listing = self._scan_tree(base, (), checksum=hashes)
        self._record_links(listing, key_prefix)
        errors = listing.errors
        if errors:
            shown = "; ".join(f"{p}: {r}" for p, r in errors[:5])
            raise HashsyncError(f"could not list {len(errors)} entries of {self!r}: {shown}")
        result = []
        for entry in listing:
            key = self._key_of(key_prefix + entry.path)
            if key is not None:
                result.append(ObjectInfo(key, entry.size, _utc(entry.mtime_ns), entry.digest))
        return result

    def _open_for_read(self, key: str, mode: str, **kwargs: Any) -> IO[Any]:
        path, _ = self._stat(key)
        return open(path, mode, **kwargs)  # noqa: SIM115 - the caller owns the file

    def copy(self, key: str, destination: Sink) -> None:
        """Copy the file ``key`` into ``destination`` atomically, keeping its mtime.

        Raises:
            NotFound: No file has this key.
            FileChanged: The file changed while it was being copied.
        """
        sink = as_sink(destination)
        if isinstance(sink, LocalStorage):
            # Its copy_from knows when the file is already there (the same file).
            sink.copy_from(key, self)
            return
        validate_key(key)
        receive_file(sink, key, source_file(self, key))


class LocalStorage(FilesystemStorage, ReadWriteStorage, Sink):
    """A writable storage on the local filesystem; the base of the local variants.

    Args:
        root: The directory files live under; created if missing.
        part_size: The part size :meth:`get_hash` computes ETags with; use the part size of
            the S3Storage you compare with (both default to 8 MiB).
        hash_state: Use the on-disk hash state cache in :meth:`list`.
        hash_state_dir: Where that cache lives (default: :func:`hashsync.default_cache_dir`).
        lock_timeout: Seconds a conditional write waits for another writer's lock.
        follow_symlinks: List through symbolic links below ``root`` (see
            :attr:`follow_symlinks`); writes never go through one either way.
        create: Create ``root`` now. ``False`` defers that to :meth:`create_root` or the
            first write (a sync creates its destination only once the source is listed).

    Writes never go through a symbolic link below ``root`` (a linked directory or a linked
    file at the key's path): such a key is refused with :class:`~hashsync.errors.UnsafePath`,
    because listings skip links, so what is behind one is a place the caller cannot see.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        part_size: int = hashsync.DEFAULT_PART_SIZE,
        hash_state: bool = True,
        hash_state_dir: str | os.PathLike[str] | None = None,
        lock_timeout: float = 60.0,
        follow_symlinks: bool = False,
        create: bool = True,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.follow_symlinks = follow_symlinks
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgument(f"storage root {str(self.root)!r} is not a directory")
        if create:
            self.create_root()
        self.part_size = part_size
        self.hash_state = hash_state
        self.hash_state_dir = None if hash_state_dir is None else Path(hash_state_dir)
        self.lock_timeout = lock_timeout

    _reaps_temporaries = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def transfer_from(self, key: str, source: Storage) -> None:
        """Make ``key`` here hold ``source``'s ``key``: ``source.copy`` (a download, or a copy)."""
        source.copy(key, self)

    def prepare_destination(self) -> None:
        """Create the root directory (see :meth:`create_root`)."""
        self.create_root()

    def create_root(self) -> None:
        """Create the root directory (and its parents) if it does not exist.

        Raises:
            NotADirectory: The root or one of its parents is a file.
            PermissionDenied: The directory may not be created there.
            HashsyncError: Any other reason it cannot be created (e.g. under ``/proc``).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectory(
                errno.ENOTDIR, f"cannot create {str(self.root)!r}: a parent path is a file"
            ) from None
        except PermissionError as exc:
            raise PermissionDenied(
                errno.EACCES, f"cannot create {str(self.root)!r}: {exc.strerror}"
            ) from None
        except OSError as exc:
            raise HashsyncError(f"cannot create {str(self.root)!r}: {exc.strerror}") from None

    # -- writing -----------------------------------------------------------------------

    def _refuse_links(self, key: str, final: Path) -> None:
        """Refuse to write ``final`` if a path component below the root is a symbolic link.

        ``mkdir(parents=True)``, ``open`` and ``rename`` all follow a linked directory, so a
        key under ``sub/`` with ``sub -> /elsewhere`` would land outside the storage; a linked
        file would be replaced by a regular file the next listing never saw before.
        """
        where = link_below(self.root, final)
        if where is not None:
            raise UnsafePath(
                errno.ELOOP,
                f"refusing to write key {key!r} in {self!r}: {where!r} is a symbolic link "
                "(hashsync never writes through links; replace it with a directory or file)",
            )

    def _check_writable(self) -> None:
        """Hook for subclasses that can stop accepting writes (a closed temporary store)."""

    def _file_above(self, final: Path) -> str:
        """The path (relative to the root) of the first non-directory above ``final``."""
        parts = final.relative_to(self.root).parts[:-1]
        for i in range(1, len(parts) + 1):
            if not self.root.joinpath(*parts[:i]).is_dir():
                return "/".join(parts[:i])
        return "/".join(parts)

    def receive(self, key: str, fill: Fill, *, check: Check | None = None) -> None:
        """Write ``key`` atomically: ``fill`` writes a temporary path, which then replaces it.

        The :class:`~hashsync.storage.sink.Sink` protocol: other storages download into a
        LocalStorage through it. ``fill`` creates the file
        at the path it gets (and may set its mtime) and may return the version it wrote, as
        the source's ``get_hash`` names it (the caches record it); if it raises, the
        temporary is removed and nothing changes. ``check``, called with the final path
        under the key's lock right before the rename, may raise to cancel the write.
        """
        self._check_writable()
        final = self.path(key)
        self._refuse_links(key, final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectory(
                errno.ENOTDIR,
                f"cannot write key {key!r} in {self!r}: {self._file_above(final)!r} is a file "
                "where the key needs a directory (a sync with --delete replaces it)",
            ) from None
        except PermissionError as exc:
            raise PermissionDenied(
                errno.EACCES, f"cannot write key {key!r} in {self!r}: {exc.strerror}"
            ) from None
        if final.is_dir():
            # Found before anything is fetched; a rename onto it would fail naming the
            # temporary file instead.
            raise IsADirectory(
                errno.EISDIR,
                f"cannot write key {key!r} in {self!r}: it is a directory there (a sync with "
                "--delete replaces it if it holds nothing the sync did not list)",
            )
        cleanup_once(final.parent)
        tmp = temporary_path(final)
        try:
            fill(tmp)
            if check is None:
                commit(tmp, final)
            else:
                with KeyLock(final, timeout=self.lock_timeout):
                    check(final)
                    commit(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _import(self, key: str, src: Path, *, check: Check | None = None) -> None:
        final = self.path(key)
        with contextlib.suppress(OSError):
            if os.path.samefile(src, final) and check is None:
                return
        receive_file(self, key, src, check=check)

    def copy_from(self, key: str, source: FilesystemStorage) -> None:
        """Copy ``source``'s file ``key`` here atomically, keeping its mtime.

        Raises:
            NotFound: ``source`` has no such key.
            FileChanged: The file changed while it was being copied.
        """
        validate_key(key)
        self._import(key, source_file(source, key))

    def delete(self, key: str) -> None:
        """Delete the file ``key`` (and directories that become empty).

        Raises:
            NotFound: No file has this key.
        """
        path, _ = self._stat(key)
        where = link_below(self.root, path)
        if where is not None:
            raise UnsafePath(
                errno.ELOOP,
                f"refusing to delete key {key!r} in {self!r}: {where!r} is a symbolic link",
            )
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        # Empty directories left behind would pile up (PartitioningLocalStorage creates two
        # levels per key); rmdir fails harmlessly on a directory someone just wrote into.
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _current_hash(self, final: Path, key: str) -> str | None:
        try:
            st = final.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._digest(final, st, key)

    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Copy ``source``'s file here if its mtime is later than the stored file's.

        Copies keep the source's mtime, so copying twice in a row copies once.

        Returns:
            True if copied; False if the stored file is as new or newer.
        """
        validate_key(key)
        src = source_file(source, key)
        final = self.path(key)

        def newer() -> bool:
            try:
                return src.stat().st_mtime_ns > final.stat().st_mtime_ns
            except FileNotFoundError:
                return True

        if not newer():
            return False

        class _NotNewer(Exception):
            pass

        def check(_final: Path) -> None:
            if not newer():
                raise _NotNewer

        try:
            self._import(key, src, check=check)
        except _NotNewer:
            return False
        return True

    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Replace ``key`` with ``source``'s file only if it still has ``hash``.

        The data is copied to a temporary first; the hash check and the rename then happen
        under the key's lock file, so of several processes expecting the same hash exactly
        one succeeds.

        Args:
            key: The key to write.
            hash: The expected :meth:`get_hash`, or ``None`` to create only.
            source: Where the file is.

        Raises:
            PreconditionFailed: The stored file does not have ``hash`` (or exists when
                ``hash`` is ``None``).
        """
        validate_key(key)
        expected = None if hash is None else normalize_hash(hash)
        src = source_file(source, key)

        def check(final: Path) -> None:
            current = self._current_hash(final, key)
            if current != expected:
                raise PreconditionFailed(_mismatch(key, self, expected, current))

        self._import(key, src, check=check)

    def write_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, if_hash: str | None = None
    ) -> str:
        """Store ``data`` under ``key`` atomically and return its hash.

        The conditions are checked under the key's lock right before the rename, as in
        :meth:`copy_from_if_overwriting_hash`.

        Raises:
            PreconditionFailed: The condition did not hold.
            InvalidArgument: Both conditions were given.
        """
        validate_key(key)
        if create_only and if_hash is not None:
            raise InvalidArgument("give create_only or if_hash, not both")
        check: Check | None = None
        if create_only or if_hash is not None:
            expected = None if if_hash is None else normalize_hash(if_hash)

            def check(final: Path) -> None:
                current = self._current_hash(final, key)
                if current != expected:
                    raise PreconditionFailed(_mismatch(key, self, expected, current))

        def fill(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        self.receive(key, fill, check=check)
        return hashsync.hash_bytes(data, "etag", part_size=self.part_size)

    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Delete ``key`` only if it has ``hash`` (checked under the key's lock).

        Raises:
            PreconditionFailed: The file has a different hash.
            NotFound: No file has this key.
        """
        path, _ = self._stat(key)
        expected = normalize_hash(hash)
        with KeyLock(path, timeout=self.lock_timeout):
            current = self._current_hash(path, key)
            if current is None:
                raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}")
            if current != expected:
                raise PreconditionFailed(_mismatch(key, self, expected, current))
            path.unlink()
        self._prune(path.parent)

    def open(self, key: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
        """Open the file ``key`` like the built-in :func:`open`.

        ``"w"`` and ``"x"`` modes (text or binary) write atomically: the data goes to a
        temporary file that replaces ``key`` when the file is closed without an error, so
        readers never see a partial file. Append and update modes (``"a"``, ``"r+"``) open
        the file itself.

        Args:
            key: The file's key.
            mode: As for :func:`open`.
            **kwargs: Passed to :func:`open` (``encoding``, ``newline``, ...).

        Raises:
            NotFound: Reading a key that does not exist.
            FileExistsError: ``"x"`` mode and the key exists.
        """
        validate_key(key)
        if not _WRITE_MODES & set(mode):
            return self._open_for_read(key, mode, **kwargs)
        self._check_writable()
        final = self.path(key)
        self._refuse_links(key, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        if "w" in mode or "x" in mode:
            if "x" in mode and final.exists():
                raise FileExistsError(errno.EEXIST, f"key {key!r} exists in {self!r}")
            return AtomicFile(final, mode, exclusive="x" in mode, **kwargs)  # type: ignore[return-value]
        return open(final, mode, **kwargs)  # noqa: SIM115 - the caller owns the file


def _mismatch(key: str, store: object, expected: str | None, current: str | None) -> str:
    if expected is None:
        return f"key {key!r} already exists in {store!r} (create-only write)"
    if current is None:
        return f"key {key!r} does not exist in {store!r} (expected hash {expected})"
    return f"key {key!r} in {store!r} has hash {current}, not the expected {expected}"


class SimpleLocalStorage(LocalStorage):
    """Files stored under their keys below a root directory.

    Key ``a/b.txt`` is the file ``root/a/b.txt``.

    Args:
        root_path: The directory; created if missing.
        **options: See :class:`LocalStorage`.
    """

    def __init__(self, root_path: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(root_path, **options)


class TemporaryLocalStorage(SimpleLocalStorage):
    """A :class:`SimpleLocalStorage` in a new temporary directory, removed when done.

    The directory is removed by :meth:`close` (or leaving a ``with`` block), when the object
    is garbage collected, and at interpreter exit, whichever comes first.

    Args:
        prefix: Name prefix of the temporary directory.
        dir: Where to create it (default: the system temporary directory).
        **options: See :class:`LocalStorage`.
    """

    def __init__(
        self,
        *,
        prefix: str = "hashsync-",
        dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        root = tempfile.mkdtemp(prefix=prefix, dir=dir)
        # finalize() runs at collection or at exit (atexit=True), and at most once.
        self._finalizer = weakref.finalize(self, shutil.rmtree, root, ignore_errors=True)
        super().__init__(root, **options)

    @property
    def closed(self) -> bool:
        """Whether the directory has been removed."""
        return not self._finalizer.alive

    def _check_writable(self) -> None:
        if self.closed:
            raise InvalidArgument(f"{self!r} is closed")

    def close(self) -> None:
        """Remove the directory and everything in it."""
        self._finalizer()


class PartitioningLocalStorage(LocalStorage):
    """Spreads keys over hashed subdirectories, so no directory grows huge.

    Key ``k`` is stored at ``root/ab/cd/k`` where ``abcd`` starts the SHA-256 of ``k``: at most
    65,536 leaf directories, and keys sharing a prefix still land in different ones. The
    layout is transparent: keys, listings and hashes are those of the keys themselves.

    Args:
        root_path: The directory; created if missing.
        **options: See :class:`LocalStorage`.
    """

    def __init__(self, root_path: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(root_path, **options)

    @staticmethod
    def _partition(key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{digest[:2]}/{digest[2:4]}"

    def _relpath(self, key: str) -> str:
        return f"{self._partition(key)}/{key}"

    def _key_of(self, relpath: str) -> str | None:
        parts = relpath.split("/", 2)
        if len(parts) != 3 or f"{parts[0]}/{parts[1]}" != self._partition(parts[2]):
            return None  # a file that is not where its key would be: not ours
        return parts[2]

    def _scan_root(self, prefix: str) -> tuple[Path, str]:
        # Keys sharing a prefix are spread over all partitions: scan everything.
        return self.root, ""

    # Files sit behind hashed directories: list keys through list(), not a plain scan.
    list_for_sync = Storage.list_for_sync
    lists_by_level = False
    list_level = Storage.list_level
    count_keys = Storage.count_keys


class SingleFileStorage(LocalStorage):
    """One local file under whatever key names it.

    The source of an upload of a file that lives at no key's path (a cache's put, an fsspec
    writer's staging file), or the sink that downloads one object to a path of the caller's
    choosing (atomically, as every LocalStorage writes).
    """

    def __init__(self, file: Path) -> None:
        super().__init__(file.parent, create=False, hash_state=False)
        self._file = file

    def path(self, key: str) -> Path:
        """The one file, for every key."""
        return self._file


class ReadOnlyFilesystemStorage(FilesystemStorage, ReadOnlyStorage):
    """A directory that is read but never written, e.g. a shared network filesystem.

    Keys map to files as in :class:`SimpleLocalStorage`. Every write method exists and
    raises :class:`~hashsync.errors.PermissionDenied`, so code that tries to write gets a
    clear error rather than an ``AttributeError``.

    Args:
        root_path: The directory; it must exist.
        part_size: As for :class:`LocalStorage`.
        hash_state: As for :class:`LocalStorage`.
        hash_state_dir: As for :class:`LocalStorage`.
        follow_symlinks: As for :class:`LocalStorage`.

    Raises:
        NotFound: ``root_path`` does not exist.
        InvalidArgument: ``root_path`` is not a directory.
    """

    def __init__(
        self,
        root_path: str | os.PathLike[str],
        *,
        part_size: int = hashsync.DEFAULT_PART_SIZE,
        hash_state: bool = True,
        hash_state_dir: str | os.PathLike[str] | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        self.root = Path(root_path).expanduser().absolute()
        self.follow_symlinks = follow_symlinks
        if not self.root.exists():
            raise NotFound(errno.ENOENT, f"storage root {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise InvalidArgument(f"storage root {str(self.root)!r} is not a directory")
        self.part_size = part_size
        self.hash_state = hash_state
        self.hash_state_dir = None if hash_state_dir is None else Path(hash_state_dir)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def _refuse(self, key: str) -> PermissionDenied:
        return PermissionDenied(errno.EROFS, f"{self!r} is read-only; cannot write {key!r}")

    def open(self, key: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
        """Open the file ``key`` for reading.

        Raises:
            PermissionDenied: ``mode`` would write.
            NotFound: No file has this key.
        """
        validate_key(key)
        if _WRITE_MODES & set(mode):
            raise self._refuse(key)
        return self._open_for_read(key, mode, **kwargs)

    def copy_from(self, key: str, source: FilesystemStorage) -> None:
        """Refused: the storage is read-only.

        Raises:
            PermissionDenied: Always.
        """
        raise self._refuse(key)

    def delete(self, key: str) -> None:
        """Refused: the storage is read-only.

        Raises:
            PermissionDenied: Always.
        """
        raise self._refuse(key)

    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Refused: the storage is read-only.

        Raises:
            PermissionDenied: Always.
        """
        raise self._refuse(key)

    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Refused: the storage is read-only.

        Raises:
            PermissionDenied: Always.
        """
        raise self._refuse(key)

    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Refused: the storage is read-only.

        Raises:
            PermissionDenied: Always.
        """
        raise self._refuse(key)


def transfer_through_staging(destination: ReadWriteStorage, key: str, source: Storage) -> None:
    """Make ``destination``'s ``key`` hold ``source``'s, through this machine if need be.

    A local file is uploaded directly; anything else is staged in a temporary local
    directory first. What :meth:`~hashsync.storage.ReadWriteStorage.transfer_from` does
    when the store cannot copy from ``source`` server-side.

    Raises:
        NotFound: ``source`` has no such key.
        FileChanged: The source file changed while it was read.
    """
    if isinstance(source, FilesystemStorage):
        destination.copy_from(key, source)
        return
    with TemporaryLocalStorage() as staging:
        source.copy(key, staging)
        destination.copy_from(key, staging)
