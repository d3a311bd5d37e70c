"""``open_storage`` and the registry of URL schemes it understands.

Built in: plain paths and ``file://`` (:class:`SimpleLocalStorage`), ``s3://bucket/prefix``
(:class:`S3Storage`), ``gs://bucket/prefix`` (:class:`GCSStorage`, the ``gcs`` extra),
``http://`` and ``https://`` (:class:`HTTPStorage`), ``hub://`` and ``hubs://`` (a dataset of a
hashsync hub, :class:`hashsync.hub.HubStorage`). Other packages add schemes with
:func:`register_scheme`::

    register_scheme("az", lambda url, **options: MyAzureStorage.from_url(url, **options))
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from hashsync._redact import redact_url
from hashsync.errors import HashsyncError, InvalidArgument
from hashsync.storage.base import Storage

__all__ = ["StorageFactory", "open_storage", "register_scheme", "registered_schemes"]

StorageFactory = Callable[..., Storage]
"""Called as ``factory(url, **options)``; returns the storage for ``url``."""

_factories: dict[str, StorageFactory] = {}
_lock = threading.Lock()


def register_scheme(scheme: str, factory: StorageFactory, *, replace: bool = False) -> None:
    """Make :func:`open_storage` handle URLs of ``scheme`` with ``factory``.

    Args:
        scheme: The URL scheme, e.g. ``"gs"`` (case-insensitive).
        factory: Called as ``factory(url, **options)``.
        replace: Allow replacing an existing registration.

    Raises:
        InvalidArgument: The scheme is already registered and ``replace`` is false, or the
            scheme is not a valid URL scheme.
    """
    key = scheme.lower()
    if not key or not key[0].isalpha() or not all(c.isalnum() or c in "+-." for c in key):
        raise InvalidArgument(f"invalid URL scheme {scheme!r}")
    with _lock:
        if key in _factories and not replace:
            raise InvalidArgument(f"scheme {scheme!r} is already registered")
        _factories[key] = factory


def registered_schemes() -> list[str]:
    """Return the schemes :func:`open_storage` understands, sorted."""
    with _lock:
        return sorted(_factories)


def _path(path: str, **options: Any) -> Storage:
    from hashsync.storage.local import SimpleLocalStorage

    return SimpleLocalStorage(path, **options)


def _local(url: str, **options: Any) -> Storage:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"file URL with a remote host is not supported: {redact_url(url)!r}")
    from urllib.request import url2pathname

    return _path(url2pathname(parts.path), **options)


def _s3(url: str, **options: Any) -> Storage:
    from hashsync.storage.s3 import S3Storage

    return S3Storage.from_url(url, **options)


def _gs(url: str, **options: Any) -> Storage:
    from hashsync.storage.gcs import GCSStorage

    return GCSStorage.from_url(url, **options)


def _http(url: str, **options: Any) -> Storage:
    from hashsync.storage.http import HTTPStorage

    return HTTPStorage(url, **options)


def _hub(url: str, **options: Any) -> Storage:
    from hashsync.hub.storage import HubStorage

    return HubStorage.from_url(url, **options)


def open_storage(url_or_path: str | os.PathLike[str], **options: Any) -> Storage:
    """Return the storage for a path or URL.

    Args:
        url_or_path: A local path (``"data"``, ``Path("data")``), ``file:///abs/path``,
            ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``http(s)://host/path``
            (credentials and a query string are passed on:
            ``https://user:pw@host/path?token=...``),
            ``hub://host:port/dataset[/prefix]`` (``hubs://`` over HTTPS; the key from
            ``api_key=`` or ``$HASHSYNC_HUB_API_KEY``), or a URL of a scheme added with
            :func:`register_scheme`.
        **options: Passed to the storage class (e.g. ``endpoint_url=`` for S3,
            ``part_size=`` for local and S3 storages).

    Returns:
        A :class:`SimpleLocalStorage`, :class:`S3Storage`, :class:`GCSStorage`,
        :class:`HTTPStorage`, :class:`~hashsync.hub.HubStorage` or whatever the scheme's
        factory returns.

    Raises:
        InvalidArgument: The URL's scheme is unknown.
    """
    if isinstance(url_or_path, os.PathLike):
        return _path(os.fspath(url_or_path), **options)
    if not isinstance(url_or_path, str) or not url_or_path:
        raise InvalidArgument(f"expected a path or URL, not {url_or_path!r}")
    scheme, sep, _ = url_or_path.partition("://")
    if not sep:
        return _path(url_or_path, **options)
    with _lock:
        factory = _factories.get(scheme.lower())
    if factory is None:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        raise InvalidArgument(
            f"unknown storage URL scheme {scheme!r} in {redact_url(url_or_path)!r} "
            f"(known: {known}, or a local path)"
        )
    try:
        return factory(url_or_path, **options)
    except HashsyncError:
        raise
    except ValueError as exc:  # e.g. urllib's "Invalid IPv6 URL" for "http://[::1/x"
        raise InvalidArgument(f"invalid URL {redact_url(url_or_path)!r}: {exc}") from None


for _scheme, _factory in (
    ("file", _local),
    ("s3", _s3),
    ("gs", _gs),
    ("http", _http),
    ("https", _http),
    ("hub", _hub),
    ("hubs", _hub),
):
    register_scheme(_scheme, _factory)
