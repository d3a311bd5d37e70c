"""A sync into a directory that folds names (case-insensitive or Unicode-normalising).

Such a directory holds one file for ``Data.csv`` and ``data.csv``. Three rules keep a sync
from losing data there:

1. A destination entry spelled differently from the one source key it folds to *is* that
   key's copy (:func:`pair_spellings`): it is compared, and overwritten if it differs, never
   deleted as "only in the destination"; the sync settles instead of copying it every time.
2. Source keys that fold together (:func:`refuse_collisions`) are not written, each reported
   as failed naming the others; no destination entry folding to them is deleted.
3. Whatever the probe said (one directory of a tree may fold where its root does not),
   nothing is deleted that is the same file as one this sync just wrote
   (:func:`spare_written`).

aws s3 sync has none of these: on a Mac, two keys differing in case download into one file,
and the later one wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import hashsync
from hashsync._folding import EXACT, Folding, collisions
from hashsync.errors import NameCollision
from hashsync.storage import Storage
from hashsync.storage.local import FilesystemStorage

#: Case-insensitive and normalising: whatever folds under no disk cannot collide on any.
_MOST = Folding(case=True, unicode=True)

__all__ = [
    "destination_folding",
    "pair_spellings",
    "refuse_collisions",
    "refuse_folded_source",
    "spare_written",
]


def destination_folding(
    destination: Storage, source_paths: list[str], destination_paths: list[str]
) -> Folding:
    """How a filesystem destination compares names, where that could matter; else exact.

    The destination is probed (once) only when some keys would fold together on the most
    folding disk there is: most syncs never write a probe file, and object stores are exact.
    """
    if not isinstance(destination, FilesystemStorage) or not _could_fold(
        source_paths, destination_paths
    ):
        return EXACT
    return destination.name_folding()


def _could_fold(source_paths: list[str], destination_paths: list[str]) -> bool:
    if collisions(source_paths, _MOST):
        return True
    exact = set(source_paths)
    folds = {_MOST.fold(p) for p in source_paths}
    return any(p not in exact and _MOST.fold(p) in folds for p in destination_paths)


def refuse_folded_source(destination: Storage, source_paths: list[str]) -> None:
    """Raise :class:`NameCollision` if the whole source holds keys the destination folds.

    For a sync run segment by segment: two keys in different segments (``Data/x`` and
    ``data/x``) would never meet in one segment's check.
    """
    folding = destination_folding(destination, source_paths, [])
    if folding:
        groups = collisions(source_paths, folding)
        if groups:
            raise NameCollision(groups[0], folding.describe(), repr(destination))


def pair_spellings(
    source: hashsync.Listing, destination: hashsync.Listing, folding: Folding
) -> hashsync.Listing:
    """``destination`` with each entry spelled as the one source key it folds to.

    Only unambiguous pairs are renamed: the destination entry's exact key is not in the
    source, and exactly one source key, itself absent from the destination, folds to it.
    """
    if not folding or not len(destination):
        return destination
    src_paths = source.paths()
    src_set = set(src_paths)
    dst_paths = destination.paths()
    dst_set = set(dst_paths)
    by_fold: dict[str, list[str]] = {}
    for p in src_paths:
        if p not in dst_set:
            by_fold.setdefault(folding.fold(p), []).append(p)
    if not by_fold:
        return destination
    claimed: dict[str, list[str]] = {}
    for p in dst_paths:
        if p not in src_set:
            match = by_fold.get(folding.fold(p))
            if match is not None and len(match) == 1:
                claimed.setdefault(match[0], []).append(p)
    renames = {olds[0]: new for new, olds in claimed.items() if len(olds) == 1}
    if not renames:
        return destination
    return hashsync.Listing.from_entries(
        hashsync.FileEntry(renames[e.path], e.size, e.mtime_ns, e.digest)
        if e.path in renames
        else e
        for e in destination
    )


def refuse_collisions(
    to_copy: list[hashsync.FileEntry],
    source_paths: Iterable[str],
    folding: Folding,
    where: str,
) -> tuple[list[hashsync.FileEntry], list[tuple[str, str]], set[str]]:
    """Split copies into those that may go ahead and those whose key collides.

    Returns:
        ``(copies to make, (key, reason) refused, folded forms no deletion may touch)``.
    """
    groups = collisions(source_paths, folding)
    if not groups:
        return to_copy, [], set()
    reason = {k: str(NameCollision(g, folding.describe(), where)) for g in groups for k in g}
    kept = [e for e in to_copy if e.path not in reason]
    refused = [(e.path, reason[e.path]) for e in to_copy if e.path in reason]
    # A group whose keys are all unchanged still collides; report it once per key anyway,
    # so the sync is not "ok" while one of the keys is not what the source holds.
    copying = {e.path for e in to_copy}
    refused += [(k, reason[k]) for g in groups for k in g if k not in copying]
    protected = {folding.fold(k) for g in groups for k in g}
    return kept, sorted(refused), protected


def spare_written(
    destination: Storage, to_delete: Sequence[str], written: Iterable[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Deletions that do not reach a file this sync wrote, and those spared with a reason."""
    if not to_delete or not isinstance(destination, FilesystemStorage):
        return list(to_delete), []
    files: dict[tuple[int, int], str] = {}
    for key in written:
        try:
            st = os.lstat(destination.path(key))
        except (OSError, ValueError):
            continue
        files[(st.st_dev, st.st_ino)] = key
    if not files:
        return list(to_delete), []
    kept, spared = [], []
    for key in to_delete:
        try:
            st = os.lstat(destination.path(key))
        except (OSError, ValueError):
            kept.append(key)
            continue
        twin = files.get((st.st_dev, st.st_ino))
        if twin is None:
            kept.append(key)
        else:
            spared.append(
                (
                    key,
                    f"not deleted: it is the file just written as {twin!r} (this directory "
                    "does not tell the two names apart)",
                )
            )
    return kept, spared
