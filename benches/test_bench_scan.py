"""Scanning: warm and cold hashsync.scan against `find` and against os.walk + hashlib.

The claims: a warm scan with digests (all reused from the hash state cache) costs at most 2x
`find ROOT -type f -printf '%s %T@\\n'`; a cold scan with ETag digests is at least 1.5x faster
than os.walk plus a hashlib loop. Run with ``make bench``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time

import pytest

import hashsync

PART = hashsync.DEFAULT_PART_SIZE


def python_etag_scan(root):
    """The pure-Python equivalent: walk, stat, and compute S3 ETags with hashlib."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name == ".complete":
                continue
            path = os.path.join(dirpath, name)
            parts = []
            with open(path, "rb", buffering=0) as f:
                while block := f.read(PART):
                    parts.append(hashlib.md5(block))
            size = os.fstat(f.fileno()).st_size if False else os.path.getsize(path)
            if size < PART:
                digest = parts[0].hexdigest() if parts else hashlib.md5().hexdigest()
            else:
                joined = b"".join(p.digest() for p in parts)
                digest = f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"
            out[os.path.relpath(path, root)] = digest
    return out


def find_listing(root):
    subprocess.run(
        ["find", str(root), "-type", "f", "-printf", "%s %T@\\n"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def warm_state(tree_20k, tree_100k):
    state = tempfile.mkdtemp(prefix="hashsync-bench-state-")
    # Digests recorded within 2 s of a file's last change are not trusted (racy mtime rule).
    time.sleep(2.1)
    for root in (tree_20k, tree_100k):
        hashsync.scan(root, algorithm="etag", state_dir=state, exclude=".complete")
    return state


@pytest.mark.parametrize("tree", ["tree_20k", "tree_100k"])
@pytest.mark.parametrize("tool", ["find", "hashsync-warm", "hashsync-cold", "python-walk-hashlib"])
def test_scan(benchmark, request, tree, tool, warm_state):
    root = request.getfixturevalue(tree)
    if tool == "find":
        fn = lambda: find_listing(root)  # noqa: E731
    elif tool == "hashsync-warm":
        fn = lambda: hashsync.scan(  # noqa: E731
            root, algorithm="etag", state_dir=warm_state, exclude=".complete"
        )
    elif tool == "hashsync-cold":
        fn = lambda: hashsync.scan(root, algorithm="etag", state=False, exclude=".complete")  # noqa: E731
    else:
        fn = lambda: python_etag_scan(root)  # noqa: E731
    benchmark.group = f"scan:{tree}"
    benchmark.extra_info.update(kind="scan", tree=tree, tool=tool)
    result = benchmark.pedantic(fn, rounds=5 if tool != "python-walk-hashlib" else 3, iterations=1)
    if tool == "hashsync-warm":
        assert result.stats["digests_computed"] == 0
    if tool == "python-walk-hashlib":
        ours = hashsync.scan(root, algorithm="etag", state=False, exclude=".complete")
        assert {e.path: e.digest for e in ours} == result


def test_diff_memory_million(benchmark):
    """Peak RSS of diffing two 1,000,000-entry listings (Rust example binary)."""
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--example", "diff_memory"],
        check=True,
        capture_output=True,
        text=True,
        cwd=os.path.join(os.path.dirname(__file__), ".."),
    ).stdout
    fields = dict(line.split("=", 1) for line in out.split())
    benchmark.extra_info.update(kind="diff_memory", **fields)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
