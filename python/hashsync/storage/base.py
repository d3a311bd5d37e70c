"""The abstract storage classes, the listing record and key validation.

A *key* is a ``/``-separated relative string such as ``"models/v1/weights.bin"``. Every
storage validates keys with :func:`validate_key` before touching disk or network, so a key
that could escape a directory (``"../x"``) or mean different things on different stores
(``"a//b"``, or a backslash) is refused the same way everywhere.
"""

from __future__ import annotations

import abc
import datetime
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from hashsync._folding import EXACT, Folding
from hashsync._native import FileEntry, Listing, filter_paths
from hashsync.atomic import is_internal_key
from hashsync.errors import InvalidArgument
from hashsync.storage.sink import BytesSink, Sink

if TYPE_CHECKING:
    from types import TracebackType

    from hashsync.errors import HashsyncError
    from hashsync.storage.local import FilesystemStorage

__all__ = [
    "ByteCallback",
    "SyncListing",
    "ObjectInfo",
    "ReadOnlyStorage",
    "ReadWriteStorage",
    "Storage",
    "current_progress",
    "exact_ns",
    "reporting_progress",
    "validate_key",
    "validate_prefix",
]

ByteCallback = Callable[[int], object]
_progress = threading.local()


@contextmanager
def reporting_progress(callback: ByteCallback | None) -> Iterator[None]:
    """Within the block, transfers on this thread report bytes moved to ``callback(n)``.

    Storage methods keep the signatures of the design (no progress argument), so a sync
    engine wanting byte-level progress wraps each transfer in this. ``callback`` may be
    called from the storage's own worker threads (parts of one object move in parallel), so
    it must be thread-safe.
    """
    previous = getattr(_progress, "callback", None)
    _progress.callback = callback
    try:
        yield
    finally:
        _progress.callback = previous


def current_progress() -> ByteCallback | None:
    """The callback set by :func:`reporting_progress` on this thread, if any.

    Storages read it on the calling thread and hand it to the threads they start.
    """
    return getattr(_progress, "callback", None)


