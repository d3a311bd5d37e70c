"""Hashing throughput: hashsync.hash_files against the best pure-Python equivalent.

Run with ``make bench`` (or ``pytest benches --benchmark-enable``); ``benches/report.py`` turns
the JSON into the README table. Each algorithm's two contenders run next to each other, on the
same page-cached files.
"""

from __future__ import annotations

import hashlib
import zlib

import blake3
import pytest
import xxhash
from awscrt import checksums

import hashsync

MIB = 1024**2
PART = hashsync.DEFAULT_PART_SIZE
READ = MIB


def _stream(path, update):
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ):
            update(block)


def _hashlib(name):
    def run(path):
        h = hashlib.new(name)
        _stream(path, h.update)
        return h.hexdigest()

    return run


def _crc(fn, width):
    def run(path):
        crc = 0
        with open(path, "rb", buffering=0) as f:
            while block := f.read(READ):
                crc = fn(block, crc)
        return f"{crc:0{width}x}"

    return run


def _blake3(path):
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def _xxh3(path):
    h = xxhash.xxh3_64()
    _stream(path, h.update)
    return h.hexdigest()


def _etag(path):
    parts = []
    size = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(PART):
            size += len(block)
            parts.append(hashlib.md5(block))
    if size < PART:
        return parts[0].hexdigest() if parts else hashlib.md5().hexdigest()
    return f"{hashlib.md5(b''.join(p.digest() for p in parts)).hexdigest()}-{len(parts)}"


BASELINES = {
    "md5": ("hashlib", _hashlib("md5")),
    "sha1": ("hashlib", _hashlib("sha1")),
    "sha256": ("hashlib", _hashlib("sha256")),
    "crc32": ("zlib", _crc(zlib.crc32, 8)),
    "crc32c": ("awscrt", _crc(checksums.crc32c, 8)),
    "crc64nvme": ("awscrt", _crc(checksums.crc64nvme, 16)),
    "blake3": ("blake3 (mmap, threads)", _blake3),
    "xxh3": ("xxhash", _xxh3),
    "etag": ("hashlib md5 per part", _etag),
}


@pytest.mark.parametrize("dataset", ["big_files", "small_files"])
@pytest.mark.parametrize("algorithm", list(hashsync.ALGORITHMS))
@pytest.mark.parametrize("tool", ["hashsync", "python"])
def test_hash(benchmark, request, dataset, algorithm, tool):
    paths = request.getfixturevalue(dataset)
    total = sum(p.stat().st_size for p in paths)
    if tool == "hashsync":
        fn = lambda: hashsync.hash_files(paths, algorithm)  # noqa: E731
        label = "hashsync.hash_files"
    else:
        label, one = BASELINES[algorithm]
        fn = lambda: [one(p) for p in paths]  # noqa: E731
    benchmark.group = f"{dataset}:{algorithm}"
    benchmark.extra_info.update(
        algorithm=algorithm, dataset=dataset, tool=tool, label=label, bytes=total, files=len(paths)
    )
    rounds = 3
    digests = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    # Both contenders must compute the same digests, or the comparison means nothing.
    if tool == "python":
        assert digests == hashsync.hash_files(paths, algorithm)


def _two_dd_readers(paths):
    """Read every file with ``dd`` to /dev/null, two at a time: the page-cache copy limit."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def read(path):
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read, paths))


@pytest.mark.parametrize("dataset", ["big_files"])
def test_dd_readers(benchmark, request, dataset):
    """The reference the issue-15 target is set against: two ``dd`` readers of (a)."""
    paths = request.getfixturevalue(dataset)
    total = sum(p.stat().st_size for p in paths)
    benchmark.group = f"{dataset}:dd"
    benchmark.extra_info.update(kind="dd", dataset=dataset, bytes=total, files=len(paths))
    benchmark.pedantic(_two_dd_readers, args=(paths,), rounds=5, iterations=1, warmup_rounds=1)
