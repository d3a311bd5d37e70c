"""Type stubs and documentation for the Rust extension ``hashsync._native``."""

from collections.abc import Callable, Iterable
from os import PathLike
from typing import Final, Literal, overload

from typing_extensions import Buffer

StrPath = str | PathLike[str]
Progress = Callable[[int, int], object]
AlgorithmName = Literal[
    "md5", "sha1", "sha256", "crc32", "crc32c", "crc64nvme", "blake3", "xxh3", "etag"
]

ALGORITHMS: Final[tuple[str, ...]]
"""Names of the supported algorithms."""

DEFAULT_PART_SIZE: Final[int]
"""The part size hashsync uploads with and assumes for ETags: 8 MiB, as s3transfer."""

__version__: Final[str]

def hash_bytes(
    data: Buffer,
    algorithm: AlgorithmName | str = "sha256",
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
    path: StrPath,
    algorithm: AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
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
    paths: Iterable[StrPath],
    algorithm: AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    return_exceptions: Literal[False] = False,
) -> list[str]: ...
@overload
def hash_files(
    paths: Iterable[StrPath],
    algorithm: AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    return_exceptions: Literal[True],
) -> list[str | Exception]: ...
def hash_files(
    paths: Iterable[StrPath],
    algorithm: AlgorithmName | str = "sha256",
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
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

def etag(
    path: StrPath,
    *,
    part_size: int = ...,
    threshold: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> str:
    """The S3 ETag ``path`` gets when uploaded with this part size and threshold.

    Below ``threshold`` (default: ``part_size``, as s3transfer) the ETag is the plain MD5;
    from it on, the MD5 of the concatenated part MD5s followed by ``-N``. No quotes.
    """

def match_etag(
    path: StrPath,
    etag: str,
    *,
    part_sizes: Iterable[int] | None = None,
    progress: Progress | None = None,
) -> int | None:
    """The part size with which ``path`` has ``etag``.

    Returns:
        0 if a single-part ETag equals the file's MD5, the matching part size for a multipart
        ETag, or None if no candidate matches. See :func:`etag_matches` for the candidates.

    Raises:
        InvalidArgument: ``etag`` is not an S3 ETag.
    """

def etag_matches(
    path: StrPath,
    etag: str,
    *,
    part_sizes: Iterable[int] | None = None,
    progress: Progress | None = None,
) -> bool:
    """Whether ``path``'s content has the S3 ETag ``etag``, whatever part size made it.

    A ``-N`` ETag only gives the part count, so every part size p with ceil(size/p) = N that a
    real tool uses is tried: 5 MiB, 8 MiB and its doublings (s3transfer), 15, 16, 50, 64 and
    100 MiB, ceil(size/N) exactly and rounded up to 1 MiB, and ``part_sizes``. All candidates
    are hashed in one read of the file.
    """

class Hasher:
    """A streaming hasher, like ``hashlib``'s objects.

    Example:
        >>> h = Hasher("crc32c")
        >>> h.update(b"1234")
        >>> h.update(b"56789")
        >>> h.hexdigest()
        'e3069283'
    """

    def __init__(
        self,
        algorithm: AlgorithmName | str = "sha256",
        *,
        part_size: int = ...,
        threshold: int | None = None,
    ) -> None: ...
    def update(self, data: Buffer) -> None:
        """Feed more data."""
    def hexdigest(self) -> str:
        """The digest of everything fed so far; the hasher can keep going."""
    def copy(self) -> Hasher:
        """An independent copy of the current state."""
    @property
    def name(self) -> str:
        """The algorithm's name."""
