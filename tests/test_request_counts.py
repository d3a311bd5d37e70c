"""Requests and bytes a sync costs, counted by hashsync.testing's counting proxy (SeaweedFS)."""

from __future__ import annotations

import os

import hashsync
from hashsync.testing.counting_proxy import CountingProxy
from sync_helpers import s3, write_tree

MIB = 1024**2


def test_a_small_prefix_is_listed_in_one_request(s3_server, bucket, tmp_path):
    write_tree(tmp_path / "src", {f"d{i % 16:02d}/f{i}.txt": b"x" for i in range(300)})
    hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p"))
    with CountingProxy(s3_server.endpoint_url) as proxy:
        result = hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p", endpoint_url=proxy.url))
        counts = proxy.take()
    assert result.ok and len(result.transferred) == 0
    assert dict(counts.requests) == {"GET": 1}  # one ListObjectsV2 page, as aws and s5cmd


def test_a_large_prefix_is_listed_in_parallel_subtrees(s3_server, bucket, tmp_path):
    client = s3_server.client()
    keys = [f"p/d{i % 4}/f{i:05d}" for i in range(1100)]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    with CountingProxy(s3_server.endpoint_url) as proxy:
        listed = list(s3(s3_server, bucket, "p", endpoint_url=proxy.url).list())
        counts = proxy.take()
    assert [o.key for o in listed] == sorted(k[2:] for k in keys)
    # The first page (truncated), the top level, then 4 subtrees (one of 275 keys each).
    assert counts.requests["GET"] == 1 + 1 + 4


def test_a_listed_large_object_is_not_fetched_twice(s3_server, bucket, tmp_path):
    data = os.urandom(12 * MIB)
    write_tree(tmp_path / "src", {"big.bin": data, "small.txt": b"small"})
    hashsync.sync(tmp_path / "src", s3(s3_server, bucket, "p"))
    with CountingProxy(s3_server.endpoint_url) as proxy:
        remote = s3(s3_server, bucket, "p", endpoint_url=proxy.url)
        result = hashsync.sync(remote, tmp_path / "down")
        counts = proxy.take()
    assert result.ok and (tmp_path / "down" / "big.bin").read_bytes() == data
    # Exactly the objects' bytes (plus XML), not an extra part of the large one.
    assert len(data) <= counts.bytes_down < len(data) + 64 * 1024
