"""Per-machine bookkeeping of a TreeCache's local copy, kept under ``$HASHSYNC_CACHE_DIR``.

A local copy holds the tree and its manifest only, byte for byte what every other machine
holds, so :func:`hashsync.tree_hash` of a built copy and of its download agree. What this
machine knows about its copy lives in ``$HASHSYNC_CACHE_DIR/treecache/local/<id>.json``, where
``<id>`` is a hash of the copy's resolved path (two directories never share a file):

- ``stats``: size, mtime and inode of each base file when it last matched the manifest (git's
  index trick), so an edit is noticed without re-reading unchanged files;
- ``synced``: the ETag of each derived file when this machine last saw it identical on both
  sides, so a change on one side is told from a conflict.

The file is only a shortcut. One that is missing, damaged, of another directory or of an
earlier copy in the same place (the manifest it was written against is gone) counts as empty:
every base file is hashed again and a derived file differing on both sides is resolved as a
conflict, keeping both versions. Versions before this one kept the two maps in
``.hashsync/stats.json`` and ``.hashsync/synced.json`` inside the copy; those are read once
when no valid state exists, and removed once the state is saved here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hashsync
from hashsync import atomic
from hashsync.treecache._manifest import MANIFEST_KEY, META_DIR

FORMAT = "hashsync-treecache-state/1"
# Where earlier versions kept the same maps, inside the local copy.
LEGACY_STATS = f"{META_DIR}/stats.json"
LEGACY_SYNCED = f"{META_DIR}/synced.json"


def state_path(local_dir: Path) -> Path:
    """The state file of ``local_dir`` in the current ``$HASHSYNC_CACHE_DIR``.

    Keyed by the resolved path, so a symlink and its target share one state and two
    directories never do. The cache directory is looked up on each call, as everywhere in
    hashsync, so a changed environment takes effect.
    """
    resolved = os.path.realpath(local_dir)
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:32]
    return Path(hashsync.default_cache_dir()) / "treecache" / "local" / f"{digest}.json"


def _manifest_identity(local_dir: Path) -> list[int] | None:
    # The manifest is written once per sealing (a new inode each time), so it names the copy
    # the state was recorded for: a copy put in the same place by other means (``cp -a`` from
    # elsewhere) must not inherit a state describing files it never had. ctime is in because
    # a copy can restore mtime, and a freed inode number can be handed out again; no tool can
    # set ctime. The device is left out: network filesystems renumber it across mounts, and
    # the path is already in the key.
    try:
        st = os.stat(local_dir / MANIFEST_KEY)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _clean_stats(raw: object) -> dict[str, list[int]]:
    if not isinstance(raw, dict):
        return {}
    return {
        k: v
        for k, v in raw.items()
        if isinstance(k, str)
        and isinstance(v, list)
        and len(v) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
    }


def _clean_synced(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


@dataclass
class LocalState:
    """What this machine knows about one local copy; see the module documentation.

    Attributes:
        stats: Base file -> ``[size, mtime_ns, inode]`` when it last matched the manifest.
        synced: Derived file -> its ETag when last seen identical on both sides.
        legacy: Whether an earlier version's bookkeeping files are in the copy (the maps
            came from them unless a valid state existed); :meth:`save` removes them.
    """

    stats: dict[str, list[int]] = field(default_factory=dict)
    synced: dict[str, str] = field(default_factory=dict)
    legacy: bool = False

    @classmethod
    def load(cls, local_dir: Path, *, name: str, key: str) -> LocalState:
        """The state of the copy in ``local_dir``; empty if there is none to trust.

        Never raises: an unreadable or foreign state costs speed, not correctness.
        """
        identity = _manifest_identity(local_dir)
        if identity is None:
            return cls()
        stats_file, synced_file = local_dir / LEGACY_STATS, local_dir / LEGACY_SYNCED
        legacy = os.path.lexists(stats_file) or os.path.lexists(synced_file)
        doc = _read_json(state_path(local_dir))
        if (
            isinstance(doc, dict)
            and doc.get("format") == FORMAT
            and doc.get("local_dir") == os.path.realpath(local_dir)
            and (doc.get("name"), doc.get("key")) == (name, key)
            and doc.get("manifest") == identity
        ):
            # Legacy files next to a valid state are leftovers (an earlier version ran here
            # again): the state wins and the next save removes them.
            return cls(
                _clean_stats(doc.get("stats")), _clean_synced(doc.get("synced")), legacy=legacy
            )
        if legacy:
            # Written next to this very manifest by an earlier version: it describes this copy.
            return cls(
                _clean_stats(_read_json(stats_file)),
                _clean_synced(_read_json(synced_file)),
                legacy=True,
            )
        return cls()

    def save(self, local_dir: Path, *, name: str, key: str) -> OSError | None:
        """Write the state atomically, bound to the copy's current manifest.

        Then remove an earlier version's bookkeeping from the copy (only once the state is
        safely here, so a failed write loses nothing).

        Returns:
            None, or the error that kept the state from being written (the caller decides
            whether that is worth a warning; the next run only re-hashes).
        """
        identity = _manifest_identity(local_dir)
        if identity is None:
            return None  # no complete copy to describe
        doc = {
            "format": FORMAT,
            "local_dir": os.path.realpath(local_dir),
            "name": name,
            "key": key,
            "manifest": identity,
            "stats": self.stats,
            "synced": dict(sorted(self.synced.items())),
        }
        data = json.dumps(doc, indent=1).encode()
        failed = atomic.write_files_atomically([(state_path(local_dir), data)])[0]
        if failed is not None:
            return failed if isinstance(failed, OSError) else OSError(str(failed))
        for legacy in (LEGACY_STATS, LEGACY_SYNCED):
            # Harmless if it stays (never read while a valid state exists, never uploaded).
            with contextlib.suppress(OSError):
                (local_dir / legacy).unlink()
        self.legacy = False
        return None
