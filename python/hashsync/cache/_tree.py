"""Who may write a cache directory, and how its files are reached without following links.

Whoever can write a cache's directory or its index decides what the cache serves and what
``clear`` deletes. A private cache (the default) is therefore used only when its directory,
its bookkeeping directory and its index belong to the user running it and nobody else can
write them; anything else is refused before a byte is read or deleted.

A shared cache (``shared=True``) is written by a whole group, so nothing it holds is trusted
for a path: its directories get the sticky bit (only a file's owner, the directory's owner or
root may remove or replace a file), every key read back from the index is checked as a key,
every file is reached by a walk that opens one directory at a time and refuses symbolic links,
and an entry another user wrote is hashed before it is served. The same walk serves private
caches: it costs a few system calls per entry and keeps a link planted by hand from leading a
``clear`` out of the directory.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from hashsync._fdpath import dir_path, hash_open_file
from hashsync.atomic import is_internal_name
from hashsync.errors import (
    HashsyncError,
    InvalidArgument,
    NotADirectory,
    PermissionDenied,
    UnsafePath,
)
from hashsync.storage.base import validate_key

__all__ = [
    "META_DIR",
    "SHARED_DIR_MODE",
    "Tree",
    "Vouched",
    "blake3_of",
    "check_key",
    "fd_path",
    "identity",
    "owner_of",
    "valid_digest",
    "valid_key",
]

#: The directory under a cache's root that holds hashsync's bookkeeping; never a key.
META_DIR = ".hashsync-cache"

#: Directories of a shared cache: the group may write, new files keep the directory's group
#: (set-gid), and only a file's owner may remove or replace it (sticky).
SHARED_DIR_MODE = 0o3775
_PRIVATE_DIR_MODE = 0o755
_SHARED_FILE_MODE = 0o664

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at an entry's path must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_MAX_KEY_BYTES = 1024  # S3's limit; deeper keys would only fail later, less clearly
_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_key(key: str) -> str:
    """``key`` if a cache can hold it at its path, else InvalidArgument saying why."""
    validate_key(key)
    if key == META_DIR or key.startswith(META_DIR + "/"):
        raise InvalidArgument(f"key {key!r} is reserved for the cache's own index")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"key {key!r} is not valid UTF-8") from None
    if len(raw) > _MAX_KEY_BYTES:
        raise InvalidArgument(f"key of {len(raw)} bytes is longer than {_MAX_KEY_BYTES}")
    for part in key.split("/"):
        if len(part.encode()) > 255:
            raise InvalidArgument(f"key {key!r} has a name longer than 255 bytes")
        if is_internal_name(part):
            # Scans, verify and prune take such names for hashsync's temporaries and locks.
            raise InvalidArgument(f"key {key!r} is named like a hashsync temporary or lock file")
    return key


def valid_key(key: object) -> bool:
    """Whether ``key`` (read back from an index) is a key the cache could have written."""
    if not isinstance(key, str):
        return False
    try:
        check_key(key)
    except InvalidArgument:
        return False
    return True


def valid_digest(digest: object) -> bool:
    """Whether ``digest`` is a BLAKE3 hex digest (the name of a content-addressed copy)."""
    return isinstance(digest, str) and _DIGEST.fullmatch(digest) is not None


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever a file's content may have: ctime cannot be set back by its owner."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def owner_of(uid: int) -> str:
    """A user's name and uid, for messages."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _private_group(st: os.stat_result) -> bool:
    """Whether ``st``'s group is its owner's own group, with no other member.

    Systems that give every user a group of their own set the umask to 002, so a user's
    directories are group-writable; that lets nobody else write them.
    """
    try:
        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return (
        owner.pw_gid == st.st_gid
        and group.gr_name == owner.pw_name
        and set(group.gr_mem) <= {owner.pw_name}
    )


