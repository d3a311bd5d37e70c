"""Errors raised by hashsync.

Every error derives from :class:`HashsyncError`, and also from the built-in exception that
code not written for hashsync would catch: a missing file is a :class:`NotFound`, which is a
``FileNotFoundError`` too, so ``except FileNotFoundError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "FileChanged",
    "HashsyncError",
    "HashsyncWarning",
    "IntegrityError",
    "InvalidArgument",
    "InvalidPartSize",
    "IsADirectory",
    "MissingDependency",
    "NotADirectory",
    "NotARegularFile",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "StorageUnavailable",
    "UnknownAlgorithm",
    "UnsafePath",
    "describe",
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


class InvalidArgument(HashsyncError, ValueError):
    """An argument has a value hashsync cannot use; the message says which and why."""


class UnknownAlgorithm(InvalidArgument):
    """An algorithm name hashsync does not know; the message lists the valid ones."""


class InvalidPartSize(InvalidArgument):
    """A part size or part count outside what S3 allows; the message names the rule."""


class PreconditionFailed(HashsyncError):
    """A conditional write or delete found a different object than expected."""


class StorageUnavailable(HashsyncError, ConnectionError):
    """A store could not be reached (refused, DNS failure, timeout) after retries."""


class IntegrityError(HashsyncError):
    """Data did not match the digest or size it was supposed to have."""


class FileChanged(IntegrityError):
    """A file changed while it was being read, so its digest would describe no real state.

    Attributes:
        path: The file that changed.
    """

    path: str


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
