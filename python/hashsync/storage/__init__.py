"""Storages: local directories, S3-compatible stores, GCS and HTTP servers behind one API.

Every storage reads (:meth:`~Storage.copy` into a :class:`Sink` such as a
:class:`LocalStorage`, :meth:`~Storage.get_hash`, :meth:`~Storage.get_last_modified`,
:meth:`~Storage.get_size`, :meth:`~Storage.exists`, :meth:`~Storage.list`); read-write
storages also write, delete, and write or delete conditionally. Hashes are S3 ETags
everywhere, so they compare across storages.

Example:
    >>> from hashsync.storage import open_storage, TemporaryLocalStorage
    >>> with TemporaryLocalStorage() as scratch:
    ...     with scratch.open("hello.txt", "w") as f:
    ...         _ = f.write("hi")
    ...     scratch.get_hash("hello.txt")
    '49f68a5c8493ec2c0bf489821c21fc3b'
"""

from typing import TYPE_CHECKING, Any

from hashsync.storage.base import (
    ObjectInfo,
    ReadOnlyStorage,
    ReadWriteStorage,
    Storage,
    validate_key,
)
from hashsync.storage.local import (
    FilesystemStorage,
    LocalStorage,
    PartitioningLocalStorage,
    ReadOnlyFilesystemStorage,
    SimpleLocalStorage,
    TemporaryLocalStorage,
)
from hashsync.storage.registry import open_storage, register_scheme, registered_schemes
from hashsync.storage.sink import BytesSink, Sink
from hashsync.storage.upload_options import UploadOptions

if TYPE_CHECKING:
    from hashsync.storage.gcs import GCSStorage
    from hashsync.storage.http import HTTPStorage
    from hashsync.storage.s3 import S3Storage

__all__ = [
    "BytesSink",
    "FilesystemStorage",
    "GCSStorage",
    "HTTPStorage",
    "LocalStorage",
    "ObjectInfo",
    "PartitioningLocalStorage",
    "ReadOnlyFilesystemStorage",
    "ReadOnlyStorage",
    "ReadWriteStorage",
    "S3Storage",
    "SimpleLocalStorage",
    "Sink",
    "Storage",
    "TemporaryLocalStorage",
    "UploadOptions",
    "open_storage",
    "register_scheme",
    "registered_schemes",
    "validate_key",
]


def __getattr__(name: str) -> Any:
    # The network backends load on first use: a command that syncs two local trees, or S3
    # only, does not pay for http.client / email parsing and the like at start-up.
    if name == "S3Storage":
        from hashsync.storage.s3 import S3Storage

        return S3Storage
    if name == "GCSStorage":
        from hashsync.storage.gcs import GCSStorage

        return GCSStorage
    if name == "HTTPStorage":
        from hashsync.storage.http import HTTPStorage

        return HTTPStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
