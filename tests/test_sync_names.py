"""User files whose names look like hashsync's own are synced; only the exact patterns are not.

hashsync writes ``.NAME.hashsync-tmp-HOST-PID-RANDOM`` temporaries and ``.NAME.hashsync-lock``
lock files. A user's ``report.hashsync-tmp-v2.txt`` or ``db.hashsync-lock`` is data.
"""

from __future__ import annotations

import pytest

import hashsync
from hashsync import sync
from hashsync.atomic import is_internal_key, is_internal_name, temporary_path
from sync_helpers import keys, s3, write_tree

LOOKALIKES = {
    "report.hashsync-tmp-v2.txt": b"r",
    "db.hashsync-lock": b"d",
    "sub/.hashsync-lock": b"l",
    "sub/notes.hashsync-lock.bak": b"n",
    ".b.hashsync-tmp-0a1b2c3d-1-deadbeef.txt": b"t",
}
OURS = [
    ".a.bin.hashsync-tmp-0a1b2c3d-123-deadbeef",
    ".a.bin.hashsync-lock",
    ".a.bin.hashsync-lock.broken-0123456789abcdef",
    ".a.bin.hashsync-tmp-partial-0123456789abcdef",
]


def test_only_the_exact_patterns_are_internal(tmp_path):
    for name in LOOKALIKES:
        assert not is_internal_key(name), name
    for name in OURS:
        assert is_internal_name(name), name
    assert is_internal_name(temporary_path(tmp_path / "x.bin").name)
    assert is_internal_name(temporary_path(tmp_path / ("é" * 200)).name)  # a shortened stem


def test_lookalike_files_are_synced_and_ours_are_not(tmp_path):
    write_tree(tmp_path / "src", {**LOOKALIKES, "a.bin": b"a"})
    for name in OURS:
        (tmp_path / "src" / name).write_bytes(b"internal")
    result = sync(tmp_path / "src", tmp_path / "dst")
    assert result.ok and sorted(result.transferred) == sorted([*LOOKALIKES, "a.bin"])
    assert result.skipped_keys == []
    listing = hashsync.scan(tmp_path / "src")
    assert listing.stats["internal_skipped"] == 2 and len(listing.temporaries) == 2
    # And they settle: nothing is copied again.
    assert sync(tmp_path / "src", tmp_path / "dst").transferred == []


@pytest.mark.s3
def test_lookalike_objects_round_trip_through_s3(s3_server, bucket, tmp_path):
    write_tree(tmp_path / "src", LOOKALIKES)
    up = sync(tmp_path / "src", s3(s3_server, bucket, "p"))
    assert up.ok and sorted(up.transferred) == sorted(LOOKALIKES)
    store = s3(s3_server, bucket, "p")
    store.write_bytes(OURS[0], b"an object named exactly like a temporary")
    down = sync(store, tmp_path / "down", delete=True)
    assert sorted(down.transferred) == sorted(LOOKALIKES)
    assert [k for k, _ in down.skipped_keys] == [OURS[0]]  # reported, not silent
    assert sorted(keys(store)) == sorted([*LOOKALIKES, OURS[0]])
    assert hashsync.tree_hash(tmp_path / "down") == hashsync.tree_hash(tmp_path / "src")
