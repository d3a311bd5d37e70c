"""TreeCache: a local directory built once, stored remotely under its input's content hash."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hashsync
from hashsync import atomic
from hashsync._progress import byte_counter, byte_progress
from hashsync._threads import run_on_threads
from hashsync.errors import (
    FileSystemError,
    HashsyncError,
    HashsyncWarning,
    IntegrityError,
    InvalidArgument,
    NotARegularFile,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    UnsafePath,
    WaitTimeout,
    describe,
)
from hashsync.storage.base import ObjectInfo, ReadWriteStorage, Storage, reporting_progress
from hashsync.storage.local import LocalStorage, SimpleLocalStorage, TemporaryLocalStorage
from hashsync.storage.registry import open_storage
from hashsync.treecache._lease import Lease, LeaseWatch, conditional_writes_honoured
from hashsync.treecache._manifest import (
    MANIFEST_KEY,
    MAX_MANIFEST_BYTES,
    META_DIR,
    PENDING_KEY,
    Manifest,
    check_segment,
    describe_tree,
    is_meta,
    tree_hash_of,
)
from hashsync.treecache._state import LocalState

Build = Callable[[Path], object]
_EXCLUDE_META = [f"{META_DIR}/*"]
_BUILD_MARK = ".hashsync-build-"
# A hostile or odd key (InvalidArgument) is one file's trouble too.
_FILE_ERRORS = (
    IntegrityError,
    NotFound,
    UnsafePath,
    NotARegularFile,
    FileSystemError,
    InvalidArgument,
    PreconditionFailed,  # the remote file changed during the sync: the next sync sees it
    IsADirectoryError,  # a remote key that cannot be a file here (a directory holds its name)
    NotADirectoryError,
    FileExistsError,
)
_WORKERS = 16


class _RemoteFailed(Exception):
    """A remote operation failed; carries the hashsync error that says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error


@contextlib.contextmanager
def _remote_errors() -> Iterator[None]:
    """Turn what a store can throw into :class:`_RemoteFailed`."""
    try:
        yield
    except (HashsyncError, OSError) as e:
        raise _RemoteFailed(e) from e


