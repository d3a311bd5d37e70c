"""Moving a TreeCache's base files: downloads, uploads under the build lease, waiting."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import hashsync
from hashsync._progress import byte_counter, byte_progress
from hashsync._threads import run_on_threads
from hashsync.errors import IntegrityError, NotFound, PreconditionFailed, WaitTimeout
from hashsync.storage.base import ReadWriteStorage, Storage, reporting_progress
from hashsync.treecache._derived import DerivedFiles
from hashsync.treecache._lease import Lease, LeaseWatch
from hashsync.treecache._local import EXCLUDE_META, Build
from hashsync.treecache._manifest import (
    MANIFEST_KEY,
    MAX_MANIFEST_BYTES,
    PENDING_KEY,
    Manifest,
    is_meta,
)
from hashsync.treecache._remote import Remote, RemoteFailed, remote_errors, tree_objects

__all__ = ["Transfers"]

_WORKERS = 16


class Transfers(DerivedFiles):
    """The layer of :class:`~hashsync.treecache.TreeCache` that downloads, builds and uploads."""

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

    def _download(self, remote: Remote, *, up: bool) -> tuple[int, int]:
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
            filters=[("exclude", p) for p in EXCLUDE_META],
        )
        todo = manifest.not_matching({e.path: (e.size, e.digest) for e in present})
        if todo:
            self._say(f"downloading {self.name}-{self.key[:12]} from {self.remote_url}")
        with remote_errors():
            total = sum(manifest.files[rel].size for rel in todo)
            self._transfer(todo, total, "download", lambda rel: storage.copy(rel, here))
            # Verified against the ETags listed before; the manifest must still describe the
            # copy now (a repair could have replaced it meanwhile).
            after = tree_objects(storage)
        bad = manifest.missing_or_different(after)
        if bad:
            raise RemoteFailed(
                IntegrityError(f"{self.remote_url} changed during the download ({bad[0]!r})")
            )
        digests = hashsync.hash_files([self.local_dir / rel for rel in todo], "sha256")
        wrong = [r for r, d in zip(todo, digests, strict=True) if d != manifest.files[r].sha256]
        if wrong:
            raise RemoteFailed(
                IntegrityError(
                    f"the manifest of {self.remote_url} gives {wrong[0]!r} another SHA-256 than "
                    "its content has (the ETag matched): the manifest is wrong"
                )
            )
        self._seal_local(manifest)
        current = Remote(storage, manifest, after, "complete")
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
        if storage.hash_algorithm == "md5":
            # A store of MD5s (GCS) is checked against the manifest's MD5s, which a tree
            # described before the remote was known lacks.
            manifest = manifest.with_md5(self.local_dir)
        with remote_errors():
            lease.confirm()  # before anything is replaced: a taken-over lease stops here
            theirs = {i.key: i for i in tree_objects(storage)}
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
            listing = tree_objects(storage)
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
        current = Remote(storage, manifest, listing, "complete")
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
        with remote_errors():
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

    def _publish(self, remote: Remote, manifest: Manifest) -> int:
        """Upload a complete local copy to a remote without one, if no one else is."""
        with remote_errors():
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
            except RemoteFailed as e:
                self._warn(f"built {self.local_dir} but could not upload it: {e}")
        finally:
            lease.release()

    def _build_or_wait(self, remote: Remote, build: Build | None) -> None:
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
            with remote_errors():
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
            with remote_errors():
                if storage.exists(MANIFEST_KEY):
                    current = self._read_remote()
                    if current.manifest is not None:
                        self._download(current, up=True)
                        return


def _holder(holder: dict[str, Any]) -> str:
    if holder.get("host") and holder.get("pid"):
        return f"process {holder['pid']} on {holder['host']}"
    return "another process"