class ObjectInfo(NamedTuple):
    """One entry of :meth:`Storage.list`.

    Attributes:
        key: The object's key, relative to the storage.
        size: Size in bytes.
        last_modified: When the object was last written (UTC-aware).
        hash: What :meth:`Storage.get_hash` returns for the key, or ``None`` when the store
            gives no hash (an HTTP server without ETags, or a listing asked not to hash).
    """

    key: str
    size: int
    last_modified: datetime.datetime
    hash: str | None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def exact_ns(when: datetime.datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly (no float rounding).

    A download stamps its file with this, and a listing reports it: the two must agree to
    the nanosecond, or a size-and-mtime comparison sees a difference that is not there.
    """
    if when.tzinfo is None:
        return int(when.timestamp() * 1_000_000_000)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _to_ns(when: datetime.datetime | None) -> int:
    return exact_ns(when) if when else 0


def sync_digest(value: str | None, own: str, wanted: str) -> str | None:
    """The digest a sync compares, from a hash as :meth:`Storage.get_hash` spells it.

    Args:
        value: The hash (an ETag, or ``"<algorithm>:<hex>"``), or None.
        own: The storage's :attr:`Storage.hash_algorithm`.
        wanted: The algorithm the sync compares by.

    Returns:
        The bare hex of ``wanted``; a hash of another algorithm whole (``"crc32c:<hex>"``
        of a GCS composite object), which the sync checks against the local file before
        copying; an ETag that is a plain MD5 when MD5s are wanted; else None (copied).
    """
    if value is None:
        return None
    algorithm, sep, digest = value.partition(":")
    if wanted == own:
        if not sep:
            return value
        return digest if algorithm == own else value
    if wanted == "md5" and own == "etag" and len(value) == 32 and "-" not in value:
        return value  # a single-part S3 ETag is the content's MD5
    return None


def validate_key(key: object) -> str:
    """Check that ``key`` is a usable storage key and return it.

    A key must be a non-empty string of ``/``-separated segments; no segment may be empty,
    ``"."`` or ``".."``, and the key may not contain a backslash or a NUL character. These
    rules keep a key inside its storage's root on every backend and give it one meaning on
    all of them (a local filesystem would silently fold ``"a//b"`` into ``"a/b"``).

    Args:
        key: The key to check.

    Returns:
        ``key`` unchanged.

    Raises:
        InvalidArgument: The key breaks a rule; the message names the key and the rule.
    """
    if not isinstance(key, str):
        raise InvalidArgument(f"storage key must be a str, not {type(key).__name__}: {key!r}")
    if not key:
        raise InvalidArgument("storage key must not be empty")
    if "\x00" in key:
        raise InvalidArgument(f"storage key {key!r} contains a NUL character")
    if "\\" in key:
        raise InvalidArgument(f"storage key {key!r} contains a backslash; use '/' to separate")
    if key.startswith("/"):
        raise InvalidArgument(f"storage key {key!r} is absolute; keys are relative")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidArgument(f"storage key {key!r} has an empty path segment")
        if segment in (".", ".."):
            raise InvalidArgument(f"storage key {key!r} contains a {segment!r} segment")
    return key


def validate_prefix(prefix: object) -> str:
    """Check a listing prefix: ``""``, or a key, optionally ending in ``/``.

    Args:
        prefix: The prefix to check.

    Returns:
        ``prefix`` unchanged.

    Raises:
        InvalidArgument: The prefix could never match a valid key.
    """
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidArgument(f"prefix must be a str, not {type(prefix).__name__}")
    # A prefix may stop mid-segment ("data/tr" matches "data/train.csv") or at a "/".
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


FilterRules = Sequence[tuple[str, str]]


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Segment(NamedTuple):
    """A slice of a sync's key space, synced on its own (one task of a sharded sync).

    Attributes:
        prefix: ``""`` or a directory-like prefix ending in ``/``.
        shallow: Only the keys directly under ``prefix`` (no further ``/``); else every key
            under it.
    """

    prefix: str = ""
    shallow: bool = False

    def contains(self, key: str) -> bool:
        """Whether ``key`` belongs to this segment."""
        if not key.startswith(self.prefix):
            return False
        return not self.shallow or "/" not in key[len(self.prefix) :]

    def check(self) -> Segment:
        """Return the segment if its prefix is usable.

        Raises:
            InvalidArgument: The prefix is not ``""`` or a valid key followed by ``/``.
        """
        if self.prefix and not (self.prefix.endswith("/") and validate_prefix(self.prefix)):
            raise InvalidArgument(f"a segment prefix must end in '/': {self.prefix!r}")
        return self


@dataclass(init=False)
class SyncListing:
    """One side of a sync, as its storage listed it (:meth:`Storage.list_for_sync`).

    Attributes:
        entries: The files, sorted by path, always a :class:`hashsync.Listing` (a sequence of
            :class:`hashsync.FileEntry` given here is turned into one); digests are ETags when
            asked for.
        errors: ``(path, reason)`` for entries that exist but could not be listed or hashed;
            a sync deletes nothing when the source has any, and never writes over them.
        skipped: ``(key, reason)`` for entries that exist but are never transferred.
        links_skipped: Symbolic links a filesystem listing did not follow (files or
            directories); what the destination holds at or below them is never deleted.
        folding: For a destination, how its directory compares names where the sync's keys
            could fold together (case-insensitive or normalising); exact otherwise.
    """

    entries: Listing
    errors: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    links_skipped: list[str]
    folding: Folding

    def __init__(
        self,
        entries: Listing | Iterable[FileEntry],
        errors: list[tuple[str, str]] | None = None,
        skipped: list[tuple[str, str]] | None = None,
        links_skipped: list[str] | None = None,
    ) -> None:
        self.entries = entries if isinstance(entries, Listing) else Listing.from_entries(entries)
        self.errors = errors if errors is not None else []
        self.skipped = skipped if skipped is not None else []
        self.links_skipped = links_skipped if links_skipped is not None else []
        self.folding = EXACT


class Storage(abc.ABC):
    """A place files live under keys: a directory, an S3 bucket prefix, an HTTP server.

    Every storage can be read and copied into a :class:`~hashsync.storage.sink.Sink` (a
    :class:`~hashsync.storage.LocalStorage`, a cache).
    Storages are context managers; :meth:`close` releases connections or temporary
    directories.
    """

    #: Whether the files are on this machine's filesystem (a sync's "upload", "download"
    #: or "copy" is named from this).
    is_local: bool = False

    #: What :meth:`get_hash` returns: ``"etag"`` (an S3 ETag, the default) or the name of a
    #: digest algorithm (a hub's ``"sha256"``: ``get_hash`` gives ``"sha256:<hex>"``). A sync
    #: asks both sides for digests of the source's algorithm.
    hash_algorithm: str = "etag"

    #: The part size the storage's ETags are made with (uploads and, for a local storage,
    #: :meth:`get_hash`); 8 MiB, s3transfer's and hashsync's default.
    part_size: int = 8 * 1024**2

    # -- declared abilities: defaults say "cannot", stores that can override them --------

    def local_path(self, key: str) -> Path | None:
        """The file on this machine that holds ``key``, or None for a store elsewhere.

        Filesystem storages return the path (which need not exist yet); everything else
        None. Generic code asks this instead of looking at what class a storage is.
        """
        return None

    def get_crc64nvme(self, key: str) -> str | None:
        """The object's whole-content CRC64NVME (hex), or None if the store cannot tell.

        The default cannot; S3 answers from its metadata or native checksums (one HEAD).
        """
        return None

    def get_part_sizes(self, key: str, *, etag: str | None = None) -> list[int] | None:
        """The sizes of the parts the object was uploaded in, or None if the store cannot tell.

        The default cannot; S3 asks ``HEAD ?partNumber=N``.
        """
        return None

    def with_symlinks_followed(self, follow: bool) -> Storage:
        """This storage, or a copy that follows symbolic links (``follow``) or skips them.

        Only filesystem storages have links; every other storage returns itself. A sync
        follows the links of a local source (``follow_symlinks=True``, as ``aws s3 sync``
        does) and never those of its destination.
        """
        return self

    def location(self) -> tuple[tuple[str, ...], str] | None:
        """Where the keys live, for overlap checks: ``(namespace, prefix)``, or None.

        Two storages overlap when their namespaces are equal and one prefix starts with the
        other (prefixes end in ``/``). None means "cannot tell" (never refused).
        """
        return None

    def list_for_sync(
        self,
        rules: FilterRules,
        *,
        checksum: bool = True,
        progress: Callable[[int, int], object] | None = None,
        must_exist: bool = False,
        reap_temporaries: bool = True,
        algorithm: str | None = None,
        segment: Segment | None = None,
    ) -> SyncListing:
        """List every entry for a sync, filtered by ``rules`` (include/exclude globs).

        The default lists through :meth:`list`, whose hashes are the digests. Keys named like
        hashsync's temporary files are left out and reported in ``skipped`` unless ``rules``
        exclude them anyway. Filesystem storages override this with the Rust scan.

        Args:
            rules: ``[("exclude", "*.tmp"), ...]`` in order, the last match winning.
            checksum: Whether digests are needed (a size-only comparison needs none).
            progress: ``progress(done, total)`` while listing or hashing, if it can tell.
            must_exist: Raise NotFound if the location itself does not exist (a source).
            reap_temporaries: Remove stale temporaries the listing comes across (off for a
                dry run or a diff, which change nothing).
            algorithm: The digests wanted: ``"etag"`` or an algorithm name (bare hex
                digests); None means :attr:`hash_algorithm`. A storage that cannot give
                them leaves the digests out (None), and a checksum sync then copies; one
                whose object has a hash of another algorithm gives it whole (see
                :func:`sync_digest`).
            segment: List only this slice of the keys (keys stay relative to the storage).
        """
        wanted_algorithm = algorithm or self.hash_algorithm
        entries: list[FileEntry] = []
        listing = SyncListing([])
        # In chunks: never the whole listing as ObjectInfo and as FileEntry at once.
        for infos in _chunks(self.list_segment(segment or Segment()), 50_000):
            keys = [info.key for info in infos]
            wanted = filter_paths(keys, list(rules))
            for info, want in zip(infos, wanted, strict=True):
                if not want:
                    continue
                if is_internal_key(info.key):
                    # A local copy would be taken for debris and removed by the next scan.
                    listing.skipped.append(
                        (info.key, "named like a hashsync temporary or lock file; not transferred")
                    )
                    continue
                entries.append(
                    FileEntry(
                        info.key,
                        info.size,
                        _to_ns(info.last_modified),
                        sync_digest(info.hash, self.hash_algorithm, wanted_algorithm)
                        if checksum
                        else None,
                    )
                )
        listing.entries = Listing.from_entries(entries)
        return listing

    #: Whether :meth:`list_level` and :meth:`count_keys` are cheap (a directory read, one
    #: delimited LIST), so that a sharded sync can plan segments over this storage; the
    #: defaults list everything, and the planner then keeps the whole sync in one segment.
    lists_by_level: bool = False

    def list_segment(self, segment: Segment) -> Iterator[ObjectInfo]:
        """Yield the objects of ``segment``, in key order.

        The default filters :meth:`list` of the segment's prefix; stores that can list one
        level (S3's delimiter) override it so that a shallow segment does not list the tree.
        """
        for info in self.list(segment.check().prefix):
            if segment.contains(info.key):
                yield info

    def list_level(self, prefix: str = "") -> tuple[int, list[str]]:
        """Count the keys directly under ``prefix`` and name its subdirectories.

        What a sharded sync's planner looks at, one level at a time.

        Args:
            prefix: ``""`` or a prefix ending in ``/``.

        Returns:
            ``(number of keys directly under prefix, sorted sub-prefixes ending in "/")``;
            ``(0, [])`` when nothing is there.
        """
        Segment(prefix).check()
        files = 0
        subdirs: set[str] = set()
        for info in self.list(prefix):
            rest = info.key[len(prefix) :]
            head, sep, _ = rest.partition("/")
            if sep:
                subdirs.add(prefix + head + "/")
            else:
                files += 1
        return files, sorted(subdirs)

    def count_keys(self, prefix: str, limit: int) -> int:
        """Count the keys under ``prefix``, stopping at ``limit`` (a size estimate).

        Args:
            prefix: ``""`` or a prefix ending in ``/``.
            limit: Stop counting here; the result is ``min(count, limit)``.
        """
        Segment(prefix).check()
        n = 0
        for _ in self.list(prefix):
            n += 1
            if n >= limit:
                break
        return n

    @abc.abstractmethod
    def copy(self, key: str, destination: Sink) -> None:
        """Copy the object ``key`` to the same key in ``destination`` (e.g. download it).

        The file appears under its final name only once complete and verified; a reader
        never sees a partial file, and a failed copy leaves at most a temporary file that a
        later copy into the same directory removes.

        Args:
            key: The key to copy.
            destination: Where to put it: any :class:`~hashsync.storage.sink.Sink` (a
                :class:`~hashsync.storage.LocalStorage`, a cache, a BytesSink).

        Raises:
            InvalidArgument: ``destination`` is not a sink.
            NotFound: No object has this key.
            IntegrityError: The data received did not match the size or hash announced.
            StorageUnavailable: The store could not be reached (after retries).
        """

    @abc.abstractmethod
    def get_hash(self, key: str) -> str:
        """Return the object's hash, comparable across storages.

        This is the S3 ETag (lowercase hex, no quotes): what S3 reports for an object, and
        for a local file the ETag its content gets when uploaded with the storage's part size.
        Two storages holding the same bytes (written with the same part size) return the
        same string. A storage whose :attr:`hash_algorithm` is not ``"etag"`` returns
        ``"<algorithm>:<hex>"`` instead (a hub: ``"sha256:<hex>"`` of the whole content).

        Args:
            key: The object's key.

        Raises:
            NotFound: No object has this key.
        """

    @abc.abstractmethod
    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return when the object was last written, as a UTC-aware datetime.

        Args:
            key: The object's key.

        Raises:
            NotFound: No object has this key.
        """

    @abc.abstractmethod
    def get_size(self, key: str) -> int:
        """Return the object's size in bytes.

        Args:
            key: The object's key.

        Raises:
            NotFound: No object has this key.
        """

    def exists(self, key: str) -> bool:
        """Return whether an object has this key.

        The default asks :meth:`get_size` (one HEAD on remote stores); local storages
        override it with a ``stat``.

        Args:
            key: The key to look for.
        """
        from hashsync.errors import NotFound

        try:
            self.get_size(key)
        except NotFound:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order.

        Args:
            prefix: Plain string prefix (``"data/"`` for a directory, ``"data/tr"`` matches
                ``"data/train.csv"`` too).
            hashes: Whether :attr:`ObjectInfo.hash` is wanted; ``False`` lets a store that
                computes hashes (a local directory) skip reading content. Stores whose
                listings carry hashes anyway fill them regardless.

        Yields:
            One :class:`ObjectInfo` per object.
        """

    def read_bytes(self, key: str, *, max_size: int = 64 * 1024**2) -> bytes:
        """Return the content of a small object, verified like any :meth:`copy`.

        Meant for small metadata objects (manifests, leases); the object passes through a
        temporary file (a :class:`~hashsync.storage.sink.BytesSink`).

        Args:
            key: The object's key.
            max_size: Refuse objects larger than this many bytes.

        Raises:
            NotFound: No object has this key.
            IntegrityError: The object is larger than ``max_size``, or its data did not match
                what the store announced.
        """
        from hashsync.errors import IntegrityError

        size = self.get_size(key)
        if size > max_size:
            raise IntegrityError(f"{key!r} in {self!r} is {size} bytes, more than {max_size}")
        sink = BytesSink(max_size)
        self.copy(key, sink)
        return sink.contents[key]

    def close(self) -> None:  # noqa: B027 - deliberately a no-op hook, not abstract
        """Release what the storage holds (connections, temporary directories)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ReadOnlyStorage(Storage):
    """A storage that can only be read: HTTP servers, shared read-only filesystems."""


class ReadWriteStorage(Storage):
    """A storage that can also be written and deleted from.

    The conditional methods let several jobs share a store without overwriting each other's
    work: each says what it expects to find, and the store refuses the change otherwise.
    """

    #: Whether the store takes a ``conditional_writes`` option: ``"claim"`` (claim objects
    #: that make conditional writes exclusive where the store's own check is not atomic) or
    #: ``"best-effort"`` (a HEAD check only, where the store ignores the conditions); see
    #: :class:`~hashsync.storage.S3Storage`.
    claims_conditions: bool = False

    def can_copy_server_side(self, source: Storage) -> bool:
        """Whether :meth:`transfer_from` copies from ``source`` without moving the data here."""
        return False

    def conditions_enforced(self) -> bool:
        """Whether create-only and if-hash writes are exclusive here (see :mod:`.conditions`).

        True where hashsync keeps the conditions itself (local directories, under a lock);
        remote stores find out once whether the store enforces them. Where it does not, the
        conditional methods raise :class:`~hashsync.errors.ConditionsNotEnforced` rather
        than overwrite silently.
        """
        return True

    @abc.abstractmethod
    def transfer_from(self, key: str, source: Storage) -> None:
        """Make ``key`` here hold what ``key`` holds in ``source``, whatever ``source`` is.

        Backends copy server-side where they can and otherwise call
        :func:`hashsync.storage.local.transfer_through_staging` (a local file is uploaded
        directly, anything else staged in a temporary local directory).

        Raises:
            NotFound: ``source`` has no such key.
            FileChanged: The source file changed while it was read.
        """

    def prepare_destination(self) -> None:  # noqa: B027 - a hook; most stores need nothing
        """Make the storage ready to be written (a local root directory is created).

        A sync calls it only after the source was listed, so a failed source leaves nothing.
        """

    def reclaim_abandoned(self) -> int:
        """Remove what crashed writers of this machine left in the storage; return how many.

        Called by a sync after its transfers (S3: unfinished multipart uploads).
        """
        return 0

    @abc.abstractmethod
    def copy_from(self, key: str, source: FilesystemStorage) -> None:
        """Copy ``source``'s file ``key`` to the same key here (e.g. upload it).

        Args:
            key: The key to copy.
            source: Where the file is.

        Raises:
            NotFound: ``source`` has no such key.
            StorageUnavailable: The store could not be reached (after retries).
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object ``key``.

        Args:
            key: The key to delete.

        Raises:
            NotFound: No object has this key.
        """

    def delete_many(self, keys: Sequence[str]) -> list[HashsyncError | None]:
        """Delete many objects; return one outcome per key, in order.

        ``None`` means the key is gone (deleted now, or, where the store does not tell, absent
        already); otherwise the error that kept it. One key's failure does not stop the others.
        Stores override this to batch (S3: DeleteObjects, 1,000 keys a request).

        Args:
            keys: The keys to delete (each at most once).
        """
        from hashsync.errors import HashsyncError

        outcomes: list[HashsyncError | None] = []
        for key in keys:
            try:
                self.delete(key)
                outcomes.append(None)
            except HashsyncError as e:
                outcomes.append(e)
        return outcomes

    @abc.abstractmethod
    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Copy ``source``'s file here unless the stored object is at least as new.

        Args:
            key: The key to copy.
            source: Where the file is.

        Returns:
            True if the file was copied; False if the stored object was as new or newer
            (including one written by someone else while this call ran).
        """

    @abc.abstractmethod
    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Copy ``source``'s file here only if the stored object still has ``hash``.

        This is a compare-and-swap: of several writers that read the same hash and race to
        replace it, exactly one succeeds where the store offers an atomic primitive (each
        backend documents what it uses and any remaining race window).

        Args:
            key: The key to write.
            hash: The hash (as :meth:`get_hash` returns it) the object must have now, or
                ``None`` to write only if no object has the key yet (create-only).
            source: Where the file is.

        Raises:
            PreconditionFailed: The object has a different hash, does not exist although a
                hash was given, or exists although ``hash`` is ``None``.
        """

    @abc.abstractmethod
    def write_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, if_hash: str | None = None
    ) -> str:
        """Store ``data`` under ``key`` and return the new object's hash.

        Meant for small metadata objects. With ``create_only`` the write fails if the key
        exists; with ``if_hash`` it fails unless the object still has that hash (the same
        compare-and-swap as :meth:`copy_from_if_overwriting_hash`).

        Args:
            key: The key to write.
            data: The whole content.
            create_only: Write only if no object has the key (``If-None-Match: *``).
            if_hash: Write only if the object has this hash now (``If-Match``).

        Raises:
            PreconditionFailed: The condition did not hold.
            InvalidArgument: Both conditions were given.
        """

    @abc.abstractmethod
    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Delete the object only if it still has ``hash``.

        Args:
            key: The key to delete.
            hash: The hash (as :meth:`get_hash` returns it) the object must have.

        Raises:
            PreconditionFailed: The object has a different hash.
            NotFound: No object has this key.
        """
