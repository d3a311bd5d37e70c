"""The portable multi-lane MD5 (what Apple Silicon runs) against hashlib, on this x86 machine.

``HASHSYNC_MD5_SIMD=off`` turns the AVX2 and AVX-512 kernels off for a process, so the whole
path a Mac takes (many files at once, multipart ETags whose parts share lanes) runs here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys, hashsync
paths = sys.argv[1:]
print(json.dumps({
    "md5": hashsync.hash_files(paths, "md5"),
    "etag": [hashsync.hash_file(p, "etag", part_size=5 * 1024 * 1024) for p in paths],
}))
"""


def _etag(data: bytes, part: int) -> str:
    if len(data) <= part:
        return hashlib.md5(data).hexdigest()
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def test_portable_md5_matches_hashlib(tmp_path):
    sizes = [0, 1, 55, 56, 63, 64, 65, 127, 128, 4096, 100_000, 5 * 1024 * 1024 + 17]
    sizes += [12 * 1024 * 1024 + 3] + [1000 * i + i for i in range(1, 30)]
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    for simd in ("off", "on"):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, *paths],
            env={**os.environ, "HASHSYNC_MD5_SIMD": simd},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        got = json.loads(out)
        for path, md5, etag in zip(paths, got["md5"], got["etag"], strict=True):
            data = open(path, "rb").read()  # noqa: SIM115, PTH123 - a test's whole-file read
            assert md5 == hashlib.md5(data).hexdigest(), (simd, path)
            assert etag == _etag(data, 5 * 1024 * 1024), (simd, path)
