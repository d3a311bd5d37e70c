"""A cache directory's own index: entries, content-addressed copies, pins and counters.

One SQLite database per cache directory (``.hashsync-cache/index.db``, in WAL mode) is shared
by every process using the directory. Every change that publishes or evicts an entry runs in
one ``BEGIN IMMEDIATE`` transaction that also renames the file into place, so the byte budget
is kept by whichever process inserts, and no evictor can remove a file another process is
publishing at that moment. Correctness of what is served never depends on this database: an
entry is served only when the file at its path is still the one the index describes (same
inode, size and mtime), and files without an index row are orphans that ``prune`` removes.

Identical content is stored once: an entry's file is a hard link to
``.hashsync-cache/objects/<b3[:2]>/<b3>`` (its BLAKE3), where the filesystem allows links, and
such a copy's bytes count once however many keys link to it.

Nothing read back from the database names a path unchecked: a row whose key is not a valid
cache key, or whose digest is not a BLAKE3 digest, is no entry (and is dropped when met), and
files are reached through :class:`~hashsync.cache._tree.Tree`'s walks, which refuse links. (In
a shared cache every member of the group can write the database.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashsync._folding import EXACT, Folding
from hashsync.atomic import HOST, pid_alive, temporary_path
from hashsync.cache._tree import META_DIR, Tree, fd_path, owner_of, valid_digest, valid_key
from hashsync.errors import (
    FileSystemError,
    HashsyncError,
    HashsyncWarning,
    NameCollision,
    NotADirectory,
    PermissionDenied,
    StorageUnavailable,
    UnsafePath,
)

__all__ = ["META_DIR", "Denied", "Entry", "Index"]

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_INDEX_FILES = ("index.db", "index.db-wal", "index.db-shm")


class Denied(Exception):
    """An entry's file may not be removed by this user (another's, in a sticky directory)."""

    def __init__(self, entry: Entry) -> None:
        super().__init__(entry.key)
        self.entry = entry


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    linked INTEGER NOT NULL,
    version TEXT,
    source TEXT,
    modified_ns INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    validated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_access);
CREATE INDEX IF NOT EXISTS entries_digest ON entries(digest);
CREATE TABLE IF NOT EXISTS pins(key TEXT NOT NULL, owner TEXT NOT NULL, host TEXT, pid INTEGER);
CREATE INDEX IF NOT EXISTS pins_key ON pins(key);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = ("bytes", "hits", "misses", "evictions")
_OPEN_TIMEOUT = 120.0  # seconds to wait for other processes opening or writing the index
_READONLY_WAIT = 2.0  # seconds an index file may stay unwritable while another member makes it


@dataclass(frozen=True)
class Entry:
    """One row of the index.

    Attributes:
        key: The cache key.
        size: Bytes.
        ino: Inode of the published file (with ``mtime_ns``, how an altered file is noticed).
        mtime_ns: The published file's mtime.
        digest: BLAKE3 of the content (its content address).
        linked: The file shares the content-addressed copy (hard link).
        version: What the source's ``get_hash`` said of the fetched data, when known.
        source: Which storage it came from (its repr), or ``"put"``.
        modified_ns: The source's last-modified time (ns since the epoch).
        last_access: When it was last used (ns since the epoch; the LRU order).
        validated: When the source last confirmed it (ns since the epoch).
    """

    key: str
    size: int
    ino: int
    mtime_ns: int
    digest: str
    linked: bool
    version: str | None
    source: str | None
    modified_ns: int
    last_access: int
    validated: int

    def intact(self, st: os.stat_result | None) -> bool:
        """Whether ``st`` (of the entry's path) is still the file this entry published.

        ctime is not compared: linking another key to the same content changes it.
        """
        return st is not None and (st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.ino,
            self.size,
            self.mtime_ns,
        )


_COLUMNS = ", ".join(Entry.__dataclass_fields__)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _damaged(path: Path, exc: Exception) -> FileSystemError:
    return FileSystemError(
        errno.EIO,
        f"the cache index {path} is damaged or unreadable ({exc}); it is set aside (and the "
        "cache starts empty) when the cache is next opened",
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.lstat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _int(value: object) -> int:
    """A number read back from the database (which anyone in a shared cache's group writes)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_INTS = (1, 2, 3, 5, 8, 9, 10)  # size, ino, mtime_ns, linked, modified_ns, last_access, validated


def _entry(row: tuple[Any, ...] | None) -> Entry | None:
    """The entry a row describes, or None if it describes none a cache could have written."""
    if row is None or len(row) != len(Entry.__dataclass_fields__):
        return None
    values = list(row)
    if not valid_key(values[0]) or not valid_digest(values[4]):
        return None
    if not all(isinstance(values[i], int) and not isinstance(values[i], bool) for i in _INTS):
        return None
    if values[1] < 0 or not all(v is None or isinstance(v, str) for v in values[6:8]):
        return None
    values[5] = bool(values[5])
    return Entry(*values)


class Index:
    """The index of one cache directory, usable from many threads and processes at once.

    Args:
        tree: The cache's root (entries live at their key's path below it), already checked.
        dedup: Store identical content once, through hard links.
        shared: The cache is shared by a group (its directories and index are group-writable).
        trusted: Whether a file (its stat) needs no check of its content before it is shared
            as a content-addressed copy: the caller's rule for files other users wrote.
        content_is: Whether an open file's content has a given BLAKE3 digest.

    Raises:
        PermissionDenied: Another user owns or could write the bookkeeping directory or the
            index (in a shared cache: everyone, or the group without the sticky bit).
        UnsafePath: One of them is a symbolic link or not what it should be.
    """

    def __init__(
        self,
        tree: Tree,
        *,
        dedup: bool = True,
        shared: bool = False,
        trusted: Callable[[os.stat_result], bool] | None = None,
        content_is: Callable[[int, os.stat_result, str], bool] | None = None,
    ) -> None:
        self.tree = tree
        self.root = root = tree.root
        self.meta = root / META_DIR
        self.objects = self.meta / "objects"
        self.dedup = dedup
        self.shared = shared
        self._trusted = trusted or (lambda st: st.st_uid == os.geteuid())
        self._content_is = content_is or (lambda fd, st, digest: False)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._owner = f"{HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._prepare()
            self._db()
        except HashsyncError:
            raise
        except PermissionError as exc:
            raise PermissionDenied(
                errno.EACCES, f"cannot use {root} as a cache directory: {exc.strerror}"
            ) from None
        except NotADirectoryError:
            raise NotADirectory(
                errno.ENOTDIR, f"cannot use {root} as a cache directory: {self.meta} is a file"
            ) from None
        except sqlite3.OperationalError as exc:
            raise FileSystemError(
                errno.EIO, f"cannot use {root} as a cache directory: {exc}"
            ) from None

    def _prepare(self) -> None:
        """Make (or check) the bookkeeping directories: ours alone, or the group's, sticky."""
        for parts in ([META_DIR], [META_DIR, "objects"], [META_DIR, "leases"]):
            try:
                fd = self.tree.open_dir(parts, create=self.shared or len(parts) == 1)
            except FileNotFoundError:
                continue  # made when first needed
            try:
                self.tree.check_dir(fd, os.fstat(fd), str(self.root.joinpath(*parts)))
            finally:
                os.close(fd)

    def _check_index_files(self) -> None:
        """Refuse index files others could write or that lead elsewhere; create the index.

        SQLite follows a link at the database's own name (not at its -wal and -shm), so the
        database is created here, as a plain file, before SQLite opens it.
        """
        fd = self.tree.open_dir([META_DIR])
        try:
            for name in _INDEX_FILES:
                where = self.meta / name
                try:
                    f = os.open(name, _FILE_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if name != "index.db":
                        continue
                    mode = 0o664 if self.shared else 0o644
                    with contextlib.suppress(FileExistsError):
                        os.close(
                            os.open(
                                name,
                                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                mode,
                                dir_fd=fd,
                            )  # fmt: skip
                        )
                    f = os.open(name, _FILE_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise UnsafePath(
                            errno.ELOOP, f"the cache index {where} is a symbolic link"
                        ) from None
                    raise
                try:
                    self.tree.check_file(f, os.fstat(f), f"the cache index {where}")
                finally:
                    os.close(f)
        finally:
            os.close(fd)

    # -- connections -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "pid", None) == os.getpid():
            return db
        try:
            db = self._open_when_free()
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc) and "malformed" not in str(exc):
                raise FileSystemError(
                    errno.EIO, f"cannot open the cache index {self.meta / 'index.db'}: {exc}"
                ) from None
            # A damaged index only costs what it described: set it aside and start again;
            # files it listed become orphans (served never, removed by prune, fetched again).
            path = self.meta / "index.db"
            aside = path.with_name(f"index.db.corrupt-{int(time.time())}-{secrets.token_hex(2)}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(path) + suffix)
            warnings.warn(
                f"the cache index {path} was damaged ({exc}); it was moved to {aside.name} "
                "and the cache starts empty",
                HashsyncWarning,
                stacklevel=3,
            )
            db = self._open_when_free()
        self._local.db = db
        self._local.pid = os.getpid()
        self._local.ino = _inode(self.meta / "index.db")
        return db

    def _current_db(self) -> sqlite3.Connection:
        """This thread's connection, reopened if ``index.db`` was replaced or removed.

        A connection to a deleted index would keep a private budget of its own (and a prune
        through it would take the new index's files for orphans).
        """
        db = self._db()
        if _inode(self.meta / "index.db") != getattr(self._local, "ino", None):
            self.close()
            db = self._db()
        return db

    def _open_when_free(self) -> sqlite3.Connection:
        # Switching a new database to WAL takes a lock that SQLite's busy handler does not
        # wait for: processes opening a fresh cache together get "database is locked" at once.
        start = time.monotonic()
        delay = 0.005
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - start
                if "readonly" in str(exc):
                    # SQLite creates -wal and -shm under the umask and fchmods them to the
                    # database's mode just after: another member opening them in between
                    # gets them read-only, for the life of its connection. That lasts two
                    # system calls; anything longer is a file this user may not write.
                    if not self.shared or waited > _READONLY_WAIT:
                        raise self._unwritable(exc) from None
                elif "locked" not in str(exc) or waited > _OPEN_TIMEOUT:
                    raise
            time.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, 0.25)

    def _unwritable(self, exc: sqlite3.Error) -> PermissionDenied:
        names = [n for n in _INDEX_FILES if (self.meta / n).exists()]
        stuck = [n for n in names if not os.access(self.meta / n, os.W_OK)] or names
        files = ", ".join(str(self.meta / n) for n in stuck)
        return PermissionDenied(
            errno.EACCES,
            f"cannot write the cache index ({exc}): {files} not writable by "
            f"{owner_of(os.geteuid())}; in a shared cache every member of the group must be "
            "able to write them (chmod g+w)",
        )

    def _open(self) -> sqlite3.Connection:
        self._check_index_files()
        db = sqlite3.connect(
            self.meta / "index.db",
            timeout=_OPEN_TIMEOUT,
            isolation_level=None,
            check_same_thread=True,
        )
        try:
            # SQLite resolves a link at the database's name: one swapped in since the check
            # above shows here, before anything is written through it.
            opened = db.execute("PRAGMA database_list").fetchone()[2]
            expected = os.path.join(os.path.realpath(self.meta), "index.db")
            if os.path.realpath(opened) != expected:
                raise UnsafePath(
                    errno.ELOOP, f"the cache index {self.meta / 'index.db'} became a link"
                )
            # A shared index is written by every member of the group: its schema (triggers,
            # views) must not call functions with side effects.
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA trusted_schema=OFF")
            try:
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    raise
                # A filesystem without shared memory (some network mounts): rollback journal.
            db.execute("PRAGMA synchronous=NORMAL")
            # Reads through a shared mapping instead of one pread per page and statement.
            db.execute("PRAGMA mmap_size=268435456")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                for name in _COUNTERS:
                    db.execute("INSERT OR IGNORE INTO counters VALUES (?, 0)", (name,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): one writer at a time, across processes."""
        db = self._current_db()
        # Threads of one process queue here: SQLite's own busy handler sleeps for
        # milliseconds between retries, which would serialise a pool of downloads.
        with self._write_lock:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                if not isinstance(exc, sqlite3.OperationalError) or "locked" not in str(exc):
                    raise _damaged(self.meta / "index.db", exc) from None
                # Another process held the index for the whole busy timeout (a prune of a huge
                # tree, a process stopped while writing).
                raise StorageUnavailable(
                    errno.EAGAIN,
                    f"the cache index {self.meta / 'index.db'} stayed busy for "
                    f"{_OPEN_TIMEOUT:g} s: {exc}",
                ) from None
            try:
                yield db
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                raise _damaged(self.meta / "index.db", exc) from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- reading ---------------------------------------------------------------------

    def lookup(self, key: str) -> Entry | None:
        """The entry of ``key``, or None (also for a row that describes no valid entry)."""
        try:
            row = self._db().execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (key,))
            entry = _entry(row.fetchone())
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.meta / "index.db", exc) from None
        return entry if entry is not None and entry.key == key else None

    def entries(self) -> list[Entry]:
        """Every entry, least recently used first (rows that describe none left out)."""
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM entries ORDER BY last_access, rowid")
        return [e for e in map(_entry, rows.fetchall()) if e is not None]

    def counters(self) -> dict[str, int]:
        """The persistent counters: bytes, hits, misses, evictions."""
        rows = self._db().execute("SELECT name, value FROM counters").fetchall()
        counts = dict.fromkeys(_COUNTERS, 0)
        counts.update({name: _int(value) for name, value in rows if name in counts})
        return counts

    def count(self) -> int:
        """How many entries there are."""
        return int(self._db().execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    # -- writing ---------------------------------------------------------------------

    def add_counts(self, db: sqlite3.Connection, counts: dict[str, int]) -> None:
        """Add ``counts`` to the persistent counters, inside ``db``'s transaction."""
        if any(counts.values()):
            db.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(value, name) for name, value in counts.items() if value],
            )

    def touch(self, key: str, now: int, counts: dict[str, int]) -> None:
        """Record a use of ``key`` now (and flush this process's pending counters)."""
        with self.transaction() as db:
            db.execute("UPDATE entries SET last_access = ? WHERE key = ?", (now, key))
            self.add_counts(db, counts)

    def validated(self, key: str, now: int, version: str | None) -> None:
        """Record that the source confirmed ``key`` (whose version is ``version``) now."""
        with self.transaction() as db:
            db.execute(
                "UPDATE entries SET validated = ?, last_access = ?, "
                "version = COALESCE(?, version) WHERE key = ?",
                (now, now, version, key),
            )

    def publish(
        self,
        key: str,
        tmp: Path,
        final: Path,
        *,
        digest: str,
        version: str | None,
        source: str | None,
        modified_ns: int,
        stat: os.stat_result,
        max_bytes: int,
        counts: dict[str, int],
        folding: Folding = EXACT,
    ) -> tuple[Entry, int]:
        """Rename the verified ``tmp`` to ``final`` as ``key``'s entry, then keep the budget.

        ``stat`` is ``tmp``'s (a rename keeps inode, size and mtime). In a directory that
        folds names (``folding``), a ``final`` that already is another key's file is not
        replaced: :class:`~hashsync.errors.NameCollision`.

        Returns:
            The new entry and how many entries were evicted to make room.
        """
        now = time.time_ns()
        with self.transaction() as db:
            if folding:
                self._refuse_folded(db, key, final, folding)
            linked, shared = self._link_content(db, tmp, final, digest)
            st = shared or stat
            # One statement for what a cold insert needs to know (each one is a GIL handoff
            # in a pool of downloading threads): the bytes counted, whether any entry (the
            # replaced one too) already pays for this content, whether the key had an entry.
            before, paid, replaces = db.execute(
                "SELECT (SELECT value FROM counters WHERE name = 'bytes'), "
                "EXISTS(SELECT 1 FROM entries WHERE digest = ? AND linked), "
                "EXISTS(SELECT 1 FROM entries WHERE key = ?)",
                (digest, key),
            ).fetchone()
            old = None
            if replaces:
                old = _entry(
                    db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (key,)).fetchone()
                )
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
            added = 0 if linked and paid else st.st_size
            entry = Entry(
                key, st.st_size, st.st_ino, st.st_mtime_ns, digest, linked, version, source,
                modified_ns, now, now,
            )  # fmt: skip
            db.execute(
                f"INSERT INTO entries ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                (*_values(entry),),
            )
            # Charged after the new row exists: content it shares with the old one stays.
            freed = self._charge(db, old) if old is not None else 0
            db.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'bytes'", (added - freed,)
            )
            total = _int(before) + added - freed
            self.add_counts(db, counts)
            evicted = self._evict(db, max_bytes, keep=key) if total > max_bytes else 0
        return entry, evicted

    def _refuse_folded(
        self, db: sqlite3.Connection, key: str, final: Path, folding: Folding
    ) -> None:
        # Inside the write transaction: a second process publishing the other spelling
        # finds this one's row and file.
        try:
            there = os.lstat(final)
        except OSError:
            return
        rows = db.execute("SELECT key FROM entries WHERE ino = ?", (there.st_ino,)).fetchall()
        mine = folding.fold(key)
        for (other,) in rows:
            if other != key and folding.fold(other) == mine:
                raise NameCollision((key, other), folding.describe(), repr(str(self.root)))

    def _link_content(
        self, db: sqlite3.Connection, tmp: Path, final: Path, digest: str
    ) -> tuple[bool, os.stat_result | None]:
        """Move ``tmp`` to ``final``, sharing the content-addressed copy.

        Returns:
            Whether ``final`` is linked to the copy, and the copy's stat when ``final`` became
            another name of a copy stored before (else ``final`` is ``tmp``'s inode).
        """
        if not self.dedup:
            os.replace(tmp, final)
            return False, None
        try:
            bucket_fd = self.tree.open_dir([META_DIR, "objects", digest[:2]], create=True)
        except OSError:
            # No usable objects directory (a link planted there, a file): no sharing.
            os.replace(tmp, final)
            return False, None
        try:
            return self._link_content_in(db, bucket_fd, tmp, final, digest)
        finally:
            os.close(bucket_fd)

    def _link_content_in(
        self, db: sqlite3.Connection, bucket_fd: int, tmp: Path, final: Path, digest: str
    ) -> tuple[bool, os.stat_result | None]:
        obj = fd_path(bucket_fd, self.objects / digest[:2]) / digest
        try:
            os.link(tmp, obj, follow_symlinks=False)
        except FileExistsError:
            stored = self._trusted_object(db, bucket_fd, digest)
            if stored is not None:
                # Same content already stored: the key becomes another name for it.
                try:
                    if not _same_file(obj, final):
                        shared = temporary_path(final)
                        os.link(obj, shared, follow_symlinks=False)
                        # (rename(2) onto another name of the same file does nothing and leaves
                        # the source name: hence the check above.)
                        try:
                            os.replace(shared, final)
                        except BaseException:
                            shared.unlink(missing_ok=True)
                            raise
                except OSError:
                    # Another user's copy we may not link (protected hard links): our own.
                    os.replace(tmp, final)
                    return False, None
                tmp.unlink()
                return True, stored
            # A copy no entry vouches for (altered, or left by a crash): ours replaces it.
            spare = temporary_path(obj)
            try:
                os.link(tmp, spare, follow_symlinks=False)
                os.replace(spare, obj)
            except OSError:
                spare.unlink(missing_ok=True)
                os.replace(tmp, final)
                return False, None
        except OSError:
            # No hard links here (some FUSE and network filesystems): a plain copy.
            os.replace(tmp, final)
            return False, None
        os.replace(tmp, final)
        return True, None

    def _trusted_object(
        self, db: sqlite3.Connection, bucket_fd: int, digest: str
    ) -> os.stat_result | None:
        """The stored copy's stat if an entry vouches for it, else None.

        An entry vouches for the copy when it links to it: same inode, mtime and size. A copy
        another user wrote is also hashed (the entry vouching for it may be theirs too).
        """
        row = db.execute(
            "SELECT ino, mtime_ns, size FROM entries WHERE digest = ? AND linked LIMIT 1",
            (digest,),
        ).fetchone()
        if row is None:
            return None
        try:
            fd = os.open(digest, _FILE_FLAGS, dir_fd=bucket_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_mtime_ns, st.st_size) != tuple(
                row
            ):
                return None
            if not self._trusted(st) and not self._content_is(fd, st, digest):
                return None
            return st
        finally:
            os.close(fd)

    def _charge(self, db: sqlite3.Connection, gone: Entry) -> int:
        """Bytes freed by removing ``gone``'s row (already deleted); drops an unused copy."""
        if not gone.linked:
            return gone.size
        if db.execute(
            "SELECT 1 FROM entries WHERE digest = ? AND linked LIMIT 1", (gone.digest,)
        ).fetchone():
            return 0
        self.unlink_object(gone)
        return gone.size

    def unlink_object(self, gone: Entry) -> None:
        """Remove the content-addressed copy ``gone`` linked to, if it is still that inode."""
        with contextlib.suppress(OSError):
            self.tree.unlink([META_DIR, "objects", gone.digest[:2], gone.digest], gone.ino)

    def _unlink_entry_file(self, gone: Entry) -> None:
        # The entry's own inode, even if it was edited since (its bytes are counted until
        # now and must go with it); a different file put there by someone else is left.
        self.tree.unlink(gone.key.split("/"), gone.ino)

    def remove(self, key: str, counts: dict[str, int] | None = None) -> Entry | None:
        """Drop ``key``'s entry and its file; return the entry removed, if any."""
        with self.transaction() as db:
            gone = self._remove(db, key)
            if counts:
                self.add_counts(db, counts)
        return gone

    def _remove(
        self, db: sqlite3.Connection, key: object, *, keep_if_denied: bool = False
    ) -> Entry | None:
        """Drop ``key``'s row and its file; return the entry removed, if any.

        A row that describes no valid entry is dropped without touching any file. A file this
        user may not remove (another user's, in a shared cache) stays, as an orphan its owner's
        ``prune`` removes; with ``keep_if_denied`` its row stays too and :class:`Denied` is
        raised, so budgets count what is really on disk.
        """
        row = db.execute(f"SELECT rowid, {_COLUMNS} FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        gone = _entry(row[1:])
        if gone is not None:
            try:
                self._unlink_entry_file(gone)
            except PermissionError:
                if keep_if_denied:
                    raise Denied(gone) from None
        db.execute("DELETE FROM entries WHERE rowid = ?", (row[0],))
        if gone is None:
            return None
        freed = self._charge(db, gone)
        db.execute("UPDATE counters SET value = value - ? WHERE name = 'bytes'", (freed,))
        return gone

    def _bytes(self, db: sqlite3.Connection) -> int:
        return _int(db.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0])

    def _evict(self, db: sqlite3.Connection, max_bytes: int, keep: str | None = None) -> int:
        total = self._bytes(db)
        if total <= max_bytes:
            return 0
        self._drop_dead_pins(db)
        evicted = 0
        # Entries this user may not remove stay in place, first in the order: skipped by
        # offset (the order is stable inside the transaction).
        skipped = 0
        while total > max_bytes:
            rows = db.execute(
                "SELECT key FROM entries WHERE key NOT IN (SELECT key FROM pins) AND key != ? "
                "ORDER BY last_access, rowid LIMIT 64 OFFSET ?",
                (keep or "", skipped),
            ).fetchall()
            if not rows:
                break  # what is left is pinned, the entry just added, or others' to remove
            for (key,) in rows:
                try:
                    gone = self._remove(db, key, keep_if_denied=True)
                except Denied:
                    skipped += 1
                    continue
                if gone is not None:
                    evicted += 1
                    total = self._bytes(db)
                if total <= max_bytes:
                    break
        db.execute("UPDATE counters SET value = value + ? WHERE name = 'evictions'", (evicted,))
        return evicted

    def enforce(self, max_bytes: int) -> int:
        """Evict least recently used entries until the cache fits ``max_bytes``."""
        with self.transaction() as db:
            return self._evict(db, max_bytes)

    # -- pins ------------------------------------------------------------------------

    def pin(self, keys: Iterable[str]) -> str:
        """Pin ``keys`` (they are never evicted) until :meth:`unpin` with the returned token."""
        token = f"{self._owner}-{secrets.token_hex(4)}"
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO pins VALUES (?, ?, ?, ?)",
                [(key, token, HOST, os.getpid()) for key in keys],
            )
        return token

    def unpin(self, token: str) -> None:
        """Release the pins made with ``token``."""
        with self.transaction() as db:
            db.execute("DELETE FROM pins WHERE owner = ?", (token,))

    def _drop_dead_pins(self, db: sqlite3.Connection) -> None:
        # Pins of a process that died (SIGKILL skips the context manager's exit) must not
        # keep entries forever; pins of other hosts cannot be checked and stay.
        for owner, pid in db.execute(
            "SELECT DISTINCT owner, pid FROM pins WHERE host = ?", (HOST,)
        ).fetchall():
            valid = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31
            if not valid or (pid != os.getpid() and not pid_alive(pid)):
                db.execute("DELETE FROM pins WHERE owner = ?", (owner,))

    # -- whole cache -----------------------------------------------------------------

    def clear(self) -> int:
        """Remove every entry that is not pinned; return how many.

        Entries this user may not remove (another user's, in a shared cache) stay.
        """
        removed = 0
        with self.transaction() as db:
            self._drop_dead_pins(db)
            keys = [
                k
                for (k,) in db.execute(
                    "SELECT key FROM entries WHERE key NOT IN (SELECT key FROM pins)"
                ).fetchall()
            ]
            for key in keys:
                with contextlib.suppress(Denied):
                    if self._remove(db, key, keep_if_denied=True) is not None:
                        removed += 1
        return removed

    def reconcile(self) -> tuple[list[str], int]:
        """Drop rows whose file is gone or altered, or that describe no entry; recount bytes.

        Returns:
            The keys dropped, and the byte total after recounting.
        """
        dropped: list[str] = []
        with self.transaction() as db:
            for rowid, *row in db.execute(f"SELECT rowid, {_COLUMNS} FROM entries").fetchall():
                entry = _entry(tuple(row))
                st: os.stat_result | None = None
                if entry is not None:
                    with contextlib.suppress(OSError):  # a link in the way: not the entry
                        st = self.tree.lstat(entry.key)
                if entry is None or not entry.intact(st) or not stat.S_ISREG(st.st_mode):  # type: ignore[union-attr]
                    db.execute("DELETE FROM entries WHERE rowid = ?", (rowid,))
                    dropped.append(row[0] if isinstance(row[0], str) else repr(row[0]))
            total = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM ("
                "SELECT MAX(size) AS size FROM entries WHERE linked GROUP BY digest "
                "UNION ALL SELECT size FROM entries WHERE NOT linked)"
            ).fetchone()[0]
            db.execute("UPDATE counters SET value = ? WHERE name = 'bytes'", (int(total),))
        return dropped, int(total)

    def known_objects(self) -> set[str]:
        """Digests some linked entry still uses."""
        rows = self._db().execute("SELECT DISTINCT digest FROM entries WHERE linked").fetchall()
        return {d for (d,) in rows if valid_digest(d)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_local"] = None
        state["_write_lock"] = None
        state.pop("_trusted", None)
        state.pop("_content_is", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._owner = f"{HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        # The cache's rules do not travel: without them no stored copy is shared.
        self._trusted = lambda st: False
        self._content_is = lambda fd, st, digest: False


def _values(entry: Entry) -> tuple[Any, ...]:
    return tuple(getattr(entry, name) for name in Entry.__dataclass_fields__)
