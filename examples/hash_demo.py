"""hashsync demo: hash a generated sample tree with hashsync and with hashlib, and compare.

Run with ``make hash-demo``. Generates a seeded tree in a temporary directory (many small files
plus a few large ones), hashes it with ``hashsync.hash_files`` and with a plain ``hashlib`` loop,
prints both timings and whether every digest agrees, then removes the tree.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import hashsync

MIB = 1024**2
PART = hashsync.DEFAULT_PART_SIZE


def make_tree(root: Path, small_files: int, big_files: int, seed: int = 0) -> list[Path]:
    """Writes ``small_files`` files of 4-256 KiB and ``big_files`` files of 48-80 MiB."""
    rng = random.Random(seed)
    paths = []
    for i in range(small_files):
        p = root / f"shard-{i % 16:02d}" / f"sample-{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(4, 256) * 1024))
        paths.append(p)
    for i in range(big_files):
        p = root / "weights" / f"model-{i}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        chunk = rng.randbytes(MIB)
        with open(p, "wb") as f:
            for j in range(rng.randint(48, 80)):
                f.write(chunk[j:] + chunk[:j])
        paths.append(p)
    return paths


def hashlib_etag(path: Path) -> str:
    """The S3 ETag computed the usual pure-Python way (what awscli users write)."""
    parts = []
    with open(path, "rb") as f:
        while block := f.read(PART):
            parts.append(hashlib.md5(block).digest())
    if len(parts) <= 1 and os.path.getsize(path) < PART:
        return parts[0].hex() if parts else hashlib.md5(b"").hexdigest()
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def hashlib_digest(path: Path, algorithm: str) -> str:
    """The digest computed with hashlib, reading 1 MiB at a time."""
    if algorithm == "etag":
        return hashlib_etag(path)
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    """Runs the demo; exit status 1 if any digest disagrees."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-files", type=int, default=3000)
    ap.add_argument("--big-files", type=int, default=4)
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    args = ap.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hashsync-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        paths = make_tree(root, args.small_files, args.big_files)
        total = sum(p.stat().st_size for p in paths)
        print(
            f"generated {len(paths)} files, {total / MIB:.0f} MiB in {root} "
            f"({time.perf_counter() - t:.1f} s)"
        )
        print(f"hashsync {hashsync.__version__}, {os.cpu_count()} CPUs\n")
        print(f"{'algorithm':<10} {'hashsync':>10} {'hashlib':>10} {'speed-up':>9}  agree")
        all_agree = True
        for algorithm in ("sha256", "etag", "md5"):
            hashsync.hash_files(paths[:50], algorithm)  # warm the page cache and the pool
            t = time.perf_counter()
            ours = hashsync.hash_files(paths, algorithm)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            theirs = [hashlib_digest(p, algorithm) for p in paths]
            t_theirs = time.perf_counter() - t
            agree = ours == theirs
            all_agree &= agree
            print(
                f"{algorithm:<10} {t_ours:>9.2f}s {t_theirs:>9.2f}s {t_theirs / t_ours:>8.2f}x  "
                f"{'yes' if agree else 'NO'}"
            )
        print("\nall digests agree" if all_agree else "\nDIGESTS DISAGREE")
        return 0 if all_agree else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
