"""File-level helpers of the local storages: link checks, safe opens, kernel copies, digest memo."""

from __future__ import annotations

import collections
import errno
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import IO, Any

from hashsync.atomic import changed_error, same_version, settled_fstat
from hashsync.errors import FileChanged, UnsafePath
from hashsync.storage.base import current_progress
from hashsync.storage.sink import Check, Sink

__all__ = [
    "UploadSource",
    "DigestMemo",
    "copy_contents",
    "digest_memo",
    "link_below",
    "open_nofollow",
    "receive_file",
    "stat_or_none",
]

# A file changed within this many seconds of being hashed may change again without its
# mtime moving (coarse timestamp ticks), so its digest is not remembered.
_RACY_SECONDS = 2.0
_MEMO_SIZE = 4096


class DigestMemo:
    """Remembers file ETags in-process, keyed on what changes when the file does."""

    def __init__(self) -> None:
        self._data: collections.OrderedDict[tuple[Any, ...], str] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(st: os.stat_result, part_size: int) -> tuple[Any, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, part_size)

    def get(self, st: os.stat_result, part_size: int) -> str | None:
        with self._lock:
            return self._data.get(self._key(st, part_size))

    def put(self, st: os.stat_result, part_size: int, digest: str) -> None:
        if time.time() - st.st_mtime < _RACY_SECONDS or time.time() - st.st_ctime < _RACY_SECONDS:
            return
        with self._lock:
            self._data[self._key(st, part_size)] = digest
            while len(self._data) > _MEMO_SIZE:
                self._data.popitem(last=False)


digest_memo = DigestMemo()


def stat_or_none(path: Path) -> os.stat_result | None:
    """``os.stat(path)``, or None when it fails (gone, unreadable)."""
    try:
        return os.stat(path)
    except OSError:
        return None


class UploadSource:
    """A local file opened for an upload, which must not store it torn (a context manager).

    Opened without following a link in its last component and stat'ed once no write is in
    flight; :meth:`unchanged` is called after everything was read and before the object
    becomes visible, and raises :class:`~hashsync.errors.FileChanged` if the file was written
    to meanwhile (the path is checked too: a file replaced by rename leaves the open
    descriptor intact).

    Attributes:
        fh: The open file.
        before: Its stat when opened.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def __enter__(self) -> UploadSource:
        self.fh = open_nofollow(self.path)
        before = settled_fstat(self.fh.fileno())
        if before is None:
            self.fh.close()
            raise changed_error(self.path, self.key)
        self.before = before
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    @property
    def size(self) -> int:
        """The file's size when opened."""
        return self.before.st_size

    def unchanged(self) -> None:
        """Raise FileChanged unless the file (and its path) is still what was opened."""
        if not same_version(self.before, os.fstat(self.fh.fileno())) or not same_version(
            self.before, stat_or_none(self.path)
        ):
            raise changed_error(self.path, self.key)

    def read_whole(self) -> bytes:
        """The whole (small) content, read twice: the reads must agree and nothing changed.

        A second read must give the same bytes: writes through a shared mmap move no
        timestamp, and one read racing them may see a mix that never existed whole.
        """
        data = self.fh.read(self.size + 1)
        if len(data) != self.size:
            raise changed_error(self.path, self.key)
        self.unchanged()
        if os.pread(self.fh.fileno(), self.size + 1, 0) != data:
            raise changed_error(self.path, self.key)
        return data


def copy_contents(fin: IO[bytes], fout: IO[bytes]) -> None:
    """Copy an open file's whole content, in the kernel where it can (what shutil does).

    ``os.copy_file_range`` exists on Linux only: elsewhere (macOS) the copy goes through
    user space. Chosen by what ``os`` offers, not by the platform's name.
    """
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while copy_range(fin.fileno(), fout.fileno(), 1 << 30):
                pass
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
    shutil.copyfileobj(fin, fout, 1024**2)


def link_below(root: Path, path: Path, allowed: frozenset[str] | None = frozenset()) -> str | None:
    """The first component of ``path`` below ``root`` that is a symbolic link, or None.

    Links whose relative path is in ``allowed`` (those a listing followed) are passed through;
    ``allowed=None`` passes every link.
    Listings that skip links never name a key through one: finding one means the tree
    changed since, or the key leads somewhere the listing did not look.
    """
    # Strings, not Paths: this runs for every file a sync or a cache writes.
    current = os.fspath(root)
    parts = path.relative_to(root).parts
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            where = "/".join(parts[: i + 1])
            if allowed is not None and where not in allowed:
                return where
    return None


def open_nofollow(path: Path) -> IO[bytes]:
    """Open a file for reading, refusing a symbolic link in its last component."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(errno.ELOOP, "is a symbolic link; not read", str(path)) from None
        raise
    return os.fdopen(fd, "rb")


def receive_file(sink: Sink, key: str, src: Path, *, check: Check | None = None) -> None:
    """Copy the local file ``src`` into ``sink`` under ``key``, keeping its mtime.

    The copy is made in the kernel where it can be; a file that changes while it is read
    (size, mtime or inode moves) is not published.

    Raises:
        FileChanged: ``src`` changed while it was copied.
    """
    report = current_progress()

    def changed() -> FileChanged:
        error = FileChanged(f"{str(src)!r} changed while it was copied to {key!r}")
        error.path = str(src)
        return error

    def fill(tmp: Path) -> None:
        with open_nofollow(src) as fin:
            before = settled_fstat(fin.fileno())
            if before is None:
                raise changed()
            with open(tmp, "wb") as fout:
                copy_contents(fin, fout)
            after = os.fstat(fin.fileno())
        if report is not None:
            report(before.st_size)
        if not same_version(before, after) or not same_version(before, stat_or_none(src)):
            raise changed()
        if tmp.stat().st_size != after.st_size:
            raise changed()
        os.utime(tmp, ns=(after.st_atime_ns, after.st_mtime_ns))

    sink.receive(key, fill, check=check)
