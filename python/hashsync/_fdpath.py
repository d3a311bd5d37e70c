"""Paths that reach an open descriptor: ``/proc/self/fd/N`` on Linux, ``/dev/fd/N`` elsewhere.

Code that only takes paths (the Rust hashing core, Starlette's file responses, a download
filling its temporary file) can then work on the file hashsync already opened and checked,
whatever is renamed or swapped for a link meanwhile. Which form works is asked of the system
at import, never assumed from its name:

- :data:`FILE_PREFIX` reaches a descriptor's file. On macOS and the BSDs ``/dev/fd/N`` is
  a duplicate of the descriptor, sharing its offset, so only positional readers (``pread``,
  as the hashing core reads) or a sole user may be handed such a path.
- :data:`DIR_PREFIX` also resolves names below a directory's descriptor (``N/name``); only
  Linux's ``/proc`` does. Without it the directory's own path, checked a moment before,
  stands in.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_PREFIX", "FILE_PREFIX", "dir_path", "file_path", "hash_open_file"]


def _reaches(prefix: str, below: bool) -> bool:
    try:
        fd = os.open("/", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        there = f"{prefix}/{fd}/." if below else f"{prefix}/{fd}"
        return os.path.samestat(os.stat(there), os.fstat(fd))
    except OSError:
        return False
    finally:
        os.close(fd)


def _first(below: bool) -> str | None:
    return next((p for p in ("/proc/self/fd", "/dev/fd") if _reaches(p, below)), None)


#: Where ``PREFIX/N`` opens descriptor N's file, or None.
FILE_PREFIX: str | None = _first(below=False)
#: Where ``PREFIX/N/name`` resolves ``name`` in directory descriptor N, or None.
DIR_PREFIX: str | None = _first(below=True)


def file_path(fd: int) -> str | None:
    """A path that opens what ``fd`` is open on (see :data:`FILE_PREFIX`), or None."""
    return None if FILE_PREFIX is None else f"{FILE_PREFIX}/{fd}"


def dir_path(fd: int, fallback: Path) -> Path:
    """A path below which names resolve in directory descriptor ``fd``; else ``fallback``."""
    return fallback if DIR_PREFIX is None else Path(f"{DIR_PREFIX}/{fd}")


def hash_open_file(fd: int, algorithm: str) -> str:
    """The digest of the file open as ``fd``, read by position (its offset is left alone).

    Through the hashing core when a path reaches the descriptor; else read here in 1 MiB
    ``pread`` calls (the hasher releases the GIL for each), which is no less safe, only
    slower for the CRCs the core would compute in parallel.

    Raises:
        FileChanged: The file changed while it was read (through the hashing core).
    """
    import hashsync

    where = file_path(fd)
    if where is not None:
        return hashsync.hash_file(where, algorithm)
    from hashsync.atomic import same_version
    from hashsync.errors import FileChanged

    before = os.fstat(fd)
    hasher = hashsync.Hasher(algorithm)
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        hasher.update(chunk)
        offset += len(chunk)
    if offset != before.st_size or not same_version(before, os.fstat(fd)):
        raise FileChanged(f"the file open as descriptor {fd} changed while it was read")
    return hasher.hexdigest()
