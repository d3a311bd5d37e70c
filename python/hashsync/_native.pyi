"""Type stubs and documentation for the Rust extension ``hashsync._native``."""

from collections.abc import Callable, Iterable, Iterator
from os import PathLike
from pathlib import Path
from typing import Final, Literal, Self, final, overload

from typing_extensions import Buffer

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PART_SIZE",
    "__version__",
    "hash_bytes",
    "hash_file",
    "hash_files",
    "etag",
    "crc_combine",
    "etag_matches",
    "match_etag",
    "Hasher",
    "FileEntry",
    "Listing",
    "Plan",
    "scan",
    "filter_paths",
    "is_internal_name",
    "diff",
    "tree_hash",
    "upload_part_size",
    "default_cache_dir",
    "S3Transport",
    "sigv4_sign",
]

_StrPath = str | PathLike[str]
_Progress = Callable[[int, int], object]
_AlgorithmName = Literal[
    "md5", "sha1", "sha256", "crc32", "crc32c", "crc64nvme", "blake3", "xxh3", "etag"
]

ALGORITHMS: Final[tuple[str, ...]]
"""Names of the supported algorithms."""

DEFAULT_PART_SIZE: Final[int]
"""The part size hashsync uploads with and assumes for ETags: 8 MiB, as s3transfer."""

__version__: Final[str]

def hash_bytes(
    data: Buffer,
    algorithm: _AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
) -> str:
    """Digest of an in-memory buffer as lowercase hex.

    Args:
        data: Any bytes-like object. ``bytes`` are hashed with the GIL released.
        algorithm: One of :data:`ALGORITHMS`.
        part_size: Part size for ``"etag"`` (5 MiB to 5 GiB).
        threshold: Size from which ``"etag"`` is multipart; defaults to ``part_size``.

    Returns:
        The digest. CRCs and xxh3 are the hex of the big-endian integer, zero-padded.

    Raises:
        UnknownAlgorithm: ``algorithm`` is not one of :data:`ALGORITHMS`.
        InvalidPartSize: ``part_size`` is outside S3's limits.
        TypeError: ``data`` is a ``str`` or not bytes-like.
    """

def hash_file(
    path: _StrPath,
    algorithm: _AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: _Progress | None = None,
) -> str:
    """Digest of one file.

    CRCs and ETags of a big file are computed in parallel (chunks are combined); MD5, SHA-1,
    SHA-256, BLAKE3 and XXH3 of one file are sequential by nature and use one core.

    Args:
        path: The file.
        algorithm: One of :data:`ALGORITHMS`.
        part_size: Part size for ``"etag"``.
        threshold: Size from which ``"etag"`` is multipart; defaults to ``part_size``.
        threads: Worker threads; default ``HASHSYNC_THREADS`` or the CPU count.
        progress: Called as ``progress(done_bytes, total_bytes)`` from the calling thread about
            ten times a second, and once at the end.

    Raises:
        NotFound: The file does not exist.
        PermissionDenied: The file cannot be read.
        IsADirectory: ``path`` is a directory.
        NotARegularFile: ``path`` is a FIFO, socket or device.
        FileChanged: The file was modified, truncated or replaced while it was hashed.
        InvalidPartSize: The part size is outside S3's limits or needs over 10,000 parts.
        KeyboardInterrupt: Ctrl-C; the work stops within a fraction of a second.
    """

@overload
def hash_files(
    paths: Iterable[_StrPath],
    algorithm: _AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: _Progress | None = None,
    return_exceptions: Literal[False] = False,
) -> list[str]: ...
@overload
def hash_files(
    paths: Iterable[_StrPath],
    algorithm: _AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: _Progress | None = None,
    return_exceptions: Literal[True],
) -> list[str | Exception]: ...
@overload
def hash_files(
    paths: Iterable[_StrPath],
    algorithm: _AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: _Progress | None = None,
    return_exceptions: bool = False,
) -> list[str] | list[str | Exception]:
    """Digests of many files, in input order, hashed in parallel.

    Work is split into (file, part) units scheduled largest first on a pool of ``threads``
    threads, so a mix of one huge file and many small ones keeps every core busy.

    Args:
        paths: The files.
        algorithm: One of :data:`ALGORITHMS`.
        part_size: Part size for ``"etag"``.
        threshold: Size from which ``"etag"`` is multipart; defaults to ``part_size``.
        threads: Worker threads; default ``HASHSYNC_THREADS`` or the CPU count.
        progress: ``progress(done_bytes, total_bytes)``, called from the calling thread.
        return_exceptions: Put each failing file's exception in its place in the result
            instead of raising the first one.

    Raises:
        NotFound, PermissionDenied, IsADirectory, FileChanged: For the first failing file
            (its path is in the message), unless ``return_exceptions`` is true.
        KeyboardInterrupt: Ctrl-C stops all workers within half a second.
    """

