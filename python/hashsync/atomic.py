"""Atomic local writes, per-key locks that work on NFS, and the names of hashsync's own files.

Every part of hashsync that writes a local file (storages, caches, the hub client) writes it
through here, so that a reader never sees a partial file and crashed writers' debris is
recognised everywhere by the same names.

A file is written to ``.{name}.hashsync-tmp-{host}-{pid}-{random}`` in its destination
directory, fsynced, and renamed over the final name, so a reader sees either the old file
or the complete new one. Temporary files of processes that died are removed by later writes
into the same directory.

Locks are lock *files* created with ``O_CREAT | O_EXCL``, which is atomic on local
filesystems and on NFSv3+ (unlike ``flock``, which some NFS and Lustre setups grant to
everyone). A lock whose holder died is broken; see :class:`KeyLock`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from hashsync._native import is_internal_name as _native_is_internal_name
from hashsync.errors import FileChanged, StorageUnavailable

__all__ = [
    "LOCK_SUFFIX",
    "TMP_MARK",
    "HOST",
    "AtomicFile",
    "KeyLock",
    "same_version",
    "settled_fstat",
    "atomic_destination",
    "full_fsync",
    "changed_error",
    "cleanup_listed",
    "cleanup_once",
    "cleanup_stale_temporaries",
    "commit",
    "write_files_atomically",
    "is_internal_key",
    "host_identity",
    "is_internal_name",
    "pid_alive",
    "temporary_path",
]

#: In the name of every temporary file (``.NAME.hashsync-tmp-HOST-PID-RANDOM``); the Rust
#: scanner knows it too (``hashsync._native`` reports such files as ``Listing.temporaries``).
TMP_MARK = ".hashsync-tmp-"
#: Ends the name of a key's lock file (``.NAME.hashsync-lock``); a lock being broken is
#: renamed to ``.NAME.hashsync-lock.broken-TOKEN`` first.
LOCK_SUFFIX = ".hashsync-lock"
_TMP_RE = re.compile(re.escape(TMP_MARK) + r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")
# Leaves room for the ".", the marker, host, pid and random parts within NAME_MAX (255).
_MAX_STEM_BYTES = 180
# Temporaries of other hosts cannot be checked for liveness; a day without a write means the
# writer is gone (a live download touches its file continuously).
_FOREIGN_TMP_AGE = 24 * 3600.0

# Directory -> when it was last cleaned, per process.
_cleaned_dirs: dict[tuple[int, str], float] = {}
_cleaned_lock = threading.Lock()
_CLEAN_INTERVAL = 60.0


# A write updates mtime/ctime when it starts, not when its data is in place: a reader whose
# first fstat lands inside a write sees timestamps that never move again, yet reads part of the
# old and part of the new data. Waiting until the last timestamp update is this old gives any
# write that was in flight then the time to finish.
_SETTLE_NS = 50_000_000


def same_version(a: os.stat_result, b: os.stat_result | None) -> bool:
    """Whether two stats describe the same, unmodified file (every write moves mtime/ctime)."""
    return b is not None and (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def settled_fstat(fd: int) -> os.stat_result | None:
    """``fstat(fd)`` once no write can still be in flight, or None if the file is being written.

    A file untouched for :data:`_SETTLE_NS` (almost every file a sync reads) costs one fstat.
    A more recent one is looked at again after that time; if it changed meanwhile it is being
    written to right now and None is returned, so the caller reports it as changed.
    """
    st = os.fstat(fd)
    age = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns)
    if age >= _SETTLE_NS:
        return st
    # A timestamp in the future (clock skew on a network filesystem) waits once, not forever.
    time.sleep((_SETTLE_NS - age if age >= 0 else _SETTLE_NS) / 1e9)
    again = os.fstat(fd)
    return again if same_version(st, again) else None


#: The initial PID namespace's inode number (PROC_PID_INIT_INO): not in a container.
_INIT_PID_NAMESPACE = 0xEFFFFFFC


def _machine_id() -> str | None:
    """This machine's lasting identity, or None where the system offers none we know of."""
    for where in ("/etc/machine-id", "/var/lib/dbus/machine-id"):  # systemd, D-Bus
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found = Path(where).read_text().strip()
            if found:
                return found
    try:
        import ctypes

        gethostuuid = ctypes.CDLL(None).gethostuuid  # macOS: the hardware UUID
    except (OSError, AttributeError, ImportError):
        return None
    uuid = ctypes.create_string_buffer(16)
    wait = (ctypes.c_long * 2)(5, 0)  # struct timespec: how long the call may block
    return uuid.raw.hex() if gethostuuid(uuid, wait) == 0 else None


