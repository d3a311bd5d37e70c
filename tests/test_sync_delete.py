"""--delete against S3: DeleteObjects batches, per-key errors, stores without DeleteObjects."""

from __future__ import annotations

import re

import hashsync
from proxy_helpers import rewriting_proxy
from sync_helpers import s3, write_tree


def _seed(s3_server, bucket, tmp_path, n: int, keep: int):
    write_tree(tmp_path / "src", {f"d{i % 7}/f{i:05d}.txt": b"x" for i in range(keep)})
    remote = s3(s3_server, bucket, "p")
    hashsync.sync(tmp_path / "src", remote)
    extra = [f"old/g{i:05d}.txt" for i in range(n)]
    client = remote.client
    for key in extra:
        client.put_object(Bucket=bucket, Key=f"p/{key}", Body=b"stale")
    return extra


def _deletes(log) -> tuple[int, int]:
    batch = sum(1 for m, path in log if m == "POST" and re.search(r"[?&]delete(=|&|$)", path))
    single = sum(1 for m, _ in log if m == "DELETE")
    return batch, single


def test_delete_goes_in_batches_of_1000(s3_server, bucket, tmp_path):
    extra = _seed(s3_server, bucket, tmp_path, 2100, 50)
    log: list = []
    with rewriting_proxy(s3_server.endpoint_url, log=log) as proxy:
        remote = s3(s3_server, bucket, "p", endpoint_url=proxy)
        result = hashsync.sync(tmp_path / "src", remote, delete=True)
    assert result.ok and sorted(result.deleted) == extra
    assert _deletes(log) == (3, 0)  # 1,000 + 1,000 + 100 keys, no request per key
    left = {o.key for o in s3(s3_server, bucket, "p").list()}
    assert left == {f"d{i % 7}/f{i:05d}.txt" for i in range(50)}


def test_per_key_errors_of_a_batch_are_reported(s3_server, bucket, tmp_path):
    extra = _seed(s3_server, bucket, tmp_path, 5, 3)
    denied = extra[2]

    def deny_one(path: str, body: bytes) -> bytes:
        if "delete" not in path:
            return body
        error = (
            f"<Error><Key>p/{denied}</Key><Code>AccessDenied</Code>"
            "<Message>Access Denied</Message></Error>"
        ).encode()
        return body.replace(b"</DeleteResult>", error + b"</DeleteResult>")

    with rewriting_proxy(s3_server.endpoint_url, deny_one, rewrite_methods=("POST",)) as proxy:
        result = hashsync.sync(
            tmp_path / "src", s3(s3_server, bucket, "p", endpoint_url=proxy), delete=True
        )
    assert not result.ok
    assert [k for k, _ in result.failed] == [denied]
    assert "Access Denied" in result.failed[0][1]
    assert sorted(result.deleted) == sorted(set(extra) - {denied})


def test_a_store_without_delete_objects_gets_one_delete_per_key(s3_server, bucket, tmp_path):
    extra = _seed(s3_server, bucket, tmp_path, 12, 3)
    log: list = []

    def not_implemented(method: str, path: str, _headers: dict) -> tuple[int, bytes] | None:
        if method == "POST" and "delete" in path:
            return 501, b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"
        return None

    with rewriting_proxy(s3_server.endpoint_url, log=log, answer_instead=not_implemented) as proxy:
        result = hashsync.sync(
            tmp_path / "src", s3(s3_server, bucket, "p", endpoint_url=proxy), delete=True
        )
    assert result.ok and sorted(result.deleted) == extra
    assert _deletes(log)[1] == 12
    assert {o.key for o in s3(s3_server, bucket, "p").list()}.isdisjoint(extra)