def crc_combine(algorithm: str, first: str, second: str, second_len: int) -> str:
    """The CRC of two pieces of data one after the other, from their CRCs (hex).

    ``crc_combine("crc64nvme", hash_bytes(a, "crc64nvme"), hash_bytes(b, "crc64nvme"), len(b))``
    equals ``hash_bytes(a + b, "crc64nvme")``; parts hashed separately can be checked whole.

    Raises:
        UnknownAlgorithm: Not an algorithm name.
        InvalidArgument: Not a CRC (crc32, crc32c, crc64nvme), or a digest that is not hex.
    """

def upload_part_size(size: int, *, part_size: int = ...) -> int:
    """The part size an object of ``size`` bytes is uploaded with.

    ``part_size``, doubled until the object fits in S3's 10,000 parts, as s3transfer (and so
    ``aws s3``) does: a 100 GiB file gets 16 MiB parts with the default 8 MiB. :func:`etag`
    predicts ETags with the same rule.

    Raises:
        InvalidPartSize: ``part_size`` is outside S3's limits, or the object would need parts
            above 5 GiB.
    """

def etag(
    path: _StrPath,
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: _Progress | None = None,
) -> str:
    """The S3 ETag ``path`` gets when uploaded with this part size and threshold.

    Below ``threshold`` (default: ``part_size``, as s3transfer) the ETag is the plain MD5;
    from it on, the MD5 of the concatenated part MD5s followed by ``-N``. No quotes.
    """

def match_etag(
    path: _StrPath,
    etag: str,
    *,
    part_sizes: Iterable[int] | None = None,
    progress: _Progress | None = None,
) -> int | None:
    """The part size with which ``path`` has ``etag``.

    Returns:
        0 if a single-part ETag equals the file's MD5, the matching part size for a multipart
        ETag, or None if no candidate matches. See :func:`etag_matches` for the candidates.

    Raises:
        InvalidArgument: ``etag`` is not an S3 ETag.
    """

def etag_matches(
    path: _StrPath,
    etag: str,
    *,
    part_sizes: Iterable[int] | None = None,
    progress: _Progress | None = None,
) -> bool:
    """Whether ``path``'s content has the S3 ETag ``etag``, whatever part size made it.

    A ``-N`` ETag only gives the part count, so every part size p with ceil(size/p) = N that a
    real tool uses is tried: 5 MiB, 8 MiB and its doublings (s3transfer), 15, 16, 50, 64 and
    100 MiB, ceil(size/N) exactly and rounded up to 1 MiB, and ``part_sizes``. All candidates
    are hashed in one read of the file.
    """