def _refuse_private(st: os.stat_result, where: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise PermissionDenied(
            errno.EACCES,
            f"{where} belongs to {owner_of(st.st_uid)}, not to {owner_of(me)}: whoever can "
            "write a cache decides what it serves and what clearing it deletes; use a "
            "directory of your own (or shared=True for a cache a group shares)",
        )
    if st.st_mode & 0o002:
        raise PermissionDenied(
            errno.EACCES,
            f"{where} is writable by every user, who could then change what this cache "
            "serves; run chmod o-w on it",
        )
    if st.st_mode & 0o020 and not _private_group(st):
        raise PermissionDenied(
            errno.EACCES,
            f"{where} is writable by the group {_group_name(st.st_gid)}, whose members could "
            "then change what this cache serves; run chmod g-w on it (or use shared=True)",
        )


def _refuse_shared_dir(fd: int, st: os.stat_result, where: str) -> None:
    if st.st_uid == os.geteuid():
        if stat.S_IMODE(st.st_mode) != SHARED_DIR_MODE:
            os.fchmod(fd, SHARED_DIR_MODE)
        return
    owner = owner_of(st.st_uid)
    if st.st_mode & 0o002:
        raise PermissionDenied(
            errno.EACCES,
            f"{where} of a shared cache is writable by every user, not only by its group; "
            f"ask its owner, {owner}, to run chmod o-w on it",
        )
    if st.st_mode & 0o020 and not st.st_mode & stat.S_ISVTX:
        raise PermissionDenied(
            errno.EACCES,
            f"{where} of a shared cache has no sticky bit, so any member of the group could "
            f"replace the entries of the others; ask its owner, {owner}, to run chmod +t on it",
        )


def _refuse_shared_file(fd: int, st: os.stat_result, where: str) -> None:
    if st.st_uid == os.geteuid():
        if stat.S_IMODE(st.st_mode) != _SHARED_FILE_MODE:
            os.fchmod(fd, _SHARED_FILE_MODE)
    elif st.st_mode & 0o002:
        raise PermissionDenied(
            errno.EACCES,
            f"{where} of a shared cache is writable by every user, not only by its group; "
            f"ask its owner, {owner_of(st.st_uid)}, to run chmod o-w on it",
        )


def _refuse_open_ancestors(root: Path) -> None:
    """Refuse a root below a directory everyone may write that has no sticky bit.

    Whoever can write a directory can rename what it holds and put something else in its
    place: the cache directory itself, after every check made here.
    """
    real = Path(os.path.realpath(root))
    for parent in dict.fromkeys([*root.parents, *real.parents]):
        try:
            st = os.stat(parent)
        except OSError:
            continue
        if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
            raise PermissionDenied(
                errno.EACCES,
                f"{parent} is writable by every user and has no sticky bit, so anyone could "
                f"replace the cache directory {root} below it; run chmod +t (or o-w) on it",
            )


def fd_path(fd: int, fallback: Path) -> Path:
    """A path that reaches what ``fd`` is open on, whatever is renamed meanwhile.

    Code that only takes paths (a download filling its temporary file, the hashing core) then
    resolves only names below it: no directory above can be swapped for a link in between.
    Without Linux's /proc the file's own path, checked a moment ago, stands in.
    """
    return dir_path(fd, fallback)


def blake3_of(fd: int) -> str:
    """BLAKE3 of the file open as ``fd`` (through the hashing core where a path reaches it)."""
    return hash_open_file(fd, "blake3")


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Tree:
    """A cache's root, checked when opened, then reached only by walks that refuse links.

    Args:
        root: The cache directory (absolute); created if it does not exist.
        shared: A cache a group writes (see the module docstring).

    Raises:
        PermissionDenied: Another user owns the root or could write it (or could replace it:
            an ancestor writable by everyone without the sticky bit); for a shared cache,
            the root lacks a sticky bit its owner must set.
        NotADirectory: The root, or a directory above it, is not a directory.
    """

    def __init__(self, root: Path, *, shared: bool) -> None:
        self.root = root
        self.shared = shared
        self._create_root()
        _refuse_open_ancestors(root)
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise NotADirectory(
                errno.ENOTDIR, f"the cache directory {root} is not a directory"
            ) from None
        try:
            st = os.fstat(fd)
            self.check_dir(fd, st, f"the cache directory {root}")
            self.identity = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)

    def _create_root(self) -> None:
        if self.root.is_dir():
            return
        # Created here, not with the umask's group write: a private cache's own directories
        # would otherwise be refused right after being made.
        missing = []
        here = self.root
        while not here.exists() and here != here.parent:
            missing.append(here)
            here = here.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, _PRIVATE_DIR_MODE)
            except FileExistsError:
                pass
            except PermissionError as exc:
                raise PermissionDenied(
                    errno.EACCES, f"cannot create {str(d)!r}: {exc.strerror}"
                ) from None
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise NotADirectory(
                        errno.ENOTDIR, f"cannot create {str(self.root)!r}: a parent path is a file"
                    ) from None
                raise HashsyncError(f"cannot create {str(d)!r}: {exc.strerror}") from None

    def check_dir(self, fd: int, st: os.stat_result, where: str) -> None:
        """Refuse (or, in a shared cache we own, fix) a directory others could misuse."""
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectory(errno.ENOTDIR, f"{where} is not a directory")
        if self.shared:
            _refuse_shared_dir(fd, st, where)
        else:
            _refuse_private(st, where)

    def check_file(self, fd: int, st: os.stat_result, where: str) -> None:
        """Refuse an index file others could write (in a shared cache: everyone)."""
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, f"{where} is not a regular file")
        if self.shared:
            _refuse_shared_file(fd, st, where)
        else:
            _refuse_private(st, where)

    def __repr__(self) -> str:
        return f"Tree({str(self.root)!r}, shared={self.shared})"

    # -- walking ---------------------------------------------------------------------

    def _open_root(self) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            os.close(fd)
            raise UnsafePath(
                errno.ESTALE,
                f"the cache directory {self.root} was replaced since the cache was opened; "
                "open the cache again",
            )
        return fd

    @contextlib.contextmanager
    def opened_root(self) -> Iterator[int]:
        """The root directory, open; refused if it is no longer the one checked."""
        fd = self._open_root()
        try:
            yield fd
        finally:
            os.close(fd)

    def open_dir(self, parts: Sequence[str], *, create: bool = False) -> int:
        """Open the directory ``parts`` below the root, one component at a time.

        Args:
            parts: Names below the root (empty: the root itself).
            create: Make missing directories (private: 0755 at most; shared: sticky, set-gid).

        Returns:
            A file descriptor the caller closes.

        Raises:
            UnsafePath: A component is a symbolic link.
            FileNotFoundError: A component is missing (and ``create`` is off).
            NotADirectoryError: A component is something else than a directory.
        """
        fd = self._open_root()
        try:
            for i, part in enumerate(parts):
                nxt = self._step(fd, part, create, parts[: i + 1])
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _step(self, fd: int, part: str, create: bool, where: Sequence[str]) -> int:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except NotADirectoryError:
            # O_NOFOLLOW | O_DIRECTORY says ENOTDIR for a link too.
            raise self._not_a_directory(fd, part, where) from None
        else:
            if create and self.shared:
                self._fix_shared(nxt)
            return nxt
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, SHARED_DIR_MODE & 0o777 if self.shared else _PRIVATE_DIR_MODE, dir_fd=fd)
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except NotADirectoryError:
            raise self._not_a_directory(fd, part, where) from None
        if self.shared:
            self._fix_shared(nxt)
        return nxt

    def _fix_shared(self, fd: int) -> None:
        # Ours (made now, or by an earlier version without the sticky bit): shared properly.
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != SHARED_DIR_MODE:
            with contextlib.suppress(OSError):
                os.fchmod(fd, SHARED_DIR_MODE)

    def _not_a_directory(self, fd: int, part: str, where: Sequence[str]) -> OSError:
        shown = "/".join(where)
        st = _lstat_at(fd, part)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return self._link(shown)
        return NotADirectoryError(errno.ENOTDIR, f"{shown!r} in {self.root} is not a directory")

    def _link(self, shown: str) -> UnsafePath:
        return UnsafePath(
            errno.ELOOP,
            f"{shown!r} in the cache {self.root} is a symbolic link; the cache never follows "
            "links (it may lead anywhere): remove it",
        )

    def lstat(self, key: str) -> os.stat_result | None:
        """The file at ``key`` (never followed), or None if there is none.

        Raises:
            UnsafePath: A component of the key, or the file itself, is a symbolic link.
        """
        *dirs, name = key.split("/")
        try:
            fd = self.open_dir(dirs)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = _lstat_at(fd, name)
        finally:
            os.close(fd)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise self._link(key)
        return st

    def open_file(self, key: str) -> int:
        """Open the file at ``key`` for reading, without following any link.

        Raises:
            UnsafePath: A component of the key, or the file itself, is a symbolic link.
            FileNotFoundError: There is no such file.
        """
        *dirs, name = key.split("/")
        try:
            fd = self.open_dir(dirs)
        except NotADirectoryError:
            raise FileNotFoundError(errno.ENOENT, f"no entry {key!r} in {self.root}") from None
        try:
            return os.open(name, _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._link(key) from None
            raise
        finally:
            os.close(fd)

    def unlink(self, parts: Sequence[str], ino: int) -> bool:
        """Remove the regular file at ``parts`` if it is inode ``ino``; never through a link.

        Returns:
            Whether it was removed (False: missing, another file, or behind a link).

        Raises:
            PermissionError: It may not be removed (another user's, in a sticky directory).
        """
        *dirs, name = parts
        try:
            fd = self.open_dir(dirs)
        except OSError:
            return False
        try:
            st = _lstat_at(fd, name)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_ino != ino:
                return False
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return False
            return True
        finally:
            os.close(fd)

    def remove_empty_dirs(self, skip: str) -> None:
        """Remove empty directories below the root (never ``skip`` at the top), bottom up."""
        with self.opened_root() as fd:
            self._remove_empty_below(fd, skip)

    def _remove_empty_below(self, fd: int, skip: str | None) -> None:
        with os.scandir(fd) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False) and e.name != skip]
        for name in names:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                self._remove_empty_below(child, None)
            finally:
                os.close(child)
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fd)


class Vouched:
    """Files whose content this process has checked, by identity (inode, size, times).

    Hashing another user's entry on every ``get`` would cost a read of it each time; its
    identity changes with any write (ctime cannot be set back), so one check per version is
    enough.
    """

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[tuple[int, ...], set[str]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def has(self, st: os.stat_result, what: str) -> bool:
        """Whether the file ``st`` describes was found to be ``what`` (a digest)."""
        with self._lock:
            return what in self._seen.get(identity(st), ())

    def add(self, st: os.stat_result, what: str) -> None:
        """Remember that the file ``st`` describes is ``what``."""
        with self._lock:
            self._seen.setdefault(identity(st), set()).add(what)
            self._seen.move_to_end(identity(st))
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
