"""Symbolic links in a sync's source: followed like ``aws s3 sync``, or skipped visibly.

A Hugging Face cache snapshot (every file a link into ``blobs/``), a ``latest -> ckpt-123``
directory link and a linked file are the shapes users sync. Following is the default (aws's
too); ``--no-follow-symlinks`` skips links, reports each one, and never deletes what the
destination holds at or below a skipped link.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hashsync
from hashsync import sync
from hashsync.storage import SimpleLocalStorage
from hashsync.storage.base import Segment
from sync_helpers import cli, keys, s3, write_tree


def hf_snapshot(root: Path) -> Path:
    """A Hugging Face hub cache: blobs by hash, a snapshot of links into them."""
    write_tree(root / "blobs", {"aaa": b"config", "bbb": b"weights" * 1000, "ccc": b"vocab"})
    snap = root / "snapshots" / "abc"
    (snap / "tokenizer").mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/aaa")
    (snap / "model.safetensors").symlink_to("../../blobs/bbb")
    (snap / "tokenizer" / "vocab.txt").symlink_to("../../../blobs/ccc")
    return snap


def test_a_snapshot_of_links_is_synced_as_the_files_they_point_to(tmp_path):
    snap = hf_snapshot(tmp_path / "hub")
    result = sync(snap, tmp_path / "dst")
    assert result.ok and sorted(result.transferred) == [
        "config.json",
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    copy = tmp_path / "dst" / "model.safetensors"
    assert not copy.is_symlink() and copy.read_bytes() == b"weights" * 1000
    assert sync(snap, tmp_path / "dst").transferred == []  # and it settles


def test_a_linked_file_is_synced_not_deleted(tmp_path):
    write_tree(tmp_path / "src", {"a.bin": b"a", "real/b.bin": b"new b"})
    (tmp_path / "src" / "b.bin").symlink_to(tmp_path / "src" / "real" / "b.bin")
    write_tree(tmp_path / "dst", {"b.bin": b"old b"})
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True)
    assert result.ok and result.deleted == []
    assert (tmp_path / "dst" / "b.bin").read_bytes() == b"new b"


def test_skipped_links_are_reported_and_never_deleted(tmp_path):
    write_tree(tmp_path / "src", {"a.bin": b"a", "ckpt-123/w.bin": b"w"})
    (tmp_path / "src" / "b.bin").symlink_to(tmp_path / "src" / "a.bin")
    (tmp_path / "src" / "latest").symlink_to("ckpt-123")
    (tmp_path / "src" / "gone").symlink_to(tmp_path / "nowhere")
    write_tree(
        tmp_path / "dst",
        {"b.bin": b"mine", "latest/w.bin": b"w", "latest/notes": b"n", "extra": b"x"},
    )
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, follow_symlinks=False)
    assert result.skipped_links == ["b.bin", "gone", "latest"]
    assert result.ok and result.deleted == ["extra"]
    assert sorted(result.transferred) == ["a.bin", "ckpt-123/w.bin"]
    assert (tmp_path / "dst" / "b.bin").read_bytes() == b"mine"
    assert (tmp_path / "dst" / "latest" / "notes").exists()
    assert result.to_dict()["skipped_links"] == ["b.bin", "gone", "latest"]


def test_the_cli_counts_skipped_links_and_lists_them_in_json(tmp_path):
    write_tree(tmp_path / "src", {"a.bin": b"a"})
    (tmp_path / "src" / "b.bin").symlink_to(tmp_path / "src" / "a.bin")
    write_tree(tmp_path / "dst", {"b.bin": b"keep"})
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--delete", "--no-follow-symlinks")
    assert r.returncode == 0, r.stderr
    assert "1 symbolic link skipped" in r.stderr
    assert (tmp_path / "dst" / "b.bin").read_bytes() == b"keep"
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--no-follow-symlinks", "--json")
    assert json.loads(r.stdout)["skipped_links"] == ["b.bin"]
    d = cli("diff", tmp_path / "src", tmp_path / "dst", "--no-follow-symlinks", "--json")
    plan = json.loads(d.stdout)
    assert plan["delete"] == [] and plan["skipped_links"] == ["b.bin"], d.stdout
    d = cli("diff", tmp_path / "src", tmp_path / "dst")  # followed: b.bin differs
    assert d.stdout.splitlines() == ["~ b.bin"], d.stdout
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--json")
    assert json.loads(r.stdout)["transferred"] == ["b.bin"]


def test_a_dangling_link_is_an_error_that_suppresses_delete(tmp_path):
    write_tree(tmp_path / "src", {"a.bin": b"a"})
    (tmp_path / "src" / "gone.bin").symlink_to(tmp_path / "nowhere")
    write_tree(tmp_path / "dst", {"gone.bin": b"keep", "extra": b"x"})
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True)
    assert [p for p, _ in result.scan_errors] == ["gone.bin"]
    assert "broken symbolic link" in result.scan_errors[0][1]
    assert result.delete_suppressed and result.deleted == [] and not result.ok
    assert (tmp_path / "dst" / "gone.bin").exists() and (tmp_path / "dst" / "extra").exists()
    r = cli("sync", tmp_path / "src", tmp_path / "dst2")
    assert r.returncode == 2 and "gone.bin" in r.stderr


def test_a_link_loop_is_reported_and_the_rest_synced(tmp_path):
    write_tree(tmp_path / "src", {"sub/a.txt": b"a"})
    (tmp_path / "src" / "sub" / "back").symlink_to("..")
    result = sync(tmp_path / "src", tmp_path / "dst")
    assert result.transferred == ["sub/a.txt"]
    assert [p for p, _ in result.scan_errors] == ["sub/back"]
    assert "loop" in result.scan_errors[0][1]


def test_a_link_followed_at_listing_may_be_read_a_new_link_may_not(tmp_path):
    write_tree(tmp_path / "src", {"real/a.txt": b"a", "plain.txt": b"p"})
    (tmp_path / "src" / "linked").symlink_to("real")
    (tmp_path / "secret").write_bytes(b"SECRET")

    def swap(plan) -> None:  # after the listing, before the transfers
        (tmp_path / "src" / "plain.txt").unlink()
        (tmp_path / "src" / "plain.txt").symlink_to(tmp_path / "secret")

    result = sync(tmp_path / "src", tmp_path / "dst", on_plan=swap)
    assert sorted(result.transferred) == ["linked/a.txt", "real/a.txt"]
    assert [k for k, _ in result.failed] == ["plain.txt"]
    assert not (tmp_path / "dst" / "plain.txt").exists()


def test_links_in_the_destination_are_never_followed(tmp_path):
    write_tree(tmp_path / "src", {"sub/a.txt": b"a"})
    write_tree(tmp_path / "outside", {"a.txt": b"theirs"})
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "sub").symlink_to(tmp_path / "outside")
    dst = SimpleLocalStorage(tmp_path / "dst", follow_symlinks=True)
    result = sync(tmp_path / "src", dst)
    assert [k for k, _ in result.failed] == ["sub/a.txt"]
    assert (tmp_path / "outside" / "a.txt").read_bytes() == b"theirs"


def test_segments_follow_links_and_spare_skipped_ones(tmp_path, monkeypatch):
    # Above this many source entries a sync runs segment by segment.
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "0")
    write_tree(tmp_path / "src", {f"ckpt/{i}.bin": b"w%d" % i for i in range(5)})
    (tmp_path / "src" / "latest").symlink_to("ckpt")
    result = sync(tmp_path / "src", tmp_path / "dst")
    assert result.ok and len(result.transferred) == 10, result
    assert (tmp_path / "dst" / "latest" / "3.bin").read_bytes() == b"w3"
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, follow_symlinks=False)
    assert result.ok and result.deleted == [] and result.skipped_links == ["latest"]
    assert (tmp_path / "dst" / "latest" / "3.bin").exists()


def test_level_listing_follows_links_only_when_the_storage_does(tmp_path):
    write_tree(tmp_path / "t", {"real/a.txt": b"a", "top.txt": b"t"})
    (tmp_path / "t" / "link").symlink_to(tmp_path / "t" / "real")
    (tmp_path / "t" / "top-link").symlink_to(tmp_path / "t" / "top.txt")
    plain = SimpleLocalStorage(tmp_path / "t")
    assert plain.list_level("") == (1, ["real/"])
    following = plain.with_symlinks_followed(True)
    assert following is not plain and not plain.follow_symlinks
    assert following.list_level("") == (2, ["link/", "real/"])
    assert following.count_keys("link/", 10) == 1
    listed = following.list_for_sync([], segment=Segment("link/")).entries
    assert [e.path for e in listed] == ["link/a.txt"]


@pytest.mark.s3
def test_links_uploaded_like_aws_s3_sync(s3_server, bucket, tmp_path):
    snap = hf_snapshot(tmp_path / "hub")
    (snap / "latest").symlink_to(tmp_path / "hub" / "blobs")
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "aws"),
            "s3",
            "sync",
            str(snap),
            f"s3://{bucket}/aws",
            "--only-show-errors",
        ],
        env=s3_server.env(inherit=True),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    env = {**s3_server.env(inherit=True)}
    out = cli("sync", snap, f"s3://{bucket}/hs", "--json", "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    theirs = keys(s3(s3_server, bucket, "aws"))
    ours = keys(s3(s3_server, bucket, "hs"))
    assert ours == theirs and len(ours) == 6, (ours, theirs)
    # Skipping them, as aws --no-follow-symlinks does, but said.
    out = cli("sync", snap, f"s3://{bucket}/skip", "--no-follow-symlinks", "--json", env=env)
    assert json.loads(out.stdout)["skipped_links"] == [
        "config.json",
        "latest",
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    assert keys(s3(s3_server, bucket, "skip")) == {}


def test_tree_hash_and_scan_agree_with_the_sync_on_links(tmp_path):
    snap = hf_snapshot(tmp_path / "hub")
    sync(snap, tmp_path / "copy")
    assert hashsync.tree_hash(snap, follow_symlinks=True) == hashsync.tree_hash(tmp_path / "copy")
    listing = hashsync.scan(snap)
    assert listing.symlinks == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert listing.stats["symlinks_skipped"] == 3
    assert os.path.islink(snap / "config.json")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_a_link_to_an_unreadable_file_is_an_error_not_a_deletion(tmp_path):
    write_tree(tmp_path / "src", {"a.bin": b"a"})
    write_tree(tmp_path / "private", {"secret.bin": b"s"})
    os.chmod(tmp_path / "private" / "secret.bin", 0o600)
    os.chown(tmp_path / "private" / "secret.bin", 65534, 65534)
    (tmp_path / "src" / "s.bin").symlink_to(tmp_path / "private" / "secret.bin")
    write_tree(tmp_path / "dst", {"s.bin": b"copy", "extra": b"x"})
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", "--"]  # fmt: skip
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--delete", "--json", prefix=drop)
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    assert [e["path"] for e in out["scan_errors"]] == ["s.bin"] and out["delete_suppressed"]
    assert (tmp_path / "dst" / "s.bin").read_bytes() == b"copy"
    assert (tmp_path / "dst" / "extra").exists()
