"""Errors raised by hashsync.

Every error derives from :class:`HashsyncError`, and also from the built-in exception that
code not written for hashsync would catch: a missing file is a :class:`NotFound`, which is a
``FileNotFoundError`` too, so ``except FileNotFoundError`` keeps working.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ConditionsNotEnforced",
    "FileChanged",
    "FileSystemError",
    "HashsyncError",
    "HashsyncWarning",
    "IntegrityError",
    "InvalidArgument",
    "InvalidPartSize",
    "IsADirectory",
    "MissingDependency",
    "NameCollision",
    "NotADirectory",
    "NotARegularFile",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "StorageUnavailable",
    "UnknownAlgorithm",
    "UnsafePath",
    "WaitTimeout",
    "describe",
    "error_for_status",
    "missing_extra",
]


class HashsyncError(Exception):
    """Base class of every error hashsync raises on purpose."""


class HashsyncWarning(UserWarning):
    """Something went wrong that hashsync worked around; the results are still correct.

    For example, an unusable hash state cache location: digests are then computed without the
    cache, which is slower but gives the same answer.
    """


class NotFound(HashsyncError, FileNotFoundError):
    """A file, key, bucket or dataset does not exist."""


class PermissionDenied(HashsyncError, PermissionError):
    """Access was refused: file permissions, or credentials a store rejected."""


class IsADirectory(HashsyncError, IsADirectoryError):
    """A directory was given where a file was expected."""


class NotADirectory(HashsyncError, NotADirectoryError):
    """A file was given where a directory was expected."""


class FileSystemError(HashsyncError, OSError):
    """A local file operation failed for another reason (disk full, I/O error, ...).

    ``errno``, ``strerror`` and ``filename`` are those of the underlying ``OSError``.
    """


class NotARegularFile(HashsyncError, OSError):
    """A FIFO, socket or device was given where a regular file was expected."""


class MissingDependency(HashsyncError, ImportError):
    """An optional part of hashsync needs a package that is not installed.

    The message names the extra that brings it, e.g. ``pip install 'hashsync[bench]'``.
    """


def missing_extra(what: str, extra: str) -> MissingDependency:
    """The error for a feature whose extra is not installed: one line naming the extra."""
    return MissingDependency(f"{what} needs the '{extra}' extra: pip install 'hashsync[{extra}]'")


class UnsafePath(HashsyncError, OSError):
    """A write would leave its storage: through a symbolic link, or onto its own source."""


class NameCollision(HashsyncError, FileExistsError):
    """Distinct keys would be one file where they are written.

    A case-insensitive or Unicode-normalising directory (macOS's APFS and HFS+ by default,
    SMB shares, exFAT) takes ``Data.csv`` and ``data.csv``, or ``café`` in NFC and NFD, for
    one name. Neither key is written (nor deleted by a sync) until one is renamed or excluded.

    Attributes:
        keys: The colliding keys, sorted.
    """

    def __init__(self, keys: Iterable[str], how: str, where: str) -> None:
        self.keys = tuple(sorted(keys))
        self.how, self.where = how, where
        shown = " and ".join(repr(k) for k in self.keys[:4])
        more = f" (and {len(self.keys) - 4} more)" if len(self.keys) > 4 else ""
        super().__init__(
            errno.EEXIST,
            f"keys {shown}{more} would be one file in {where} ({how}); neither is written: "
            "rename one at the source or exclude it",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from what it was made of (Dask sends errors between processes).
        return (type(self), (self.keys, self.how, self.where))


class InvalidArgument(HashsyncError, ValueError):
    """An argument has a value hashsync cannot use; the message says which and why."""


class UnknownAlgorithm(InvalidArgument):
    """An algorithm name hashsync does not know; the message lists the valid ones."""


class InvalidPartSize(InvalidArgument):
    """A part size or part count outside what S3 allows; the message names the rule."""


class PreconditionFailed(HashsyncError):
    """A conditional write or delete found a different object than expected."""


class ConditionsNotEnforced(PreconditionFailed):
    """The store ignores ``If-None-Match`` / ``If-Match``, so a conditional write was refused.

    Writing anyway could replace another writer's object silently. Found out once per store
    (:mod:`hashsync.storage.conditions`); ``conditional_writes="best-effort"`` writes anyway.
    """


class StorageUnavailable(HashsyncError, ConnectionError):
    """A store could not be reached (refused, DNS failure, timeout) after retries."""


class WaitTimeout(HashsyncError, TimeoutError):
    """Waited longer than allowed for another process (a TreeCache builder holding the lease)."""


class IntegrityError(HashsyncError):
    """Data did not match the digest or size it was supposed to have."""


class FileChanged(IntegrityError):
    """A file changed while it was being read, so its digest would describe no real state.

    Attributes:
        path: The file that changed.
    """

    path: str


# S3's error codes, which most object stores (and hashsync's hub) answer with; they refine
# what the HTTP status alone says.
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchBucket", "NoSuchVersion"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
    "InvalidObjectState",
}
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "503",
    "500",
    "502",
    "504",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}
_INVALID_CODES = {"InvalidBucketName", "KeyTooLongError", "InvalidArgument"}


def error_for_status(status: int | None, message: str, *, code: str = "") -> HashsyncError:
    """The hashsync error for a failed HTTP request: one mapping for S3, HTTP and the hub.

    Args:
        status: The HTTP status (None if the answer had none).
        message: The whole message of the error (already redacted).
        code: An S3-style error code (``NoSuchKey``, ``SlowDown``, ...), if the body had one.

    Returns:
        :class:`NotFound` (404, 410), :class:`PermissionDenied` (401, 403),
        :class:`PreconditionFailed` (409, 412), :class:`StorageUnavailable` (408, 429, 5xx,
        throttling), :class:`InvalidArgument` (a request the store calls invalid), else
        :class:`HashsyncError`.
    """
    if code in _NOT_FOUND_CODES or status in (404, 410):
        return NotFound(errno.ENOENT, message)
    if code in _DENIED_CODES or status in (401, 403):
        return PermissionDenied(errno.EACCES, message)
    if code in _PRECONDITION_CODES or status in (409, 412):
        return PreconditionFailed(message)
    if code in _UNAVAILABLE_CODES or (status or 0) >= 500 or status in (408, 429):
        return StorageUnavailable(errno.EAGAIN, message)
    if code in _INVALID_CODES:
        return InvalidArgument(message)
    return HashsyncError(message)


def describe(exc: BaseException) -> str:
    """A one-line message for ``exc`` as the CLI and SyncResult show it.

    OSError's own ``str()`` starts with ``[Errno N]``, which tells a user nothing; this gives
    ``"path: reason"`` instead. Secrets in URLs (passwords, signatures, tokens) are replaced
    by ``***`` (see :func:`hashsync._redact.redact`), so the text is safe to print and log.
    """
    from hashsync._redact import redact

    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return redact(text)
