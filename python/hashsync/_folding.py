"""Names one directory takes for the same file: case-insensitive or Unicode-normalising ones.

APFS and HFS+ (macOS's defaults), SMB shares, exFAT and ext4 directories with ``+F`` resolve
``Data.csv`` and ``data.csv``, or ``café`` in NFC and in NFD, to one file. Two keys that differ
only so would both be written to it; the second silently replaces the first, and a sync that
deletes the spelling it does not know deletes the file it just wrote. What a directory does is
asked of the directory itself (:func:`probe`), never guessed from the platform: case-sensitive
APFS volumes exist, and so do case-insensitive mounts on Linux.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hashsync.errors import NameCollision

__all__ = ["EXACT", "Folding", "check_keys", "collisions", "probe"]


@dataclass(frozen=True)
class Folding:
    """How a directory compares names.

    Attributes:
        case: ``A`` and ``a`` name one file.
        unicode: Canonically equivalent names (NFC and NFD ``é``) name one file.
    """

    case: bool = False
    unicode: bool = False

    def __bool__(self) -> bool:
        return self.case or self.unicode

    def fold(self, name: str) -> str:
        """The form under which this directory finds ``name``: equal forms, one file.

        Case folding is Unicode's full case folding, which folds at least as much as any file
        system does (a false alarm refuses a rare pair, a missed one loses a file); with
        normalisation too it is the canonical caseless match (NFD, casefold, NFD). Case
        alone (NTFS, SMB) keeps NFC and NFD apart.
        """
        if name.isascii():
            # NFD leaves ASCII alone and its case folding is lower(): the common case, fast.
            return name.lower() if self.case else name
        if self.unicode:
            name = unicodedata.normalize("NFD", name)
        if self.case:
            name = name.casefold()
            if self.unicode:
                name = unicodedata.normalize("NFD", name)
        return name

    def describe(self) -> str:
        """``"case-insensitive"``, ``"Unicode-normalising"``, both, or ``"exact"``."""
        kinds = (("case-insensitive", self.case), ("Unicode-normalising", self.unicode))
        return " and ".join(k for k, on in kinds if on) or "exact"


#: A directory that tells every distinct name apart (Linux's file systems, S3, GCS).
EXACT = Folding()


def collisions(keys: Iterable[str], folding: Folding) -> list[tuple[str, ...]]:
    """Groups of distinct keys that ``folding`` makes one file or directory, each sorted.

    Two files fold together (``Data.csv``, ``data.csv``), or a file folds onto a directory
    another key needs (``Logs`` and ``logs/1.txt``). Keys spelled exactly alike are one key;
    a file and a directory of the very same name are not this module's concern. Directories
    that differ only in case (``A/x``, ``a/y``) are no collision: both files fit in one
    directory.
    """
    if not folding:
        return []
    keys = keys if isinstance(keys, list) else list(keys)
    fold = folding.fold
    first: dict[str, str] = {}  # folded name -> the first key spelled so
    others: dict[str, list[str]] = {}  # folded name -> the keys after it (rare)
    pairs: list[tuple[str, str]] = []
    for k in keys:
        folded = fold(k)
        spelled = first.setdefault(folded, k)
        if spelled is not k:
            pairs.append((k, spelled))
            others.setdefault(folded, []).append(k)
    # Each directory once (a key's ancestors were seen with its parent): the files whose name
    # folds to a directory's but is spelled otherwise would be that directory on such a disk.
    clashes: dict[str, str] = {}
    seen: set[str] = set()
    for k in keys:
        head = k
        while "/" in head:
            head = head.rpartition("/")[0]
            if head in seen:
                break
            seen.add(head)
            folded = fold(head)
            found = first.get(folded)
            if found is None:
                continue
            other = next((f for f in (found, *others.get(folded, ())) if f != head), None)
            if other is not None:
                clashes[head] = other
    if clashes:
        for k in keys:
            head = k
            while "/" in head:
                head = head.rpartition("/")[0]
                if head in clashes:
                    pairs.append((k, clashes[head]))
    if not pairs:
        return []
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for k in parent:
        groups.setdefault(root(k), []).append(k)
    return sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)


def check_keys(keys: Iterable[str], folding: Folding, where: str) -> None:
    """Raise :class:`NameCollision` for the first group of ``keys`` that ``folding`` merges."""
    found = collisions(keys, folding)
    if found:
        raise NameCollision(found[0], folding.describe(), where)


_probed: dict[tuple[str, int, int], Folding] = {}
_probe_lock = threading.Lock()


def probe(directory: Path) -> Folding:
    """How ``directory`` (or, if it does not exist yet, its nearest existing parent) folds names.

    Answered by the directory's own entries when one has a name that shows it, else by
    creating an empty file with a telling name (removed at once; named like hashsync's
    temporaries, so a kill in between leaves nothing a scan or sync would take for data).
    Asked once per directory per process. A directory that can be neither read nor written
    is taken as exact: nothing will be written there.
    """
    where = Path(directory)
    while True:
        try:
            st = os.stat(where)
            break
        except OSError:
            if where.parent == where:
                return EXACT
            where = where.parent
    # The path too: a test's removed directory's inode comes back for the next one.
    ident = (str(where), st.st_dev, st.st_ino)
    with _probe_lock:
        known = _probed.get(ident)
    if known is not None:
        return known
    found = _ask(where)
    with _probe_lock:
        _probed[ident] = found
    return found


def _swapped(name: str) -> str | None:
    """``name`` with the case of each letter swapped one for one, or None if none has a pair.

    One character for one, as the upcase tables of NTFS, exFAT, FAT and SMB servers map them:
    ``ß`` keeps its place (its upper case is two letters) and ``Maße`` is tried as ``mAßE``.
    """
    out = []
    for c in name:
        other = c.swapcase()
        out.append(other if len(other) == 1 and other.swapcase() == c else c)
    swapped = "".join(out)
    return swapped if swapped != name else None


def _variants(name: str) -> tuple[str | None, str | None]:
    """Spellings of ``name`` that only a folding directory takes for it (case, Unicode)."""
    other = unicodedata.normalize("NFD" if unicodedata.is_normalized("NFC", name) else "NFC", name)
    return _swapped(name), (other if other != name else None)


def _same(directory: Path, name: str, variant: str) -> bool | None:
    """Whether ``variant`` reaches the entry ``name``; None when that cannot be told.

    A file with more than one hard link cannot tell: ``README`` and ``readme`` may be two
    links to one file on an exact disk (dedup tools and ``cp -al`` make such trees).
    Directories have no hard links, so for them the answer holds.
    """
    try:
        st = os.lstat(directory / name)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink != 1:
        return None
    try:
        return os.path.samestat(st, os.lstat(directory / variant))
    except OSError:
        return False


def _ask(directory: Path) -> Folding:
    answers: dict[str, bool] = {}
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for i, entry in enumerate(entries):
            if len(answers) == 2 or i >= 256:
                break
            case, uni = _variants(entry.name)
            for kind, variant in (("case", case), ("unicode", uni)):
                if kind not in answers and variant is not None:
                    same = _same(directory, entry.name, variant)
                    if same is not None:
                        answers[kind] = same
    if len(answers) < 2:
        from hashsync.atomic import temporary_path

        # Both kinds in one name: cased letters and an é that NFD spells in two code points.
        path = temporary_path(directory / "Probe-\u00e9")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except OSError:
            return Folding(answers.get("case", False), answers.get("unicode", False))
        try:
            case, uni = _variants(path.name)
            answers.setdefault("case", bool(case and _same(directory, path.name, case)))
            answers.setdefault("unicode", bool(uni and _same(directory, path.name, uni)))
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    return Folding(answers["case"], answers["unicode"])
