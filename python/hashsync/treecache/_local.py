"""The local copy of a TreeCache: its lock, its check against the manifest, bookkeeping, builds."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import hashsync
from hashsync import atomic
from hashsync.errors import IntegrityError, InvalidArgument, PermissionDenied, describe
from hashsync.storage.local import LocalStorage, SimpleLocalStorage
from hashsync.treecache._manifest import (
    MANIFEST_KEY,
    META_DIR,
    OS_CLUTTER,
    Manifest,
    describe_tree,
    tree_hash_of,
)
from hashsync.treecache._remote import RemoteFailed, RemoteSide, remote_errors
from hashsync.treecache._state import LocalState

__all__ = ["EXCLUDE_META", "Build", "LocalSide"]

Build = Callable[[Path], object]
EXCLUDE_META = [f"{META_DIR}/*", *OS_CLUTTER]
_BUILD_MARK = ".hashsync-build-"


class LocalSide(RemoteSide):
    """The layer of :class:`~hashsync.treecache.TreeCache` that keeps and builds the local copy."""

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
        with contextlib.suppress(RemoteFailed):
            with remote_errors():
                return int(self._remote().part_size)
        return hashsync.DEFAULT_PART_SIZE

    def _remote_algorithm(self) -> str:
        """The remote's :attr:`~hashsync.storage.Storage.hash_algorithm` (``"etag"`` if unknown)."""
        with contextlib.suppress(RemoteFailed):
            with remote_errors():
                return str(self._remote().hash_algorithm)
        return "etag"

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
            files = describe_tree(staging, part_size, md5=self._remote_algorithm() == "md5")
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
