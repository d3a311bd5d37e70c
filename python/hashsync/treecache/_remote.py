"""The remote side of a TreeCache: opening its store, checking conditional writes, reading it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashsync.errors import (
    HashsyncError,
    HashsyncWarning,
    IntegrityError,
    NotFound,
    PermissionDenied,
    describe,
)
from hashsync.storage.base import ObjectInfo, ReadWriteStorage, Storage
from hashsync.storage.registry import open_storage
from hashsync.treecache._lease import conditional_writes_honoured
from hashsync.treecache._manifest import (
    MANIFEST_KEY,
    MAX_MANIFEST_BYTES,
    Manifest,
    is_meta,
    is_os_clutter,
)

__all__ = ["Remote", "RemoteFailed", "RemoteSide", "remote_errors", "tree_objects"]


class RemoteFailed(Exception):
    """A remote operation failed; carries the hashsync error that says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error


@contextlib.contextmanager
def remote_errors() -> Iterator[None]:
    """Turn what a store can throw into :class:`RemoteFailed`."""
    try:
        yield
    except (HashsyncError, OSError) as e:
        raise RemoteFailed(e) from e


@dataclass
class Remote:
    storage: Storage
    manifest: Manifest | None
    objects: list[ObjectInfo]
    state: str
    why: str = ""


class RemoteSide:
    """The layer of :class:`~hashsync.treecache.TreeCache` that reaches the remote copy.

    The attributes are set by ``TreeCache.__init__``; the layers above (local copy, derived
    files, transfers, public operations) build on this one.
    """

    name: str
    key: str
    local_dir: Path
    remote_url: str
    verbose: bool
    lease_ttl: float
    wait_timeout: float
    poll_interval: float
    _options: dict[str, Any]
    _storage: Storage | None
    _checked: ReadWriteStorage | None
    _native_conditions: bool
    _state_warned: bool

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
                    best_effort = open_storage(
                        self.remote_url, **{**self._options, "conditional_writes": "best-effort"}
                    )
                    writable = self._writable(best_effort)
                warnings.warn(
                    f"the store behind {self.remote_url} ignores conditional writes "
                    "(If-None-Match / If-Match); TreeCache falls back to a HEAD check before "
                    "each conditional write and read-back leases, so two machines building at "
                    "the same moment may both build (the copy stays consistent: its manifest "
                    "is checked on every read)",
                    HashsyncWarning,
                    stacklevel=4,
                )
            self._checked = writable
        return self._checked

    def _writable(self, storage: Storage) -> ReadWriteStorage:
        if not isinstance(storage, ReadWriteStorage):
            raise PermissionDenied(f"{self.remote_url} is read-only: nothing can be uploaded")
        return storage

    def _read_remote(self) -> Remote:
        with remote_errors():
            storage = self._remote()
            objects = tree_objects(storage)
            try:
                data = storage.read_bytes(MANIFEST_KEY, max_size=MAX_MANIFEST_BYTES)
            except NotFound:
                state = "incomplete" if objects else "missing"
                return Remote(storage, None, objects, state, "no manifest")
        try:
            manifest = Manifest.from_json(data, name=self.name, key=self.key)
        except IntegrityError as e:
            return Remote(storage, None, objects, "incomplete", f"bad manifest: {e}")
        bad = manifest.missing_or_different(objects)
        if bad:
            return Remote(
                storage,
                None,
                objects,
                "incomplete",
                f"{len(bad)} files of the manifest missing or different, e.g. {bad[0]!r}",
            )
        return Remote(storage, manifest, objects, "complete")

    def _say(self, text: str) -> None:
        if self.verbose:
            import sys

            print(f"hashsync treecache: {text}", file=sys.stderr)

    def _warn(self, text: str) -> None:
        warnings.warn(text, HashsyncWarning, stacklevel=3)


def tree_objects(storage: Storage) -> list[ObjectInfo]:
    """The remote copy's objects, without its bookkeeping (``.hashsync/``) or macOS clutter."""
    return [i for i in storage.list() if not is_meta(i.key) and not is_os_clutter(i.key)]
