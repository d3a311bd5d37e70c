"""Build leases: one builder per TreeCache key across machines, and how far a store can be trusted.

A lease is the object ``.hashsync/lease.json`` of the copy. It is created with
``If-None-Match: *``, so of several machines only one gets it, and rewritten every ``ttl / 4``
seconds with ``If-Match`` on its own last ETag, so a holder notices at once when another
machine has taken it over. A waiter judges staleness by its own monotonic clock: a lease whose
ETag has not changed for the holder's ``ttl`` (the longer of the holder's and its own) belongs to a
process that stopped, and is taken over with ``If-Match`` on that stale ETag, so of several
waiters only one succeeds. No clock is compared across machines.

Some S3-compatible stores accept ``If-None-Match`` and ``If-Match`` and ignore them. Before
the first lease on an endpoint, :func:`conditional_writes_honoured` asks the storage, which
finds out once per endpoint and bucket (:mod:`hashsync.storage.conditions`). Where the store
ignores them, leases fall back to write-then-read-back (the last writer wins, and each writer
checks after a pause whether it was last), the storage is opened with
``conditional_writes="best-effort"`` (a HEAD check before each conditional write; claims would
not help, creating one is itself a create-only write), and a warning says that exclusivity is
then best effort.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any

from hashsync.errors import HashsyncError, HashsyncWarning, NotFound, PreconditionFailed
from hashsync.storage.base import ReadWriteStorage, Storage
from hashsync.treecache._manifest import LEASE_KEY

# How long a fallback writer waits before reading its lease back: longer than the gap between
# two racing writers' requests, which is what decides who wrote last.
SETTLE_SECONDS = 1.0


def conditional_writes_honoured(storage: ReadWriteStorage) -> bool:
    """Whether ``storage``'s store really enforces ``If-None-Match: *`` and ``If-Match``.

    The storage's own declared ability (:meth:`ReadWriteStorage.conditions_enforced`: a probe
    once per endpoint and bucket, remembered, see :mod:`hashsync.storage.conditions`).

    Raises:
        HashsyncError: The probe could not write (no access, store down); nothing is remembered.
    """
    return storage.conditions_enforced()


class Lease:
    """One process's claim to build and upload a copy."""

    def __init__(self, storage: ReadWriteStorage, *, ttl: float, native: bool = True) -> None:
        self.storage = storage
        self.ttl = ttl
        self.native = native
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost = threading.Event()
        self._acquired = time.time()
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The refresher thread and confirm() must not race each other's If-Match.
        self._lock = threading.Lock()

    def _body(self) -> bytes:
        self._seq += 1
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired": self._acquired,
                "refreshed": time.time(),
                "seq": self._seq,
                "ttl": self.ttl,
            },
            sort_keys=True,
        ).encode()

    def acquire(self) -> bool:
        """Create the lease; False if another process holds one."""
        if self.native:
            try:
                self.etag = self.storage.write_bytes(LEASE_KEY, self._body(), create_only=True)
            except PreconditionFailed:
                return False
            return True
        if self.storage.exists(LEASE_KEY):
            return False
        self.storage.write_bytes(LEASE_KEY, self._body())
        return self._confirm()

    def take_over(self, stale_etag: str) -> bool:
        """Replace a lease whose holder stopped refreshing it; False if someone was faster."""
        try:
            if self.native:
                self.etag = self.storage.write_bytes(LEASE_KEY, self._body(), if_hash=stale_etag)
                return True
            if self.storage.get_hash(LEASE_KEY) != stale_etag:
                return False
            self.storage.write_bytes(LEASE_KEY, self._body())
        except (PreconditionFailed, NotFound):
            return False
        return self._confirm()

    def _confirm(self) -> bool:
        time.sleep(SETTLE_SECONDS)
        try:
            holder = json.loads(self.storage.read_bytes(LEASE_KEY, max_size=65536))
            self.etag = self.storage.get_hash(LEASE_KEY)
        except (NotFound, ValueError):
            return False
        return isinstance(holder, dict) and holder.get("owner") == self.owner

    def refresh(self) -> None:
        """Rewrite the lease so waiters see its holder alive; sets :attr:`lost` if taken over."""
        with self._lock:
            if self.etag is None or self.lost.is_set():
                return
            try:
                if self.native:
                    self.etag = self.storage.write_bytes(LEASE_KEY, self._body(), if_hash=self.etag)
                elif self.storage.get_hash(LEASE_KEY) == self.etag:
                    self.etag = self.storage.write_bytes(LEASE_KEY, self._body())
                else:
                    raise PreconditionFailed("the lease was replaced")
            except (PreconditionFailed, FileNotFoundError):
                # FileNotFoundError covers NotFound, and a directory store whose lease folder
                # went away with the lease.
                self.lost.set()

    def confirm(self) -> None:
        """Refresh now and make sure the lease is still this process's.

        Called before anything on the remote is replaced or deleted, so a builder that was
        paused past the lease's TTL (and taken over) stops instead of undoing the new holder's
        work.

        Raises:
            PreconditionFailed: Another process holds the lease now.
        """
        self.refresh()
        if self.lost.is_set():
            raise PreconditionFailed(
                "the build lease was taken over by another process (this one did not refresh "
                "it in time); nothing more is uploaded"
            )

    def start_refreshing(self) -> None:
        """Refresh every ``ttl / 4`` seconds on a daemon thread until :meth:`release`."""

        def run() -> None:
            while not self._stop.wait(self.ttl / 4) and not self.lost.is_set():
                try:
                    self.refresh()
                except (HashsyncError, OSError) as e:
                    # A store down for a moment: the next refresh may get through; if none
                    # does for ttl, a waiter takes over and the next refresh sees it lost.
                    warnings.warn(
                        f"could not refresh the build lease: {e}", HashsyncWarning, stacklevel=1
                    )
            if self.lost.is_set():
                warnings.warn(
                    "another process took over the build lease (this one was too slow to "
                    "refresh it); this build will not be uploaded",
                    HashsyncWarning,
                    stacklevel=1,
                )

        self._thread = threading.Thread(target=run, name="hashsync-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.etag is None or self.lost.is_set():
            return
        with contextlib.suppress(HashsyncError, OSError):
            if self.native:
                self.storage.delete_if_hash_matches(LEASE_KEY, self.etag)
            elif self.storage.get_hash(LEASE_KEY) == self.etag:
                self.storage.delete(LEASE_KEY)


class LeaseWatch:
    """A waiter's view of someone else's lease: is its holder still refreshing it?"""

    def __init__(self, storage: Storage, *, ttl: float) -> None:
        self.storage = storage
        self.own_ttl = ttl
        self.etag: str | None = None
        self.holder: dict[str, Any] = {}
        self._since = time.monotonic()
        self._ttl = ttl

    def poll(self) -> tuple[str | None, bool]:
        """Return the lease's ETag (None without a lease) and whether its holder stopped."""
        try:
            etag: str | None = self.storage.get_hash(LEASE_KEY)
        except NotFound:
            etag = None
        if etag != self.etag:
            self.etag = etag
            self._since = time.monotonic()
            self.holder = {}
            self._ttl = self.own_ttl
            if etag is not None:
                with contextlib.suppress(HashsyncError, OSError, ValueError):
                    body = json.loads(self.storage.read_bytes(LEASE_KEY, max_size=65536))
                    if isinstance(body, dict):
                        self.holder = body
                        declared = body.get("ttl")
                        if isinstance(declared, int | float) and 0 < declared < 86400:
                            self._ttl = max(self.own_ttl, float(declared))
        stale = etag is not None and time.monotonic() - self._since > self._ttl
        return etag, stale
