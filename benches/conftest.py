"""Shared benchmark data: generated once per session, page-cached before timing."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

MIB = 1024**2


def _write_big(path: Path, size: int, rng: random.Random) -> None:
    # Rotations of one random MiB: incompressible enough for hashing, and fast to generate.
    chunk = rng.randbytes(MIB)
    with open(path, "wb") as f:
        for i in range(size // MIB):
            k = (i * 4099) % MIB
            f.write(chunk[k:] + chunk[:k])


def _read_all(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 * MIB):
                pass


@pytest.fixture(scope="session")
def bench_root():
    root = Path(os.environ.get("HASHSYNC_BENCH_DIR") or tempfile.mkdtemp(prefix="hashsync-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    yield root
    if not os.environ.get("HASHSYNC_BENCH_DIR"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def big_files(bench_root) -> list[Path]:
    """(a) 1 GiB in 4 files of 256 MiB."""
    rng = random.Random(1)
    d = bench_root / "big"
    d.mkdir(exist_ok=True)
    paths = [d / f"big-{i}.bin" for i in range(4)]
    for p in paths:
        if not p.exists() or p.stat().st_size != 256 * MIB:
            _write_big(p, 256 * MIB, rng)
    _read_all(paths)
    return paths


@pytest.fixture(scope="session")
def small_files(bench_root) -> list[Path]:
    """(b) 20,000 files of 4-64 KiB in 100 directories."""
    rng = random.Random(2)
    d = bench_root / "small"
    paths = [d / f"d{i % 100:02d}" / f"f{i:05d}.bin" for i in range(20_000)]
    if not (d / ".complete").exists():
        pool = rng.randbytes(2 * MIB)
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            n = rng.randint(4, 64) * 1024
            off = rng.randrange(0, len(pool) - n)
            p.write_bytes(pool[off : off + n])
        (d / ".complete").touch()
    _read_all(paths)
    return paths


def _write_tree(root: Path, count: int, seed: int) -> list[Path]:
    """``count`` files of 1-64 KiB in 100 x 7 directories; reused across runs when complete."""
    rng = random.Random(seed)
    paths = [root / f"d{i % 100:02d}" / f"s{i % 7}" / f"f{i:06d}.bin" for i in range(count)]
    if not (root / ".complete").exists():
        pool = rng.randbytes(2 * MIB)
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            n = rng.randint(1, 64) * 1024
            off = rng.randrange(0, len(pool) - n)
            p.write_bytes(pool[off : off + n])
        (root / ".complete").touch()
    _read_all(paths)
    return paths


@pytest.fixture(scope="session")
def tree_20k(bench_root) -> Path:
    """20,000 files of 1-64 KiB."""
    root = bench_root / "tree-20k"
    _write_tree(root, 20_000, 3)
    return root


@pytest.fixture(scope="session")
def tree_100k(bench_root) -> Path:
    """100,000 files of 1-64 KiB (about 3.2 GB)."""
    root = bench_root / "tree-100k"
    _write_tree(root, 100_000, 4)
    return root