@final
class S3Transport:
    """A keep-alive connection pool that sends S3 requests (SigV4-signed) and GCS's.

    Requests run without the interpreter lock. Redirects are not followed; every HTTP status
    is returned as an answer. Host names under ``localhost`` reach 127.0.0.1 (RFC 6761).

    Args:
        timeout: Seconds allowed for each of sending and receiving an answer.
        connect_timeout: Seconds allowed to connect (default: ``timeout``).
        ca_bundle: A PEM file of certificates trusted for https instead of Mozilla's roots.
        pool: Idle connections kept per host.
        proxy: A proxy URL (``http://``, ``https://``, ``socks5://``) for every request; an
            HTTP proxy is asked to CONNECT, for http targets too. The environment is not read.

    Raises:
        OSError: The CA bundle cannot be read or holds no certificate.
        ValueError: The proxy URL is not usable (its password is not repeated).
    """

    def __new__(
        cls,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        ca_bundle: str | PathLike[str] | None = None,
        pool: int = 64,
        proxy: str | None = None,
    ) -> S3Transport: ...
    def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        *,
        credentials: tuple[str, str, str | None] | None = None,
        region: str = "us-east-1",
        max_body: int = ...,
    ) -> tuple[int, list[tuple[str, str]], bytes | None]:
        """Send one request (signed if ``credentials`` are given) and read its answer.

        Args:
            method: The HTTP method.
            url: The full URL, path and query percent-encoded as they are to be signed.
            headers: Headers to send (and sign, except hop-by-hop ones).
            body: The request body; its SHA-256 is signed.
            credentials: ``(access_key, secret_key, session_token)``, or None for an
                unsigned request.
            region: The signing region.
            max_body: A longer answer body is not read (its connection is closed).

        Returns:
            ``(status, headers, body)``: header names in lower case; body None when it was
            longer than ``max_body``.

        Raises:
            ConnectionRefusedError: Nothing listens at the endpoint.
            ConnectionResetError: The connection was dropped (after one retry on a new one).
            TimeoutError: The server did not answer in time.
            ValueError: The URL or a header is malformed.
            OSError: Any other failure before a complete answer arrived (TLS included).
        """

    def get_into(
        self,
        url: str,
        headers: list[tuple[str, str]],
        fd: int,
        offset: int,
        end: int,
        *,
        credentials: tuple[str, str, str | None] | None = None,
        region: str = "us-east-1",
        pinned_etag: str | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, list[tuple[str, str]], int, tuple[str, str] | None, bytes | None]:
        """GET bytes ``offset..end`` of an object straight into ``fd`` at ``offset``.

        Nothing is written unless the answer is a 200/206 of the version ``pinned_etag``
        names, whose Content-Range starts at or before ``offset`` (a 200 without one is the
        whole object: the bytes before ``offset`` are read past). ``progress`` is called
        with the bytes written every 8 MiB and at the end (with the GIL); an exception it
        raises stops the body and is raised here.

        Returns:
            ``(status, headers, written, problem, error_body)``: ``problem`` says why it
            stopped before ``end`` (``("changed", etag)``, ``("range", content_range)`` or
            ``("broken", message)``), else None; ``error_body`` is the start of the body of
            an answer other than 200/206.

        Raises:
            OSError: No answer (as :meth:`request`), or writing to ``fd`` failed.
        """

def sigv4_sign(
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    payload_sha256: str,
    when: str,
    credentials: tuple[str, str, str | None],
    region: str,
) -> list[tuple[str, str]]:
    """``headers`` plus the SigV4 headers of an S3 request, as :class:`S3Transport` signs it.

    Args:
        method: The HTTP method.
        url: The full URL, path and query percent-encoded.
        headers: The headers to sign (hop-by-hop ones are left unsigned).
        payload_sha256: The body's hex SHA-256, or ``UNSIGNED-PAYLOAD``.
        when: The signing time, ``YYYYMMDDTHHMMSSZ``.
        credentials: ``(access_key, secret_key, session_token)``.
        region: The signing region.
    """

@final
class Hasher:
    """A streaming hasher, like ``hashlib``'s objects.

    Example:
        >>> h = Hasher("crc32c")
        >>> h.update(b"1234")
        >>> h.update(b"56789")
        >>> h.hexdigest()
        'e3069283'
    """

    def __new__(
        cls,
        algorithm: _AlgorithmName | str = "sha256",
        *,
        part_size: int = ...,
        threshold: int | None = None,
    ) -> Self: ...
    def update(self, data: Buffer) -> None:
        """Feed more data."""
    def hexdigest(self) -> str:
        """The digest of everything fed so far; the hasher can keep going."""
    def copy(self) -> Hasher:
        """An independent copy of the current state."""
    @property
    def name(self) -> str:
        """The algorithm's name."""

