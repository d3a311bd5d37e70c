"""The file objects :mod:`hashsync.fsspec` hands out, and the errors they raise.

Writers stage locally and upload whole (:class:`Upload`); hashsync's errors become the
builtins fsspec's callers catch (:func:`as_builtin`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hashsync.errors import (
    ConditionsNotEnforced,
    HashsyncError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StorageUnavailable,
)
from hashsync.storage.local import SingleFileStorage

__all__ = ["Upload", "as_builtin", "read_range"]


def _text(exc: BaseException) -> str:
    """The message alone (an OSError's str() would repeat its errno)."""
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def as_builtin(path: str) -> Iterator[None]:
    """Raise what fsspec's callers catch (FileNotFoundError, ...), not hashsync's internals.

    hashsync's errors already derive from these; re-raising plain ones keeps the traceback
    short and the type exactly what pandas and pyarrow test for.
    """
    try:
        yield
    except ConditionsNotEnforced as exc:
        raise OSError(errno.ENOTSUP, _text(exc), path) from None
    except PreconditionFailed as exc:
        raise FileExistsError(errno.EEXIST, _text(exc), path) from None
    except NotFound as exc:
        raise FileNotFoundError(errno.ENOENT, _text(exc), path) from None
    except PermissionDenied as exc:
        raise PermissionError(errno.EACCES, _text(exc), path) from None
    except IsADirectory as exc:
        raise IsADirectoryError(errno.EISDIR, _text(exc), path) from None
    except NotADirectory as exc:
        raise NotADirectoryError(errno.ENOTDIR, _text(exc), path) from None
    except StorageUnavailable as exc:
        raise ConnectionError(_text(exc)) from None
    except InvalidArgument as exc:
        raise ValueError(_text(exc)) from None
    except HashsyncError as exc:
        raise OSError(errno.EIO, _text(exc), path) from None


class Upload:
    """A file written locally, then uploaded whole when closed (or, in a transaction, committed).

    ``with fs.open(url, "wb")`` uploads nothing when its block fails, and :meth:`discard`
    drops what was written. ``close()`` itself always uploads: code that closes a file on
    purpose (in an ``except`` block, a generator's ``finally``) must not lose it. Deliberately
    not an ``io.IOBase``, which closes (here: uploads) itself when garbage collected; a writer
    dropped unclosed uploads nothing. (fsspec's text mode wraps it in an ``io.TextIOWrapper``,
    which does close itself then, as with every fsspec filesystem.)
    """

    mode = "wb"

    def __init__(
        self,
        storage: Any,
        key: str,
        url: str,
        *,
        exclusive: bool,
        autocommit: bool = True,
        written: Any = None,
    ) -> None:
        from hashsync.storage import ReadWriteStorage
        from hashsync.storage.base import validate_key

        if not isinstance(storage, ReadWriteStorage):
            raise PermissionError(errno.EROFS, f"{storage!r} is read-only", url)
        with as_builtin(url):
            validate_key(key)
            if exclusive and storage.exists(key):
                raise FileExistsError(errno.EEXIST, f"{url} exists", url)
        self._storage = storage
        self._key = key
        self._exclusive = exclusive
        self._autocommit = autocommit
        self._written = written
        self._pending = False
        self.name = self.path = url
        self._dir = tempfile.mkdtemp(prefix="hashsync-fsspec-")
        # One fixed name: a key's segments may be longer than a local file name may be.
        self._staged = Path(self._dir) / "object"
        try:
            self._fh = open(self._staged, "wb")  # noqa: SIM115 - closed by close()/discard()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    @property
    def closed(self) -> bool:
        """Whether the file was closed (uploaded or waiting for its commit) or discarded."""
        return self._fh.closed

    def readable(self) -> bool:
        """False: a file opened for writing."""
        return False

    def seekable(self) -> bool:
        """False: written front to back."""
        return False

    def writable(self) -> bool:
        """True while open."""
        return not self.closed

    def write(self, data: Any) -> int:
        """Append ``data``; returns the bytes written."""
        return self._fh.write(data)

    def tell(self) -> int:
        """Bytes written so far."""
        return self._fh.tell()

    def flush(self) -> None:
        """Nothing reaches the store before :meth:`close`; kept for the file protocol."""
        if not self._fh.closed:
            self._fh.flush()

    def discard(self) -> None:
        """Drop what was written: nothing is uploaded (an aborted transaction calls this)."""
        if not self._fh.closed:
            self._fh.close()
        self._pending = False
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """Upload what was written, atomically (the object appears whole or not at all).

        Inside a transaction (``with fs.transaction:``) the upload waits for the commit.
        """
        if self._fh.closed:
            return
        self._fh.close()
        if not self._autocommit:
            self._pending = True
            return
        self.commit()

    def commit(self) -> None:
        """Upload the closed file (a transaction's commit calls this)."""
        if self._autocommit and not self._fh.closed:
            self.close()
            return
        try:
            with as_builtin(self.path):
                staged = SingleFileStorage(self._staged)
                if self._exclusive:
                    self._storage.copy_from_if_overwriting_hash(self._key, None, staged)
                else:
                    self._storage.copy_from(self._key, staged)
        finally:
            self._pending = False
            shutil.rmtree(self._dir, ignore_errors=True)
            if self._written is not None:
                self._written()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self.discard()
        else:
            self.close()


def read_range(fh: BinaryIO, start: int | None, end: int | None) -> bytes:
    """Bytes ``start:end`` of an open local file, negative offsets counted from its end."""
    size = os.fstat(fh.fileno()).st_size
    first = 0 if start is None else (start if start >= 0 else max(0, size + start))
    last = size if end is None else (min(end, size) if end >= 0 else max(0, size + end))
    return os.pread(fh.fileno(), max(0, last - first), first) if last > first else b""
