"""One machine, a huge source: the engine syncs it segment by segment (hashsync.segments).

The threshold is lowered through ``HASHSYNC_SEGMENTED_ABOVE`` so that small trees take the
segmented path; every result must equal the plain sync's.
"""

from __future__ import annotations

import pytest

import hashsync
from hashsync.storage.base import Segment
from hashsync.syncing import segmented as segments
from sync_helpers import keys, s3, write_tree

FILES = {
    "top.txt": b"top",
    "a/1.txt": b"one",
    "a/b/2.txt": b"two" * 50,
    "a/b/c/3.txt": b"three",
    "a.txt": b"sorts between a/ and a0",
    "a0/4.txt": b"four",
    "é/ü.txt": b"unicode",
    **{f"many/f{i:03d}.bin": bytes([i]) * (i + 1) for i in range(120)},
}
DST_EXTRA = {"old.txt": b"old", "a/b/old.bin": b"old", "gone/x.txt": b"x"}


def summary(r):
    return (
        sorted(r.transferred),
        sorted(r.deleted),
        r.skipped,
        r.bytes_transferred,
        r.ok,
        r.delete_suppressed,
    )


@pytest.fixture
def segmented(monkeypatch):
    calls = []
    real = segments.sync_in_segments

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(segments, "sync_in_segments", spy)
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "3")
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {"delete": True},
        {"delete": True, "dry_run": True},
        {"exclude": "a/b/*", "delete": True},
        {"include": "*.bin", "exclude": "*", "compare": "size"},
        {"delete": True, "max_delete": 1},
    ],
)
def test_segmented_local_sync_equals_the_plain_one(tmp_path, monkeypatch, segmented, options):
    src = tmp_path / "src"
    write_tree(src, FILES)
    for name in ("plain", "seg"):
        write_tree(tmp_path / name, {**DST_EXTRA, "a/1.txt": b"changed"})
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "1000000")
    plain = hashsync.sync(src, tmp_path / "plain", **options)
    assert segmented == []
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "3")
    seg = hashsync.sync(src, tmp_path / "seg", **options)
    assert len(segmented) == 1
    assert summary(seg) == summary(plain)
    assert hashsync.tree_hash(tmp_path / "seg") == hashsync.tree_hash(tmp_path / "plain")


def test_segmented_s3_both_ways_equals_the_plain_one(s3_server, bucket, tmp_path, segmented):
    src = tmp_path / "src"
    write_tree(src, FILES)
    up = hashsync.sync(src, s3(s3_server, bucket, "seg"))
    assert len(up.transferred) == len(FILES) and segmented
    stale = s3(s3_server, bucket, "seg")
    stale.write_bytes("zz/stale.txt", b"s")
    again = hashsync.sync(src, stale, delete=True)
    assert again.transferred == [] and again.deleted == ["zz/stale.txt"]
    down = hashsync.sync(s3(s3_server, bucket, "seg"), tmp_path / "down", delete=True)
    assert len(down.transferred) == len(FILES) and down.ok
    assert hashsync.tree_hash(tmp_path / "down") == hashsync.tree_hash(src)
    assert set(keys(s3(s3_server, bucket, "seg"))) == set(FILES)


def test_entries_outside_every_segment_stop_deletes(tmp_path, monkeypatch, segmented):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, FILES)
    write_tree(dst, DST_EXTRA)
    real = segments.plan_segments

    def lose_one(*args, **kwargs):
        batches = real(*args, **kwargs)
        return [[s for s in batch if s.prefix != "many/"] for batch in batches]

    monkeypatch.setattr(segments, "plan_segments", lose_one)
    r = hashsync.sync(src, dst, delete=True)
    assert r.delete_suppressed and r.deleted == [] and not r.ok
    assert any("outside every segment" in why for _, why in r.scan_errors)
    assert (dst / "old.txt").exists()


def test_select_cuts_python_and_rust_listings_alike(tmp_path):
    write_tree(tmp_path, FILES)
    listing = hashsync.scan(tmp_path, algorithm="etag")
    as_list = list(listing)
    for seg in (Segment(), Segment("", True), Segment("a/"), Segment("a/", True), Segment("é/")):
        rust = [e.path for e in segments.select(hashsync_listing(listing), seg).entries]
        python = [e.path for e in segments.select(hashsync_listing(as_list), seg).entries]
        assert rust == python == [p for p in sorted(FILES) if seg.contains(p)]


def hashsync_listing(entries):
    from hashsync.storage.base import SyncListing

    return SyncListing(entries)