@final
class FileEntry:
    """One file of a :class:`Listing`: relative ``/`` path, size, mtime and optional digest."""

    def __new__(
        cls, path: str, size: int, mtime_ns: int = 0, digest: str | None = None
    ) -> Self: ...
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def digest(self) -> str | None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Listing:
    """A sorted sequence of :class:`FileEntry` held compactly in Rust memory.

    Indexing, slicing, iteration and ``path in listing`` work as on a list; entries are created
    on access, so a listing of millions of files costs about 100 bytes per file.
    """

    @staticmethod
    def from_entries(entries: Iterable[FileEntry]) -> Listing:
        """A listing of ``entries`` in any order (sorted here).

        Raises:
            InvalidArgument: Two entries have the same path.
        """
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int, /) -> FileEntry: ...
    @overload
    def __getitem__(self, index: slice, /) -> list[FileEntry]: ...
    def __iter__(self) -> Iterator[FileEntry]: ...
    def __contains__(self, path: object, /) -> bool: ...
    def select(self, prefix: str, shallow: bool = False) -> Listing:
        """The entries under ``prefix`` as a listing with the same root and algorithm.

        With ``shallow``, only those directly in it: one segment of a sharded sync.
        """
    def find(self, path: str) -> FileEntry | None:
        """The entry for ``path`` (binary search), or None."""
    def paths(self) -> list[str]:
        """Every relative path, in order."""
    def same_entries(self, other: Listing) -> bool:
        """Whether ``other`` holds the same entries (paths, sizes, mtimes, digests).

        Errors, stats and roots are not compared. Runs in Rust memory, without creating
        entries: cheap even for millions of files.
        """
    @property
    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` for everything that could not be listed or hashed."""
    @property
    def empty_dirs(self) -> list[str]:
        """Directories with no entries at all."""
    @property
    def temporaries(self) -> list[str]:
        """Temporary files of hashsync (``.NAME.hashsync-tmp-HOST-PID-RANDOM``) seen.

        Never listed as entries.
        """
    @property
    def symlinks(self) -> list[str]:
        """The symbolic links met: skipped ones, or followed ones with ``follow_symlinks``.

        Links to files that the filters exclude are not among the skipped ones.
        """
    @property
    def stats(self) -> dict[str, int]:
        """Scan counters.

        Keys: files, bytes, dirs, excluded, symlinks_skipped, internal_skipped, special_skipped,
        digests_computed, digests_reused, bytes_hashed, errors, state_unavailable (1 if the
        hash state cache was asked for but could not be opened, read or written; the digests
        are correct either way).
        """
    @property
    def root(self) -> Path | None:
        """The scanned directory (None for listings built from entries)."""
    @property
    def algorithm(self) -> str | None:
        """The digests' algorithm, if any."""

@final
class Plan:
    """What :func:`diff` found: files to copy, files to delete, and the unchanged count."""

    @property
    def copy(self) -> list[str]:
        """Paths that are new or changed at the source."""
    @property
    def delete(self) -> list[str]:
        """Paths that only the target has."""
    @property
    def unchanged(self) -> int: ...
    @property
    def copy_bytes(self) -> int:
        """Total size of the files to copy."""
    def copy_entries(self) -> list[FileEntry]:
        """The source entries to copy."""
    def __bool__(self) -> bool:
        """True if anything would be copied or deleted."""

def scan(
    root: _StrPath,
    *,
    algorithm: _AlgorithmName | str | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    filters: Iterable[tuple[Literal["include", "exclude"], str]] | None = None,
    follow_symlinks: bool = False,
    part_size: int = ...,
    threads: int | None = None,
    state: bool = True,
    state_dir: _StrPath | None = None,
    progress: _Progress | None = None,
    subdir: str | None = None,
    recursive: bool = True,
    confined: bool = False,
) -> Listing:
    """Scans a directory tree in parallel.

    Patterns follow ``aws s3 sync``: shell globs on the relative path where ``*`` also matches
    ``/``; every file starts included and the last matching rule decides. ``include``/``exclude``
    apply excludes first, then includes (so an include always wins); ``filters`` gives the
    rules in your own order, like the CLI's ``--exclude``/``--include`` sequence.

    With ``algorithm``, each file gets a digest. Digests are remembered in the hash state cache
    (``state_dir``, default :func:`default_cache_dir`) keyed on device, inode, size, mtime and
    ctime, so an unchanged file is never read again; ``state=False`` disables it. If the cache
    location cannot be used (read-only, not a directory, ...), files are hashed without it:
    the listing is complete and correct, ``stats["state_unavailable"]`` is 1, and a
    :class:`~hashsync.errors.HashsyncWarning` naming the location and the reason is issued
    once per process and location.

    Symlinks are skipped (and counted) unless ``follow_symlinks``; loops are detected. FIFOs,
    sockets and devices are skipped. Unreadable entries go to :attr:`Listing.errors` and do not
    abort the scan.

    ``subdir`` scans one subdirectory of ``root`` (``"a/b"``), paths still relative to
    ``root``: a missing subdirectory, or one reached through a symlink that is not followed,
    lists nothing. ``recursive=False`` lists only the files directly in it (or in ``root``).
    Together they scan one segment of a sharded sync.

    ``confined=True`` never reads outside ``root``, whatever is renamed or replaced while the
    scan runs (for directories that others can write to, such as a hub's datasets): every
    directory is opened relative to its parent's descriptor without following links, and a file
    is hashed only if it is still the file (device, inode, size, mtime) the walk listed, opened
    the same way; anything else is left out with an entry in :attr:`Listing.errors`. ``root``
    itself must not be a symbolic link, and ``follow_symlinks`` must be false.

    Raises:
        NotFound: ``root`` does not exist.
        InvalidArgument: ``subdir`` is absolute or has empty, ``.`` or ``..`` parts;
            ``confined`` with ``follow_symlinks``, or with a ``root`` that is a symbolic link.
        NotADirectory: ``root`` is not a directory.
    """

def diff(
    source: Listing | Iterable[FileEntry],
    target: Listing | Iterable[FileEntry],
    *,
    compare: Literal["checksum", "size-mtime", "size"] = "checksum",
    progress: _Progress | None = None,
    download: bool = False,
) -> Plan:
    """Compares two listings by a sorted merge.

    ``"checksum"``: same size and same digest; when the digests are S3 ETags of different
    part sizes and one side is a scanned local directory, its file is checked against the other
    side's ETag by part-size inference (:func:`etag_matches`). A side without a digest counts as
    changed. ``"size-mtime"``: the ``aws s3 sync`` rule (size differs, or the source is newer,
    in whole seconds); with ``download`` (a store's objects to local files), aws's download
    rule instead: size differs, or the target is newer (a download stamps files with the
    object's Last-Modified, so a newer local file is a local edit). ``"size"``: size differs.
    """

def tree_hash(
    root: _StrPath,
    algorithm: _AlgorithmName | str = "sha256",
    *,
    follow_symlinks: bool = False,
    threads: int | None = None,
    state: bool = True,
    state_dir: _StrPath | None = None,
    progress: _Progress | None = None,
) -> str:
    r"""A content hash of a whole tree, independent of scan order, mtimes and permissions.

    Regular files and empty directories are listed by relative ``/`` path, sorted by UTF-8
    bytes. Each file contributes ``b"file\0" + path + b"\0" + hexdigest + b"\n"``, each empty
    directory ``b"dir\0" + path + b"\0\n"``; the result is ``algorithm`` over the concatenation
    (8 MiB parts for ``etag``). Symlinks, FIFOs, sockets and devices are ignored unless
    ``follow_symlinks``.

    The hash state cache is used as in :func:`scan`, with the same fallback and warning when
    its location cannot be used.

    Raises:
        InvalidArgument: Part of the tree could not be read (the message names it).
    """

def default_cache_dir() -> Path:
    """``$HASHSYNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/hashsync``, else ``~/.cache/hashsync``."""

def is_internal_name(name: str) -> bool:
    """Whether a file name is exactly one of hashsync's temporary or lock file names.

    The full patterns, random parts included; anything else is a user's file.
    """

def filter_paths(paths: Iterable[str], filters: Iterable[tuple[str, str]]) -> list[bool]:
    """Which ``paths`` the ordered ``("include" | "exclude", pattern)`` rules keep.

    The same rule :func:`scan` applies, for listings that do not come from a scan.

    Raises:
        InvalidArgument: A rule kind other than ``"include"`` or ``"exclude"``.
    """
