"""A TreeCache's derived files: synced both ways, a change on both sides kept as a conflict copy."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, NamedTuple

import hashsync
from hashsync._progress import byte_counter, byte_progress
from hashsync.errors import (
    FileSystemError,
    IntegrityError,
    InvalidArgument,
    NotARegularFile,
    NotFound,
    PreconditionFailed,
    UnsafePath,
    describe,
)
from hashsync.storage.base import ObjectInfo, ReadWriteStorage, Storage, reporting_progress
from hashsync.storage.local import TemporaryLocalStorage
from hashsync.treecache._local import EXCLUDE_META, LocalSide
from hashsync.treecache._manifest import META_DIR, Manifest
from hashsync.treecache._remote import Remote, remote_errors

__all__ = ["DerivedFiles"]

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


class DerivedFiles(LocalSide):
    """The layer of :class:`~hashsync.treecache.TreeCache` that syncs the derived files."""

    def _derived_plan(
        self, remote: Remote, manifest: Manifest
    ) -> tuple[dict[str, Any], dict[str, ObjectInfo], list[tuple[str, str]]]:
        # Local digests spelled as the store spells its hashes (S3 ETags, GCS "md5:<hex>"),
        # so that one bookkeeping of synced versions compares both sides.
        algorithm = remote.storage.hash_algorithm
        listing = hashsync.scan(
            self.local_dir,
            algorithm=algorithm,
            part_size=manifest.part_size,
            filters=[("exclude", p) for p in EXCLUDE_META],
        )
        local = {
            e.path: _Local(e.size, _as_stored(algorithm, e.digest), e.mtime_ns)
            for e in listing
            if e.path not in manifest.files
        }
        theirs = {i.key: i for i in remote.objects if i.key not in manifest.files}
        return local, theirs, list(listing.errors)

    def _same(self, rel: str, entry: Any, info: ObjectInfo) -> bool:
        if entry.size != info.size or info.hash is None:
            return False
        if entry.digest == info.hash:
            return True
        # Different part sizes give different multipart ETags for the same bytes.
        return (
            ":" not in info.hash
            and "-" in info.hash
            and hashsync.etag_matches(self.local_dir / rel, info.hash)
        )

    def _sync_derived(
        self, remote: Remote, manifest: Manifest, *, down: bool, up: bool
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
                    synced[name] = (
                        here.get_hash(name)
                        if storage.hash_algorithm == "etag"
                        else _stored_hash(self.local_dir / name, storage.hash_algorithm)
                    )
            else:
                self._warn(
                    f"{rel} was changed both here and on {self.remote_url}; "
                    "`sync` keeps the newer and the other as a .conflict copy"
                )

        with (
            remote_errors(),
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
                    if not _holds(scratch.path(rel), info.hash or ""):
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
            if not _holds(self.local_dir / loser, storage.get_hash(loser)):
                self._warn(
                    f"{self.remote_url} has another file named {loser}; kept both as they are"
                )
        self._warn(
            f"{rel} was changed both here and on {self.remote_url}: kept the newer, the other "
            f"is {loser}"
        )
        return 1, sent, loser


def _conflict_name(rel: str, when: datetime.datetime, digest: str) -> str:
    stamp = when.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{rel}.conflict-{stamp}-{digest.rpartition(':')[2][:8]}"


class _Local(NamedTuple):
    """A local derived file: size, digest as the store spells hashes, mtime."""

    size: int
    digest: str | None
    mtime_ns: int


def _as_stored(algorithm: str, digest: str | None) -> str | None:
    """A bare digest as a store of ``algorithm`` spells its hashes (``"md5:<hex>"``)."""
    if digest is None or algorithm == "etag":
        return digest
    return f"{algorithm}:{digest}"


def _stored_hash(path: Path, algorithm: str) -> str:
    return f"{algorithm}:{hashsync.hash_file(path, algorithm)}"


def _holds(path: Path, stored: str) -> bool:
    """Whether the file at ``path`` has the store's hash ``stored`` (any spelling)."""
    algorithm, sep, digest = stored.partition(":")
    if sep:
        return hashsync.hash_file(path, algorithm) == digest
    return hashsync.etag_matches(path, stored)
