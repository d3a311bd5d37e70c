"""Independent reference implementations the tests compare hashsync against."""

from __future__ import annotations

import hashlib
import zlib

import blake3
import xxhash
from awscrt import checksums

MIB = 1024**2


def s3_etag(data: bytes, part_size: int = 8 * MIB, threshold: int | None = None) -> str:
    """The ETag S3 gives an object uploaded by s3transfer with this part size and threshold."""
    threshold = part_size if threshold is None else threshold
    if len(data) == 0 or len(data) < threshold:
        return hashlib.md5(data).hexdigest()
    parts = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def reference(data: bytes, algorithm: str, part_size: int = 8 * MIB) -> str:
    """Digest of ``data`` computed by a library other than hashsync."""
    if algorithm in ("md5", "sha1", "sha256"):
        return hashlib.new(algorithm, data).hexdigest()
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    if algorithm == "crc32c":
        return f"{checksums.crc32c(data):08x}"
    if algorithm == "crc64nvme":
        return f"{checksums.crc64nvme(data):016x}"
    if algorithm == "blake3":
        return blake3.blake3(data).hexdigest()
    if algorithm == "xxh3":
        return xxhash.xxh3_64_hexdigest(data)
    if algorithm == "etag":
        return s3_etag(data, part_size)
    raise AssertionError(algorithm)
