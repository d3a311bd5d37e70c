"""TreeCache: a local directory built once, stored remotely under its input's content hash."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument, NotFound, PreconditionFailed
from hashsync.treecache._lease import LeaseWatch
from hashsync.treecache._local import Build
from hashsync.treecache._manifest import Manifest, check_segment
from hashsync.treecache._remote import Remote, RemoteFailed, remote_errors
from hashsync.treecache._transfers import Transfers

__all__ = ["TreeCache", "TreeCacheStatus"]


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


class TreeCache(Transfers):
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
        remote: Where copies are kept: ``s3://bucket/prefix`` (any S3-compatible store),
            ``gs://bucket/prefix`` (Google Cloud Storage, whose preconditions make the
            lease exclusive), or a directory on a shared filesystem (a path or ``file://``).
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
        self._storage = None
        self._checked = None
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
        except RemoteFailed as e:
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

    def _sync_both(self, remote: Remote, local: Manifest) -> tuple[int, int]:
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
        except RemoteFailed as e:
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
        except RemoteFailed as e:
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
        except RemoteFailed as e:
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
            with remote_errors():
                watch = LeaseWatch(remote.storage, ttl=self.lease_ttl)
                if watch.poll()[0] is not None:
                    status.lease = watch.holder or {"holder": "unknown"}
        except RemoteFailed as e:
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