def host_identity() -> str:
    """What decides whether another process's ID can be checked from here.

    The machine's own identity (``/etc/machine-id``, a Mac's hardware UUID), not its
    hostname: a laptop's hostname changes with the network, and then its own killed runs'
    locks, temporaries and pins would look like another machine's and never be reclaimed.
    In a container (a PID namespace of its own) the hostname and the namespace count too:
    containers made from one image share a machine ID but not their process IDs. Where no
    machine identity is to be had, the hostname stands in.
    """
    machine = _machine_id()
    try:
        namespace: int | None = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    if machine is None:
        return f"host:{socket.gethostname()}"
    if namespace is None or namespace == _INIT_PID_NAMESPACE:
        return f"machine:{machine}"
    return f"container:{machine}:{socket.gethostname()}:{namespace}"


def _host_tag() -> str:
    # Hashed so any identity makes a short, parseable tag.
    return hashlib.sha1(host_identity().encode(), usedforsecurity=False).hexdigest()[:8]


#: This host's tag (:func:`host_identity`, hashed) in temporaries', locks' and journals'
#: names: whose they are, and whether their process IDs can be checked from here.
HOST = _host_tag()


def is_internal_name(name: str) -> bool:
    """Return whether a file name is one of ours (a temporary or a lock file), not data.

    Only the exact patterns hashsync writes count, random parts included
    (``.NAME.hashsync-tmp-HOST-PID-RANDOM``, ``.NAME.hashsync-tmp-partial-HEX``,
    ``.NAME.hashsync-lock`` and its ``.broken-TOKEN``): ``report.hashsync-tmp-v2.txt`` is a
    user's file. Scans skip exactly these names (the rule lives in the Rust scanner).
    """
    # The substring test first: almost every name fails it, without a call into Rust.
    return (TMP_MARK in name or LOCK_SUFFIX in name) and _native_is_internal_name(name)


def is_internal_key(key: str) -> bool:
    """Return whether the last component of a ``/``-separated key is an internal name."""
    return is_internal_name(key.rpartition("/")[2])


def _short(name: str) -> str:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_STEM_BYTES:
        return name
    return raw[:_MAX_STEM_BYTES].decode("utf-8", "ignore")


