"""Which keys a sync covers: include/exclude rules, and the refusal of overlapping sides."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from hashsync._native import filter_paths
from hashsync.errors import InvalidArgument
from hashsync.storage.base import FilterRules, Storage

__all__ = ["FilterRules", "check_overlap", "make_rules", "read_pattern_file"]

_PROBES = ("hashsync-overlap-probe", "hashsync-overlap-probe.d/x.bin")
_GLOB_CHARS = frozenset("*?[]\\")


def _same_file_ancestor(a: str, b: str) -> bool:
    """Whether the existing directory ``b`` (or an ancestor of it) is the directory ``a``.

    Catches what path strings cannot: bind mounts and hard-to-spot aliases of one directory.
    """
    try:
        target = os.stat(a)
    except OSError:
        return False
    path = Path(b)
    for candidate in (path, *path.parents):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def check_overlap(source: Storage, destination: Storage, rules: FilterRules) -> FilterRules:
    """Refuses a source and destination of which one lies inside the other.

    ``sync data/sub data --delete`` would delete the source itself, and ``sync data
    data/backup`` would copy its own output one level deeper on every run. Like rclone
    ("can't sync or move files on overlapping remotes") hashsync refuses, unless the filters
    exclude the nested part (``sync data data/backup --exclude 'backup/*'``); then the
    nested subtree is excluded from both listings whatever else the filters include.

    Returns:
        The rules to sync with: ``rules``, plus the exclusion of the nested part if any.

    Raises:
        InvalidArgument: The two overlap and the filters do not exclude the nested part.
    """
    a, b = source.location(), destination.location()
    if a is None or b is None or a[0] != b[0]:
        return rules
    (_, src_prefix), (_, dst_prefix) = a, b
    if src_prefix == dst_prefix:
        raise InvalidArgument(
            f"source and destination are the same place ({source!r} and {destination!r})"
        )
    if dst_prefix.startswith(src_prefix):
        inner, outer, which = dst_prefix[len(src_prefix) :], "source", "destination"
    elif src_prefix.startswith(dst_prefix):
        inner, outer, which = src_prefix[len(dst_prefix) :], "destination", "source"
    else:
        if a[0] == ("file",) and (
            _same_file_ancestor(src_prefix, dst_prefix)
            or _same_file_ancestor(dst_prefix, src_prefix)
        ):
            raise InvalidArgument(
                f"can't sync overlapping locations: {source!r} and {destination!r} are the "
                "same directory tree seen through different paths (a bind mount or alias)"
            )
        return rules
    refusal = InvalidArgument(
        f"can't sync overlapping locations: the {which} is inside the {outer} (at "
        f"{inner.rstrip('/')!r}); choose separate locations, or exclude it with "
        f"--exclude '{inner}*'"
    )
    probes = [inner + p for p in _PROBES]
    if any(c in _GLOB_CHARS for c in inner) or any(filter_paths(probes, rules)):
        raise refusal
    # The user excluded the nested part; make sure nothing under it is ever included again
    # (a later --include '*.txt' would otherwise pull the nested files back in).
    return [*rules, ("exclude", inner + "*")]


def make_rules(
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    filters: Sequence[tuple[str, str]] | None,
) -> FilterRules:
    """The ordered rules of ``sync``'s ``include``/``exclude`` (excludes first) or ``filters``.

    Raises:
        InvalidArgument: Both forms given, or a rule kind other than include/exclude.
    """

    def as_list(v: str | Iterable[str] | None) -> list[str]:
        if v is None:
            return []
        return [v] if isinstance(v, str) else list(v)

    if filters is not None:
        if include is not None or exclude is not None:
            raise InvalidArgument("give either filters= or include=/exclude=, not both")
        rules = [(str(k), str(p)) for k, p in filters]
        bad = [k for k, _ in rules if k not in ("include", "exclude")]
        if bad:
            raise InvalidArgument(f"filter kind must be 'include' or 'exclude', not {bad[0]!r}")
        return rules
    return [("exclude", p) for p in as_list(exclude)] + [("include", p) for p in as_list(include)]


def read_pattern_file(path: str | os.PathLike[str]) -> list[str]:
    """The patterns of a filter file, one a line (``--exclude-from``, ``--include-from``).

    Blank lines and lines starting with ``#`` or ``;`` (rclone's comment marks) are skipped;
    spaces around a pattern are dropped. A dataset selection kept under version control reads
    the same on every machine (UTF-8, any line ending).

    Raises:
        NotFound: No such file.
        InvalidArgument: The file is not UTF-8 text.
    """
    from hashsync.errors import NotFound

    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise NotFound(2, f"no such filter file: {os.fspath(path)!r}") from None
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"filter file {os.fspath(path)!r} is not UTF-8 text: {exc}") from None
    patterns = []
    for line in text.splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith(("#", ";")):
            patterns.append(pattern)
    return patterns