@dataclass
class TreeCacheStatus:
    """Where a TreeCache's copies stand (:meth:`TreeCache.status`, ``hashsync treecache status``).

    Attributes:
        local_dir: The local directory.
        remote_url: Where the remote copy lives (``{remote}/{name}-{key}``).
        local: ``"complete"`` (manifest and every file it names), ``"incomplete"``, ``"missing"``.
        remote: ``"complete"``, ``"incomplete"`` (objects without a valid manifest, or a
            manifest naming objects that are gone or different), ``"missing"``,
            ``"unreachable"`` (with :attr:`remote_error`).
        remote_error: Why the remote could not be read, if it could not.
        files: Base files in the manifest (local, else remote); ``bytes``: their total size.
        tree_hash: The base tree's :func:`hashsync.tree_hash`, from the manifest.
        derived_local_only: Derived files only this machine has (a sync uploads them).
        derived_remote_only: Derived files only the remote has (a sync downloads them).
        derived_different: Derived files both have with different content.
        lease: Who holds the build lease (host, pid, times), if anyone.
    """

    local_dir: str
    remote_url: str
    local: str
    remote: str
    remote_error: str | None = None
    files: int = 0
    bytes: int = 0
    tree_hash: str | None = None
    derived_local_only: list[str] = field(default_factory=list)
    derived_remote_only: list[str] = field(default_factory=list)
    derived_different: list[str] = field(default_factory=list)
    lease: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The status as plain JSON-ready data (what ``--json`` prints)."""
        return asdict(self)


@dataclass
class _Remote:
    storage: Storage
    manifest: Manifest | None
    objects: list[ObjectInfo]
    state: str
    why: str = ""


class TreeCache:
    """A local directory mirrored at ``{remote}/{name}-{key}/``, built at most once.

    ``key`` names what the directory was built from (a content hash of its input, see
    :meth:`for_source`), so every machine that needs the same build finds it under the same
    name. The remote copy is complete once ``.hashsync/manifest.json`` exists there (uploaded
    after every file it names) and every object it names has the size and ETag it records.
    Files added to the directory later (indexes, statistics: *derived files*) are not in the
    manifest and are synced both ways by :meth:`ensure` and :meth:`sync`. Deletions are not
    synced: a derived file missing on one side is copied from the other.

    Remote failures (an unreachable endpoint, missing credentials, access denied, a missing
    bucket) never stop local work in :meth:`ensure` and :meth:`sync`: they become a
    :class:`~hashsync.errors.HashsyncWarning`. :meth:`pull` and :meth:`push` are explicit
    transfers and raise instead.

    The local directory holds the tree and its manifest only, the same bytes on every
    machine. What this machine knows about it (file stats that spare re-hashing, the derived
    files last seen in sync) lives under ``$HASHSYNC_CACHE_DIR/treecache/local/``, keyed by the
    directory's resolved path; losing it costs a re-hash, never a file.

    Example:
        >>> cache = TreeCache.for_source("raw/", "prepared/", "s3://bucket/caches", name="prep")
        >>> path = cache.ensure(lambda out: preprocess("raw/", out))  # doctest: +SKIP
        >>> cache.sync()  # after writing an index into path  # doctest: +SKIP
        (0, 1)

    Args:
        local_dir: The local directory (created when built or downloaded).
        remote: Where copies are kept: ``s3://bucket/prefix`` (any S3-compatible store), or
            a directory on a shared filesystem (a path or ``file://``).
        name: What is cached (letters, digits, ``.``, ``_``, ``-``), e.g. ``"slipcache"``.
        key: The content hash of the input (same characters), e.g. from :func:`hashsync.tree_hash`.
        verbose: Show byte progress bars on a terminal and say what is being done.
        lease_ttl: Seconds without a refresh after which a builder's lease counts as abandoned
            (it is refreshed every quarter of this while building and uploading).
        wait_timeout: Seconds to wait for another machine's build before building here
            (with ``build``; without, :class:`~hashsync.errors.WaitTimeout`).
        poll_interval: Seconds between checks while waiting (default: ``lease_ttl / 8``,
            at most 5).
        endpoint_url: Endpoint of an S3-compatible store for ``s3://`` remotes.
        storage_options: Further options for the remote storage (see
            :func:`hashsync.storage.open_storage`).

    Raises:
        InvalidArgument: A bad name, key, remote or option.
    """

    def __init__(
        self,
        local_dir: str | os.PathLike[str],
        remote: str | os.PathLike[str],
        *,
        name: str,
        key: str,
        verbose: bool = True,
        lease_ttl: float = 60.0,
        wait_timeout: float = 3600.0,
        poll_interval: float | None = None,
        endpoint_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = check_segment(name, "name")
        self.key = check_segment(key, "key")
        if not isinstance(local_dir, str | os.PathLike) or not os.fspath(local_dir):
            raise InvalidArgument(f"local_dir must be a path, not {local_dir!r}")
        text = os.fspath(remote) if isinstance(remote, str | os.PathLike) else ""
        _scheme, scheme_sep, location = str(text).partition("://")
        if (
            not isinstance(text, str)
            or not text.strip("/")
            or (scheme_sep and not location.strip("/"))
        ):
            # "s3://" (an empty bucket variable) must not become a local folder named "s3:".
            raise InvalidArgument(
                f"remote must be a URL with a location, or a directory, not {remote!r}"
            )
        if not lease_ttl > 0 or not wait_timeout >= 0:
            raise InvalidArgument("lease_ttl must be positive and wait_timeout not negative")
        self.local_dir = Path(local_dir).expanduser().absolute()
        self.remote_url = f"{text.rstrip('/')}/{self.name}-{self.key}"
        self.verbose = verbose
        self.lease_ttl = float(lease_ttl)
        self.wait_timeout = float(wait_timeout)
        self.poll_interval = (
            float(poll_interval) if poll_interval is not None else min(5.0, self.lease_ttl / 8)
        )
        self._options = dict(storage_options or {})
        if endpoint_url is not None:
            self._options["endpoint_url"] = endpoint_url
        self._storage: Storage | None = None
        self._checked: ReadWriteStorage | None = None
        self._native_conditions = True
        self._state_warned = False

    @classmethod
    def for_source(
        cls,
        source_dir: str | os.PathLike[str],
        local_dir: str | os.PathLike[str],
        remote: str | os.PathLike[str],
        *,
        name: str,
        **options: Any,
    ) -> TreeCache:
        """A TreeCache keyed by the :func:`hashsync.tree_hash` (SHA-256) of ``source_dir``.

        Args:
            source_dir: The input the directory is built from.
            local_dir: See :class:`TreeCache`.
            remote: See :class:`TreeCache`.
            name: See :class:`TreeCache`.
            **options: The other arguments of :class:`TreeCache`.

        Raises:
            NotFound: ``source_dir`` does not exist.
        """
        return cls(local_dir, remote, name=name, key=hashsync.tree_hash(source_dir), **options)

    def __repr__(self) -> str:
        return f"TreeCache({str(self.local_dir)!r}, {self.remote_url!r})"

    # -- the remote ------------------------------------------------------------------------

    def _remote(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.remote_url, **self._options)
        return self._storage

    def _for_writing(self, storage: Storage) -> ReadWriteStorage:
        """``storage`` for leases and uploads, once its store's conditions are checked.

        The probe writes, so it runs only when something is about to be written.
        """
        writable = self._writable(storage)
        if self._checked is None:
            self._native_conditions = conditional_writes_honoured(writable)
            if not self._native_conditions:
                if writable.claims_conditions:
                    claiming = open_storage(
                        self.remote_url, **{**self._options, "conditional_writes": "claim"}
                    )
                    writable = self._writable(claiming)
                warnings.warn(
                    f"the store behind {self.remote_url} ignores conditional writes "
                    "(If-None-Match / If-Match); TreeCache falls back to claim objects and "
                    "read-back leases, so two machines building at the same moment may both "
                    "build (the copy stays consistent: its manifest is checked on every read)",
                    HashsyncWarning,
                    stacklevel=4,
                )
            self._checked = writable
        return self._checked

    def _writable(self, storage: Storage) -> ReadWriteStorage:
        if not isinstance(storage, ReadWriteStorage):
            raise PermissionDenied(f"{self.remote_url} is read-only: nothing can be uploaded")
        return storage

    def _read_remote(self) -> _Remote:
        with _remote_errors():
            storage = self._remote()
            objects = _tree_objects(storage)
            try:
                data = storage.read_bytes(MANIFEST_KEY, max_size=MAX_MANIFEST_BYTES)
            except NotFound:
                state = "incomplete" if objects else "missing"
                return _Remote(storage, None, objects, state, "no manifest")
        try:
            manifest = Manifest.from_json(data, name=self.name, key=self.key)
        except IntegrityError as e:
            return _Remote(storage, None, objects, "incomplete", f"bad manifest: {e}")
        bad = manifest.missing_or_different(objects)
        if bad:
            return _Remote(
                storage,
                None,
                objects,
                "incomplete",
                f"{len(bad)} files of the manifest missing or different, e.g. {bad[0]!r}",
            )
        return _Remote(storage, manifest, objects, "complete")

    def _say(self, text: str) -> None:
        if self.verbose:
            import sys

            print(f"hashsync treecache: {text}", file=sys.stderr)

    def _warn(self, text: str) -> None:
        warnings.warn(text, HashsyncWarning, stacklevel=3)

    # -- the local copy --------------------------------------------------------------------

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        """One process at a time changes the local directory and its bookkeeping.

        Two processes on one machine (a notebook and a training job) would otherwise each
        rewrite its bookkeeping from their own snapshot, or restore files the other is
        downloading. The lock is a refreshed lease next to the directory, so a killed holder
        frees it.
        """
        self.local_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic.KeyLock(
            self.local_dir, timeout=self.wait_timeout, stale_after=60.0, refresh=10.0
        ):
            yield

    def _local_manifest(self, *, save: bool = True) -> Manifest | None:
        """The local copy's manifest if the copy is complete (every file there, right size).

        Args:
            save: Record what was verified (and move an earlier version's bookkeeping out of
                the copy). Only under the local lock: :meth:`status` reads without it.
        """
        path = self.local_dir / MANIFEST_KEY
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise InvalidArgument(f"{self.local_dir} is not a directory") from None
        except PermissionError as e:
            raise PermissionDenied(e.errno, f"cannot read {path}: {e.strerror}") from None
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict) and (doc.get("name"), doc.get("key")) != (self.name, self.key):
            raise InvalidArgument(
                f"{self.local_dir} holds {doc.get('name')}-{doc.get('key')}, not "
                f"{self.name}-{self.key}; use another local directory"
            )
        try:
            manifest = Manifest.from_json(data, name=self.name, key=self.key)
        except IntegrityError as e:
            self._warn(f"{path} is damaged ({e}); the local copy counts as incomplete")
            return None
        state = self._load_state()
        known = state.stats
        stats: dict[str, list[int]] = {}
        changed: list[str] = []
        for rel, rec in manifest.files.items():
            try:
                st = os.lstat(self.local_dir / rel)
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode) or st.st_size != rec.size:
                return None
            stats[rel] = [st.st_size, st.st_mtime_ns, st.st_ino]
            if known.get(rel) != stats[rel]:
                changed.append(rel)
        if changed:
            digests = hashsync.hash_files(
                [self.local_dir / rel for rel in changed], "sha256", return_exceptions=True
            )
            edited = [
                rel
                for rel, digest in zip(changed, digests, strict=True)
                if digest != manifest.files[rel].sha256
            ]
            if edited:
                self._warn(
                    f"{len(edited)} files of the copy in {self.local_dir} were changed after it "
                    f"was made (e.g. {edited[0]}); they will be restored"
                )
                return None
        if save and (state.legacy or stats != known):
            state.stats = stats
            self._save_state(state)
        return manifest

    def _load_state(self) -> LocalState:
        return LocalState.load(self.local_dir, name=self.name, key=self.key)

    def _save_state(self, state: LocalState) -> None:
        failed = state.save(self.local_dir, name=self.name, key=self.key)
        if failed is not None and not self._state_warned:
            self._state_warned = True
            self._warn(
                f"cannot record this machine's bookkeeping of {self.local_dir} under "
                f"$HASHSYNC_CACHE_DIR ({describe(failed)}); the copy is re-hashed on every "
                "use, and a derived file changed on one side may be kept as a conflict copy"
            )

    def _seal_local(self, manifest: Manifest) -> None:
        """Mark the local copy complete: write the manifest, then record its files' stats.

        What this machine knew of derived files survives only if it described the copy
        being sealed (a restore of edited base files), not an earlier copy in its place.
        """
        state = self._load_state()
        stats = {}
        for rel in manifest.files:
            st = os.lstat(self.local_dir / rel)
            stats[rel] = [st.st_size, st.st_mtime_ns, st.st_ino]
        # The manifest first: the state names the manifest it describes, and a crash before
        # the state is written only costs one re-hash.
        self._write_local_meta(MANIFEST_KEY, manifest.to_json())
        state.stats = stats
        self._save_state(state)

    def _local_storage(self) -> LocalStorage:
        return SimpleLocalStorage(self.local_dir)

    def _write_local_meta(self, rel: str, data: bytes) -> None:
        path = self.local_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        failed = atomic.write_files_atomically([(path, data)])[0]
        if failed is not None:
            raise failed

    def _synced(self) -> dict[str, str]:
        return dict(self._load_state().synced)

    def _save_synced(self, synced: dict[str, str]) -> None:
        state = self._load_state()
        if state.synced == synced and not state.legacy:
            return  # a no-op sync rewrites nothing (the state also holds every file's stats)
        state.synced = synced
        self._save_state(state)

    def _part_size(self) -> int:
        with contextlib.suppress(_RemoteFailed):
            with _remote_errors():
                return int(self._remote().part_size)
        return hashsync.DEFAULT_PART_SIZE

    # -- building --------------------------------------------------------------------------

    def _clean_abandoned_builds(self) -> None:
        parent = self.local_dir.parent
        mark = f".{self.local_dir.name}{_BUILD_MARK}"
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                if not entry.name.startswith(mark):
                    continue
                host, _, pid = entry.name[len(mark) :].partition("-")
                pid = pid.partition("-")[0]
                if host == atomic.HOST and pid.isdigit() and not atomic.pid_alive(int(pid)):
                    shutil.rmtree(entry.path, ignore_errors=True)

    def _build_here(self, build: Build) -> Manifest:
        """Run ``build`` into a fresh staging directory, describe it, move it into place."""
        self.local_dir.parent.mkdir(parents=True, exist_ok=True)
        self._clean_abandoned_builds()
        staging = self.local_dir.with_name(
            f".{self.local_dir.name}{_BUILD_MARK}{atomic.HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        staging.mkdir()
        try:
            self._say(f"building {self.name}-{self.key[:12]} in {staging}")
            build(staging)
            shutil.rmtree(staging / META_DIR, ignore_errors=True)
            part_size = self._part_size()
            files = describe_tree(staging, part_size)
            manifest = Manifest(
                name=self.name,
                key=self.key,
                files=files,
                part_size=part_size,
                tree_hash=tree_hash_of(files),
            )
            self._move_into_place(staging, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._seal_local(manifest)
        return manifest

    def _move_into_place(self, staging: Path, manifest: Manifest) -> None:
        with contextlib.suppress(OSError):
            self.local_dir.rmdir()  # only if empty
        try:
            os.rename(staging, self.local_dir)
            return
        except OSError:
            pass  # the directory has files (an interrupted copy): merge into it
        target = self._local_storage()
        target.create_root()
        source = SimpleLocalStorage(staging)
        for rel in manifest.files:
            target.copy_from(rel, source)

    # -- transfers -------------------------------------------------------------------------

    def _transfer(
        self, keys: list[str], total: int, what: str, one: Callable[[str], object]
    ) -> None:
        """``one(key)`` for every key on a pool of threads, with one byte bar for all."""
        if not keys:
            return
        with byte_progress(what, enabled=self.verbose) as bar:
            moved = byte_counter(bar, total)

            def run(key: str) -> None:
                with reporting_progress(moved):
                    one(key)

            run_on_threads(run, keys, workers=min(_WORKERS, len(keys)))

    def _download(self, remote: _Remote, *, up: bool) -> tuple[int, int]:
        """Restore the base files from the remote copy, then sync derived files.

        Only base files the local directory lacks (or holds with other content) are fetched,
        each verified against its ETag while it arrives and against the manifest's SHA-256
        after; local derived files are left to the derived sync, so an edit made here is
        uploaded or kept as a conflict copy, never overwritten.

        Returns:
            Files downloaded and uploaded.
        """
        manifest = remote.manifest
        assert manifest is not None
        storage = remote.storage
        here = self._local_storage()
        here.create_root()
        present = hashsync.scan(
            self.local_dir,
            algorithm="etag",
            part_size=manifest.part_size,
            filters=[("exclude", p) for p in _EXCLUDE_META],
        )
        todo = manifest.not_matching({e.path: (e.size, e.digest) for e in present})
        if todo:
            self._say(f"downloading {self.name}-{self.key[:12]} from {self.remote_url}")
        with _remote_errors():
            total = sum(manifest.files[rel].size for rel in todo)
            self._transfer(todo, total, "download", lambda rel: storage.copy(rel, here))
            # Verified against the ETags listed before; the manifest must still describe the
            # copy now (a repair could have replaced it meanwhile).
            after = _tree_objects(storage)
        bad = manifest.missing_or_different(after)
        if bad:
            raise _RemoteFailed(
                IntegrityError(f"{self.remote_url} changed during the download ({bad[0]!r})")
            )
        digests = hashsync.hash_files([self.local_dir / rel for rel in todo], "sha256")
        wrong = [r for r, d in zip(todo, digests, strict=True) if d != manifest.files[r].sha256]
        if wrong:
            raise _RemoteFailed(
                IntegrityError(
                    f"the manifest of {self.remote_url} gives {wrong[0]!r} another SHA-256 than "
                    "its content has (the ETag matched): the manifest is wrong"
                )
            )
        self._seal_local(manifest)
        current = _Remote(storage, manifest, after, "complete")
        down_more, uploaded = self._sync_derived(current, manifest, down=True, up=up)
        return len(todo) + down_more, uploaded

    def _upload(
        self, storage: ReadWriteStorage, manifest: Manifest, lease: Lease, *, down: bool
    ) -> int:
        """Upload the base files while holding ``lease``, the manifest last; sync derived files.

        Derived files already on the remote (other machines' indexes) are left alone: the
        derived sync that follows merges them like any other.

        Returns:
            Files uploaded.
        """
        here = self._local_storage()
        with _remote_errors():
            lease.confirm()  # before anything is replaced: a taken-over lease stops here
            theirs = {i.key: i for i in _tree_objects(storage)}
            with contextlib.suppress(NotFound):
                storage.delete(MANIFEST_KEY)  # a damaged one: readers must not trust it
            for rel in self._abandoned_files(storage, manifest):
                if rel in theirs:
                    with contextlib.suppress(NotFound):
                        storage.delete(rel)
                    del theirs[rel]
            pending = {"files": sorted(manifest.files), "lease": lease.owner}
            storage.write_bytes(PENDING_KEY, json.dumps(pending).encode())
            todo = manifest.missing_or_different(theirs.values())
            self._say(f"uploading {self.name}-{self.key[:12]} to {self.remote_url}")
            total = sum(manifest.files[rel].size for rel in todo)
            self._transfer(todo, total, "upload", lambda rel: storage.copy_from(rel, here))
            listing = _tree_objects(storage)
            bad = manifest.missing_or_different(listing)
            if bad:
                raise IntegrityError(
                    f"after the upload {self.remote_url} does not match the manifest: {bad[0]!r}"
                )
            lease.confirm()
            try:
                storage.write_bytes(MANIFEST_KEY, manifest.to_json(), create_only=True)
            except PreconditionFailed:
                self._warn(f"another machine completed {self.remote_url} first; kept its copy")
                return len(todo)
            with contextlib.suppress(NotFound):
                storage.delete(PENDING_KEY)
        current = _Remote(storage, manifest, listing, "complete")
        return len(todo) + self._sync_derived(current, manifest, down=down, up=True)[1]

    def _abandoned_files(self, storage: Storage, manifest: Manifest) -> list[str]:
        """Files a crashed builder announced and this build does not have (remote junk)."""
        try:
            doc = json.loads(storage.read_bytes(PENDING_KEY, max_size=MAX_MANIFEST_BYTES))
        except (NotFound, ValueError, IntegrityError):
            return []
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, list):
            return []
        return [
            f for f in files if isinstance(f, str) and f not in manifest.files and not is_meta(f)
        ]

    def _claim(self, storage: ReadWriteStorage, stale: str | None = None) -> Lease | None:
        """Take the build lease (over ``stale``, if given) and confirm the copy is still missing.

        The re-check matters: a builder may have written its manifest and released the lease
        between this process's first look and its claim; uploading now would replace a good
        copy.
        """
        with _remote_errors():
            storage = self._for_writing(storage)
            lease = Lease(storage, ttl=self.lease_ttl, native=self._native_conditions)
            got = lease.acquire() if stale is None else lease.take_over(stale)
            if not got:
                return None
            try:
                complete = self._read_remote().manifest is not None
            except BaseException:
                lease.release()
                raise
        if complete:
            lease.release()
            return None
        return lease

    def _publish(self, remote: _Remote, manifest: Manifest) -> int:
        """Upload a complete local copy to a remote without one, if no one else is."""
        with _remote_errors():
            storage = self._writable(remote.storage)
        lease = self._claim(storage)
        if lease is None:
            self._say("another machine is uploading (or has uploaded) this copy; not uploading")
            return 0
        lease.start_refreshing()
        try:
            return self._upload(lease.storage, manifest, lease, down=True)
        finally:
            lease.release()

    def _build_and_publish(self, storage: ReadWriteStorage, build: Build, lease: Lease) -> None:
        lease.start_refreshing()
        try:
            manifest = self._build_here(build)
            try:
                self._upload(storage, manifest, lease, down=True)
            except _RemoteFailed as e:
                self._warn(f"built {self.local_dir} but could not upload it: {e}")
        finally:
            lease.release()

    def _build_or_wait(self, remote: _Remote, build: Build | None) -> None:
        """Neither copy is complete: claim the key and build, or wait for whoever has it."""
        storage = remote.storage
        writable = storage if isinstance(storage, ReadWriteStorage) else None
        watch = LeaseWatch(storage, ttl=self.lease_ttl)
        deadline = time.monotonic() + self.wait_timeout
        said = False
        while True:
            if build is not None and writable is not None:
                lease = self._claim(writable)
                if lease is not None:
                    self._build_and_publish(lease.storage, build, lease)
                    return
            with _remote_errors():
                etag, stale = watch.poll()
            if etag is None or stale:
                current = self._read_remote()
                if current.manifest is not None:
                    self._download(current, up=True)
                    return
            if etag is None:
                if build is None:
                    raise NotFound(
                        f"no complete copy at {self.remote_url} and no local copy in "
                        f"{self.local_dir}; pass build= to make one"
                    )
                if writable is None:
                    self._build_here(build)
                    return
                continue  # the holder let go: try to claim it
            if stale and build is None:
                raise NotFound(
                    f"no complete copy at {self.remote_url}: its builder "
                    f"({_holder(watch.holder)}) stopped refreshing its lease; pass build= to "
                    "take over"
                )
            if stale and build is not None and writable is not None:
                lease = self._claim(writable, stale=etag)
                if lease is not None:
                    self._say(f"took over the abandoned build lease of {_holder(watch.holder)}")
                    self._build_and_publish(lease.storage, build, lease)
                    return
                continue
            if time.monotonic() > deadline:
                if build is None:
                    raise WaitTimeout(
                        f"waited {self.wait_timeout:g} s for {_holder(watch.holder)} to finish "
                        f"building {self.remote_url}"
                    )
                self._warn(
                    f"waited {self.wait_timeout:g} s for {_holder(watch.holder)} to build "
                    f"{self.remote_url}; building here without uploading"
                )
                self._build_here(build)
                return
            if not said:
                self._say(f"waiting for {_holder(watch.holder)}, who is building this copy")
                said = True
            time.sleep(self.poll_interval)
            with _remote_errors():
                if storage.exists(MANIFEST_KEY):
                    current = self._read_remote()
                    if current.manifest is not None:
                        self._download(current, up=True)
                        return

    # -- derived files ---------------------------------------------------------------------

    def _derived_plan(
        self, remote: _Remote, manifest: Manifest
    ) -> tuple[dict[str, Any], dict[str, ObjectInfo], list[tuple[str, str]]]:
        listing = hashsync.scan(
            self.local_dir,
            algorithm="etag",
            part_size=manifest.part_size,
            filters=[("exclude", p) for p in _EXCLUDE_META],
        )
        local = {e.path: e for e in listing if e.path not in manifest.files}
        theirs = {i.key: i for i in remote.objects if i.key not in manifest.files}
        return local, theirs, list(listing.errors)

    def _same(self, rel: str, entry: Any, info: ObjectInfo) -> bool:
        if entry.size != info.size or info.hash is None:
            return False
        if entry.digest == info.hash:
            return True
        # Different part sizes give different multipart ETags for the same bytes.
        return "-" in info.hash and hashsync.etag_matches(self.local_dir / rel, info.hash)

    def _sync_derived(
        self, remote: _Remote, manifest: Manifest, *, down: bool, up: bool
    ) -> tuple[int, int]:
        storage = remote.storage
        local, theirs, errors = self._derived_plan(remote, manifest)
        for rel, why in errors:
            self._warn(f"derived file {rel} could not be read and is not synced: {why}")
        unreadable = {rel for rel, _ in errors}
        synced = self._synced()
        here = self._local_storage()
        downloaded = uploaded = 0

        def fetch(rel: str) -> None:
            nonlocal downloaded
            storage.copy(rel, here)
            downloaded += 1

        # A read-only remote, or credentials that may read but not write, still get downloads.
        can_send = [up and isinstance(storage, ReadWriteStorage)]

        def send(rel: str, expected: str | None) -> bool:
            nonlocal uploaded
            if not can_send[0]:
                return False
            try:
                self._for_writing(storage).copy_from_if_overwriting_hash(rel, expected, here)
            except PreconditionFailed:
                self._warn(f"{rel} changed on {self.remote_url} during the sync; sync again")
                return False
            except PermissionError as e:  # PermissionDenied, or a directory store's EACCES
                can_send[0] = False
                self._warn(
                    f"derived files cannot be uploaded to {self.remote_url} ({describe(e)}); "
                    "downloading only"
                )
                return False
            uploaded += 1
            return True

        def step(rel: str) -> None:
            nonlocal downloaded, uploaded
            mine, info = local.get(rel), theirs.get(rel)
            if info is None:
                if up and mine is not None and send(rel, None):
                    synced[rel] = mine.digest
                return
            if mine is None:
                if down:
                    fetch(rel)
                    synced[rel] = info.hash or ""
                return
            if self._same(rel, mine, info):
                synced[rel] = info.hash or ""
                return
            base = synced.get(rel)
            if base is not None and base == info.hash:
                if up and send(rel, info.hash):
                    synced[rel] = mine.digest
            elif base is not None and base == mine.digest:
                if down:
                    fetch(rel)
                    synced[rel] = info.hash or ""
            elif down and can_send[0]:
                d, u, loser = self._resolve_conflict(storage, rel, mine, info)
                downloaded += d
                uploaded += u
                for name in (rel, loser):
                    synced[name] = here.get_hash(name)
            else:
                self._warn(
                    f"{rel} was changed both here and on {self.remote_url}; "
                    "`sync` keeps the newer and the other as a .conflict copy"
                )

        with (
            _remote_errors(),
            byte_progress("derived files", enabled=self.verbose) as bar,
            reporting_progress(byte_counter(bar)),
        ):
            try:
                for rel in sorted(set(local) | set(theirs)):
                    if rel in unreadable:
                        continue
                    try:
                        step(rel)
                    except _FILE_ERRORS as e:
                        # One file's trouble (changed while read, vanished, a link in the
                        # way) skips that file; the store's trouble stops the sync.
                        self._warn(f"derived file {rel} not synced: {describe(e)}")
            finally:
                self._save_synced(synced)
        return downloaded, uploaded

    def _resolve_conflict(
        self, storage: Storage, rel: str, mine: Any, info: ObjectInfo
    ) -> tuple[int, int, str]:
        """Keep the newer version as ``rel`` on both sides and the other as a conflict copy.

        The copy's name carries the losing version's time and the start of its ETag, so two
        conflicts in the same second (or one resolved on two machines) never share a name
        unless they hold the same bytes. The losing version is saved before anything replaces
        it.

        Returns:
            Files downloaded, files uploaded, and the conflict copy's name.
        """
        writable = self._for_writing(storage)
        here = self._local_storage()
        local_time = mine.mtime_ns / 1e9
        if local_time >= info.last_modified.timestamp():
            loser = _conflict_name(rel, info.last_modified, info.hash or "")
            if not (self.local_dir / loser).exists():
                with TemporaryLocalStorage(dir=self.local_dir / META_DIR) as scratch:
                    storage.copy(rel, scratch)
                    if not hashsync.etag_matches(scratch.path(rel), info.hash or ""):
                        raise PreconditionFailed(f"{rel} changed on {self.remote_url} meanwhile")
                    os.replace(scratch.path(rel), self.local_dir / loser)
            writable.copy_from_if_overwriting_hash(rel, info.hash, here)
            sent = 1
        else:
            when = datetime.datetime.fromtimestamp(local_time, datetime.UTC)
            loser = _conflict_name(rel, when, mine.digest or "")
            os.replace(self.local_dir / rel, self.local_dir / loser)
            storage.copy(rel, here)
            sent = 0
        try:
            writable.copy_from_if_overwriting_hash(loser, None, here)
            sent += 1
        except PreconditionFailed:
            if storage.get_hash(loser) != here.get_hash(loser):
                self._warn(
                    f"{self.remote_url} has another file named {loser}; kept both as they are"
                )
        self._warn(
            f"{rel} was changed both here and on {self.remote_url}: kept the newer, the other "
            f"is {loser}"
        )
        return 1, sent, loser

    # -- public operations -----------------------------------------------------------------

    def ensure(self, build: Build | None = None) -> Path:
        """Make the local directory hold the copy, whichever side has it; return its path.

        Remote complete and local missing: download it, verified. Remote missing: claim the
        build lease, ``build(path)`` into an empty directory (moved into place when it
        returns), upload it, write the manifest last; other machines calling ``ensure`` meanwhile
        wait for that manifest and download, and take over if the builder stops refreshing its
        lease. Both complete: sync derived files both ways. Local complete and remote missing:
        upload. Remote failures become warnings; the local copy (or a local build) is used.

        Args:
            build: Called with a directory to fill when no copy exists anywhere.

        Returns:
            The local directory.

        Raises:
            NotFound: No copy anywhere (or the remote unreadable) and no ``build``.
            WaitTimeout: Without ``build``, another machine's build took longer than
                ``wait_timeout``.
            InvalidArgument: The local directory holds another key's copy.
        """
        if build is not None and not callable(build):
            raise InvalidArgument(f"build must be callable as build(path), not {build!r}")
        with self._local_lock():
            self._ensure(build)
        return self.local_dir

    def _ensure(self, build: Build | None) -> None:
        local = self._local_manifest()
        try:
            remote = self._read_remote()
            if local is not None and remote.manifest is not None:
                self._sync_both(remote, local)
            elif remote.manifest is not None:
                self._download(remote, up=True)
            elif local is not None:
                self._publish(remote, local)
            else:
                self._build_or_wait(remote, build)
        except _RemoteFailed as e:
            if self._local_manifest() is not None:
                self._warn(f"remote cache unavailable, using the local copy: {e}")
            elif build is not None:
                self._warn(f"remote cache unavailable, building locally: {e}")
                self._build_here(build)
            else:
                raise NotFound(
                    f"no local copy in {self.local_dir}, no build function, and the remote "
                    f"cache is unavailable: {e}"
                ) from e.error

    def _sync_both(self, remote: _Remote, local: Manifest) -> tuple[int, int]:
        assert remote.manifest is not None
        if remote.manifest.tree_hash != local.tree_hash:
            self._warn(
                f"{self.local_dir} was built separately and differs from {self.remote_url}; "
                "derived files are not synced (remove the local directory to adopt the remote)"
            )
            return 0, 0
        return self._sync_derived(remote, local, down=True, up=True)

    def sync(self, *, strict: bool = False) -> tuple[int, int]:
        """Sync derived files both ways; return ``(downloaded, uploaded)``.

        A file on one side only is copied to the other. A file changed on one side since the
        last sync replaces the other's copy. A file changed on both keeps the newer (by
        modification time) under its name and the other as ``NAME.conflict-<UTC time>``, on
        both sides, with a warning. With no complete remote copy, the local copy is uploaded.

        Args:
            strict: Raise remote failures instead of warning and returning ``(0, 0)``.

        Raises:
            NotFound: There is no complete local copy (call :meth:`ensure` first).
            StorageUnavailable, PermissionDenied: With ``strict``, the remote failed.
        """
        with self._local_lock():
            return self._sync(strict)

    def _sync(self, strict: bool) -> tuple[int, int]:
        local = self._require_local()
        try:
            remote = self._read_remote()
            if remote.manifest is None:
                return 0, self._publish(remote, local)
            return self._sync_both(remote, local)
        except _RemoteFailed as e:
            if strict:
                raise e.error from None
            self._warn(f"remote cache unavailable, nothing synced: {e}")
            return 0, 0

    def _require_local(self) -> Manifest:
        local = self._local_manifest()
        if local is None:
            raise NotFound(f"no complete copy in {self.local_dir} (call ensure() or pull first)")
        return local

    def pull(self) -> int:
        """Download the remote copy, or only its new derived files; return files downloaded.

        Raises:
            NotFound: The remote has no complete copy.
            StorageUnavailable, PermissionDenied: The remote cannot be read.
        """
        with self._local_lock():
            return self._pull()

    def _pull(self) -> int:
        try:
            remote = self._read_remote()
            if remote.manifest is None:
                raise NotFound(f"no complete copy at {self.remote_url} ({remote.why})")
            local = self._local_manifest()
            if local is None:
                return self._download(remote, up=False)[0]
            return self._sync_derived(remote, local, down=True, up=False)[0]
        except _RemoteFailed as e:
            raise e.error from None

    def push(self) -> int:
        """Upload the local copy, or only its new derived files; return files uploaded.

        Raises:
            NotFound: There is no complete local copy.
            PreconditionFailed: Another machine is uploading this copy right now.
            StorageUnavailable, PermissionDenied: The remote cannot be written.
        """
        with self._local_lock():
            return self._push()

    def _push(self) -> int:
        local = self._require_local()
        try:
            remote = self._read_remote()
            if remote.manifest is None:
                lease = self._claim(self._writable(remote.storage))
                if lease is None:
                    raise PreconditionFailed(
                        f"another machine is uploading (or has uploaded) {self.remote_url}"
                    )
                lease.start_refreshing()
                try:
                    return self._upload(lease.storage, local, lease, down=False)
                finally:
                    lease.release()
            if remote.manifest.tree_hash != local.tree_hash:
                raise PreconditionFailed(
                    f"{self.remote_url} holds a different build of this key; not overwritten"
                )
            return self._sync_derived(remote, local, down=False, up=True)[1]
        except _RemoteFailed as e:
            raise e.error from None

    def status(self) -> TreeCacheStatus:
        """Report both copies, derived-file differences and the lease; changes nothing."""
        local = self._local_manifest(save=False)
        if local is not None:
            local_state = "complete"
        elif self.local_dir.exists() and any(self.local_dir.iterdir()):
            local_state = "incomplete"
        else:
            local_state = "missing"
        status = TreeCacheStatus(str(self.local_dir), self.remote_url, local_state, "missing")
        if local is not None:
            status.files, status.bytes, status.tree_hash = (
                len(local.files),
                local.total_bytes,
                local.tree_hash,
            )
        try:
            remote = self._read_remote()
            with _remote_errors():
                watch = LeaseWatch(remote.storage, ttl=self.lease_ttl)
                if watch.poll()[0] is not None:
                    status.lease = watch.holder or {"holder": "unknown"}
        except _RemoteFailed as e:
            status.remote, status.remote_error = "unreachable", str(e)
            return status
        status.remote = remote.state
        if remote.state == "incomplete":
            status.remote_error = remote.why
        base = local or remote.manifest
        if base is not None and local is None:
            status.files, status.bytes, status.tree_hash = (
                len(base.files),
                base.total_bytes,
                base.tree_hash,
            )
        if local is not None and remote.manifest is not None:
            mine, theirs, _ = self._derived_plan(remote, local)
            status.derived_local_only = sorted(set(mine) - set(theirs))
            status.derived_remote_only = sorted(set(theirs) - set(mine))
            status.derived_different = sorted(
                r for r in set(mine) & set(theirs) if not self._same(r, mine[r], theirs[r])
            )
        return status


def _tree_objects(storage: Storage) -> list[ObjectInfo]:
    """The remote copy's objects, without its bookkeeping (``.hashsync/``)."""
    return [i for i in storage.list() if not is_meta(i.key)]


def _holder(holder: dict[str, Any]) -> str:
    if holder.get("host") and holder.get("pid"):
        return f"process {holder['pid']} on {holder['host']}"
    return "another process"


def _conflict_name(rel: str, when: datetime.datetime, digest: str) -> str:
    stamp = when.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{rel}.conflict-{stamp}-{digest[:8]}"