def temporary_path(final: Path) -> Path:
    """Return a new per-process temporary name next to ``final``."""
    return final.with_name(
        f".{_short(final.name)}{TMP_MARK}{HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def cleanup_stale_temporaries(directory: Path) -> list[Path]:
    """Remove temporaries in ``directory`` left by processes that are gone.

    A temporary of this host is stale when its process no longer exists; one of another host
    when it has not been written to for a day.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        # Only hashsync's exact names: a user's "a.hashsync-tmp-..." is never removed.
        match = _TMP_RE.search(name) if is_internal_name(name) else None
        if match is None:
            continue
        path = directory / name
        if match["host"] == HOST:
            pid = int(match["pid"])
            stale = pid != os.getpid() and not pid_alive(pid)
        else:
            try:
                stale = now - path.stat().st_mtime > _FOREIGN_TMP_AGE
            except OSError:
                continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def cleanup_listed(root: Path, temporaries: list[str]) -> list[Path]:
    """Remove the stale ones among temporaries a scan of ``root`` found (``Listing.temporaries``).

    A killed download leaves its temporary in a directory that later runs may never write
    into again; a scan sees it, so whoever scans a writable tree clears it.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    for directory in sorted({rel.rpartition("/")[0] for rel in temporaries}):
        removed += cleanup_stale_temporaries(
            root.joinpath(*directory.split("/")) if directory else root
        )
    return removed


def cleanup_once(directory: Path) -> None:
    """Run :func:`cleanup_stale_temporaries` on ``directory``, at most once a minute."""
    # Listing a large directory on every write would be costly; once a minute per process
    # and directory finds what crashed processes left without that cost.
    tag = (os.getpid(), str(directory))
    now = time.monotonic()
    with _cleaned_lock:
        last = _cleaned_dirs.get(tag)
        if last is not None and now - last < _CLEAN_INTERVAL:
            return
        _cleaned_dirs[tag] = now
    cleanup_stale_temporaries(directory)


class _DirectorySync:
    """The fsyncs of one directory: how many were asked for, and how many are covered."""

    __slots__ = ("asked", "covered", "running", "waiting")

    def __init__(self) -> None:
        self.asked = 0  # requests so far, numbered 1, 2, ...
        self.covered = 0  # requests up to this number are on disk
        self.running = False  # an fsync is under way
        self.waiting = 0  # callers inside sync() that have not started an fsync


class _DirectorySyncs:
    """Group commit for directory fsyncs: one fsync serves every caller that asked before it began.

    A download of many small files renames each into place and must make that rename durable
    before it reports the file done. Threads renaming into one directory at once would each
    fsync it; an fsync that starts after a caller's rename covers that rename too, so callers
    wait for the next one to start and finish instead of queueing one each.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: dict[str, _DirectorySync] = {}

    def sync(self, directory: str) -> None:
        with self._cond:
            state = self._state.setdefault(directory, _DirectorySync())
            state.asked += 1
            mine = state.asked
            state.waiting += 1
            try:
                while state.running and state.covered < mine:
                    self._cond.wait()
                if state.covered >= mine:
                    return
                state.running = True
                covering = state.asked
            finally:
                state.waiting -= 1
                if not state.waiting and not state.running:
                    self._state.pop(directory, None)
        try:
            _fsync_directory_now(directory)
        finally:
            with self._cond:
                state.running = False
                state.covered = max(state.covered, covering)
                if not state.waiting:
                    self._state.pop(directory, None)
                self._cond.notify_all()


_directory_syncs = _DirectorySyncs()


# macOS: fsync() leaves the data in the drive's cache; F_FULLFSYNC flushes it. Chosen by what
# fcntl offers, not by the platform's name.
_F_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)


def full_fsync(fd: int) -> None:
    """Flush ``fd`` to stable storage: ``F_FULLFSYNC`` where it exists, else ``fsync``.

    A filesystem that refuses ``F_FULLFSYNC`` (some network mounts) gets a plain ``fsync``.
    """
    if _F_FULLFSYNC is not None:
        try:
            fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def _fsync_directory_now(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        full_fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is atomic
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk, where the OS allows it.

    Concurrent calls for one directory share fsyncs: each returns once an fsync that began
    after the call did has finished.
    """
    _directory_syncs.sync(os.fspath(directory))


@contextlib.contextmanager
def atomic_destination(final: Path) -> Iterator[Path]:
    """Give a temporary path that becomes ``final`` when the block succeeds.

    The caller writes the temporary (and may set its mtime); on a normal exit it is
    fsynced and renamed over ``final``, on an exception it is removed and the exception
    propagates. Parent directories are created as needed.

    Args:
        final: The path the file should end up at.

    Yields:
        The temporary path to write to.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    cleanup_once(final.parent)
    tmp = temporary_path(final)
    try:
        yield tmp
        commit(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def commit(tmp: Path, final: Path) -> None:
    """Fsync ``tmp`` and rename it over ``final``."""
    if not tmp.exists():
        # The writer produced nothing (e.g. a 0-byte copy that never opened the file).
        tmp.touch()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_directory(final.parent)


_fsync_pool: concurrent.futures.ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: list[Path]) -> list[BaseException | None]:
    """Fsync many files at once; per file, None or the error.

    Concurrent fsyncs share journal commits: about 3x faster here than one after another,
    and unlike ``syncfs`` they do not wait for other programs' dirty data.
    """
    global _fsync_pool
    if len(paths) < 2:
        return [_capture(_fsync_path, p) for p in paths]
    with _fsync_pool_lock:
        if _fsync_pool is None:
            _fsync_pool = concurrent.futures.ThreadPoolExecutor(
                16, thread_name_prefix="hashsync-fsync"
            )
        pool = _fsync_pool
    return list(pool.map(lambda p: _capture(_fsync_path, p), paths))


def _capture(fn: Any, *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc
    return None


def write_files_atomically(files: list[tuple[Path, bytes]]) -> list[BaseException | None]:
    """Write many small files, each atomically, flushed together.

    Each file is written to a temporary, which is renamed over its final name only once its
    data is on disk (fsynced), so a file under its final name is always complete, as with
    :func:`atomic_destination`. The temporaries are fsynced concurrently rather than one
    after another, then renamed, then each directory involved is fsynced once (not once per
    file). After a crash before that last step some files may still have their old content,
    never a torn one.

    Returns:
        Per file, None or the error that kept it from being written (its temporary removed).
    """
    results: list[BaseException | None] = [None] * len(files)
    written: list[tuple[int, Path, Path]] = []
    for i, (final, data) in enumerate(files):
        tmp: Path | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            cleanup_once(final.parent)
            tmp = temporary_path(final)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            written.append((i, tmp, final))
        except (OSError, ValueError) as exc:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            results[i] = exc
    synced = _fsync_all([tmp for _, tmp, _ in written])
    directories: dict[Path, None] = {}
    for (i, tmp, final), failed in zip(written, synced, strict=True):
        try:
            if failed is not None:
                raise failed
            os.replace(tmp, final)
            directories[final.parent] = None
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            results[i] = exc
    for directory in directories:
        fsync_directory(directory)
    return results


class KeyLock:
    """An exclusive lock on one file path, held by a lock file next to it.

    The lock file ``.{name}.hashsync-lock`` records host, pid and time. A lock held by a dead
    process of this host is broken at once; one from another host (which cannot be checked)
    once it is older than ``stale_after`` seconds.

    With ``refresh`` the lock is a lease: a background thread touches the lock file every
    ``refresh`` seconds while it is held, and the lock file says so, so a holder that stops
    refreshing it for ``stale_after`` seconds (hung, or on a host that vanished) loses it to
    the next process that asks, on this host too.

    Args:
        path: The file to lock (it need not exist).
        timeout: Seconds to wait for the lock before giving up.
        stale_after: Age after which another host's lock (or any expired lease) is considered
            abandoned.
        refresh: Seconds between lease refreshes, or None for a plain lock.
        lock_path: Where the lock file goes, instead of next to ``path``.

    Raises:
        StorageUnavailable: From ``__enter__`` if the lock is not free within ``timeout``.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 60.0,
        stale_after: float = 600.0,
        refresh: float | None = None,
        lock_path: Path | None = None,
    ) -> None:
        self.lock_path = lock_path or path.with_name(f".{_short(path.name)}{LOCK_SUFFIX}")
        self.timeout = timeout
        self.stale_after = stale_after
        self.refresh = refresh
        self._token = secrets.token_hex(8)
        self._stop: threading.Event | None = None
        self._ino = -1
        #: Whether ``__enter__`` found the lock held and had to wait (or break it).
        self.waited = False

    def __enter__(self) -> KeyLock:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        body = json.dumps(
            {
                "host": HOST,
                "pid": os.getpid(),
                "time": time.time(),
                "token": self._token,
                "refresh": self.refresh,
            }
        ).encode()
        while True:
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.waited = True
                self._break_if_stale()
            except FileNotFoundError:
                self.lock_path.parent.mkdir(parents=True, exist_ok=True)
                continue
            else:
                try:
                    os.write(fd, body)
                    self._ino = os.fstat(fd).st_ino
                finally:
                    os.close(fd)
                if self.refresh:
                    self._start_refreshing()
                return self
            if time.monotonic() > deadline:
                raise StorageUnavailable(
                    errno.ETIMEDOUT,
                    f"lock {self.lock_path} still held after {self.timeout:g} s",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _break_if_stale(self) -> None:
        try:
            info = json.loads(self.lock_path.read_bytes() or b"{}")
            age = time.time() - self.lock_path.stat().st_mtime
        except (OSError, ValueError):
            # Vanished (fine, retry) or half-written by a holder still inside __enter__.
            return
        if info.get("host") == HOST and isinstance(info.get("pid"), int):
            # A live holder of a lease must also keep refreshing it.
            stale = not pid_alive(info["pid"]) or (
                bool(info.get("refresh")) and age > self.stale_after
            )
        else:
            stale = age > self.stale_after
        if stale:
            # Renaming first makes breaking atomic: of two breakers only one rename succeeds,
            # so neither can delete a fresh lock the other just created.
            grave = self.lock_path.with_name(self.lock_path.name + f".broken-{self._token}")
            try:
                os.rename(self.lock_path, grave)
            except FileNotFoundError:
                return
            try:
                moved = json.loads(grave.read_bytes() or b"{}")
            except (OSError, ValueError):
                moved = {}
            if moved.get("token") != info.get("token"):
                # Another breaker replaced the stale lock between our read and our rename:
                # we took a live lock, so put it back (link fails rather than overwrite).
                with contextlib.suppress(OSError):
                    os.link(grave, self.lock_path)
            with contextlib.suppress(FileNotFoundError):
                grave.unlink()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop is not None:
            _leases.release(self.lock_path)
            self._stop = None
        # Only our own lock file: a lease taken over while we hung is the new holder's.
        with contextlib.suppress(OSError):
            if os.stat(self.lock_path).st_ino == self._ino:
                self.lock_path.unlink()

    def _start_refreshing(self) -> None:
        _leases.hold(self.lock_path, float(self.refresh or 0))
        self._stop = threading.Event()  # marks "refreshing"; released in __exit__


class _LeaseRefresher:
    """One thread per process that touches every held lease file on time.

    A thread per lease would cost a thread start for every cached download; leases are
    many and short, so they share one.
    """

    def __init__(self) -> None:
        self._held: dict[Path, tuple[float, float]] = {}  # path -> (interval, next due)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._period = 60.0

    def hold(self, path: Path, every: float) -> None:
        with self._lock:
            self._held[path] = (every, time.monotonic() + every)
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="hashsync-leases", daemon=True
                )
                self._thread.start()
            elif every < self._period:
                self._wake.notify()  # a shorter period than the thread sleeps for

    def release(self, path: Path) -> None:
        with self._lock:
            self._held.pop(path, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [p for p, (_, at) in self._held.items() if at <= now]
                for p in due:
                    every = self._held[p][0]
                    self._held[p] = (every, now + every)
                # Waking on a fixed period (the shortest one held) instead of at each due time
                # keeps hold() from waking this thread for every short lease; with nothing
                # held the period stays, or the next hold() would wake it (a GIL handoff per
                # cached download).
                self._period = min(
                    (every for every, _ in self._held.values()), default=self._period
                )
            for p in due:
                with contextlib.suppress(OSError):
                    os.utime(p)
            with self._lock:
                self._wake.wait(self._period)


_leases = _LeaseRefresher()


class AtomicFile:
    """A file object that becomes its final name only when closed without an error."""

    def __init__(self, final: Path, mode: str, *, exclusive: bool, **kwargs: Any) -> None:
        self._final = final
        self._exclusive = exclusive
        cleanup_once(final.parent)
        self._tmp = temporary_path(final)
        self._file: IO[Any] = open(self._tmp, mode.replace("x", "w"), **kwargs)  # noqa: SIM115
        self._done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._file)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    @property
    def closed(self) -> bool:
        """Whether the file was closed (committed) or discarded."""
        return self._done

    def close(self) -> None:
        """Flush, fsync and rename the data into place."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
            if self._exclusive:
                # link() fails if the name exists, so "x" stays exclusive up to the end.
                os.link(self._tmp, self._final)
                self._tmp.unlink()
            else:
                commit(self._tmp, self._final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            raise

    def discard(self) -> None:
        """Throw the written data away; the key keeps its previous content."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __del__(self) -> None:
        # Never commit implicitly: a file dropped without close() may be incomplete.
        with contextlib.suppress(Exception):
            self.discard()


def changed_error(path: Path, key: str) -> FileChanged:
    """The error for a local file that changed while it was uploaded as ``key``."""
    error = FileChanged(f"{str(path)!r} changed while it was uploaded as {key!r}")
    error.path = str(path)
    return error
