"""Conditional writes on a store that ignores If-None-Match / If-Match (issue 26, item 3).

SeaweedFS behind a proxy that strips the headers (and signs the request again) stands for
such a store; ``rclone serve s3`` is one (tests/test_storage_s3_others.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hashsync.errors import ConditionsNotEnforced, PreconditionFailed
from hashsync.storage import SimpleLocalStorage, conditions
from proxy_helpers import ignoring_conditions, rewriting_proxy
from sync_helpers import s3

pytestmark = pytest.mark.s3


@pytest.fixture
def voiding_proxy(s3_server):
    """(proxy URL, request log): a store that accepts the conditions and ignores them."""
    log: list[tuple[str, str]] = []
    rewrite = ignoring_conditions(s3_server.access_key, s3_server.secret_key)
    with rewriting_proxy(s3_server.endpoint_url, rewrite_request=rewrite, log=log) as proxy:
        yield proxy, log


def _probes(log: list[tuple[str, str]]) -> int:
    return sum(1 for method, path in log if method == "PUT" and "/probe-" in path)


def test_every_conditional_write_is_refused_and_nothing_changes(
    s3_server, bucket, voiding_proxy, tmp_path
):
    proxy, log = voiding_proxy
    direct = s3(s3_server, bucket, "p")
    direct.write_bytes("k", b"original")
    etag = direct.get_hash("k")
    storage = s3(s3_server, bucket, "p", endpoint_url=proxy)
    src = SimpleLocalStorage(tmp_path / "src")
    src.path("k").parent.mkdir(parents=True, exist_ok=True)
    src.path("k").write_bytes(b"replacement")
    src.path("new").write_bytes(b"new")

    assert storage.conditions_enforced() is False
    attempts = [
        lambda: storage.write_bytes("k", b"x", create_only=True),
        lambda: storage.write_bytes("k", b"x", if_hash=etag),  # even the right version
        lambda: storage.write_bytes("new", b"x", create_only=True),  # even a new key
        lambda: storage.copy_from_if_overwriting_hash("k", etag, src),
        lambda: storage.copy_from_if_overwriting_hash("new", None, src),
        lambda: storage.delete_if_hash_matches("k", etag),
    ]
    for attempt in attempts:
        with pytest.raises(ConditionsNotEnforced, match="ignores If-None-Match") as caught:
            attempt()
        assert isinstance(caught.value, PreconditionFailed)  # callers catching that are safe
    assert direct.read_bytes("k") == b"original"
    assert not direct.exists("new")
    # Found out once per store in this process, however many writes asked.
    assert _probes(log) >= 2
    probes = _probes(log)
    storage.conditions_enforced()
    s3(s3_server, bucket, "other-prefix", endpoint_url=proxy).conditions_enforced()
    assert _probes(log) == probes
    # The probe left nothing behind, and plain writes still work.
    assert [info.key for info in direct.list()] == ["k"]
    storage.write_bytes("plain", b"unconditional")
    assert direct.read_bytes("plain") == b"unconditional"


def test_best_effort_mode_writes_with_a_head_check(s3_server, bucket, voiding_proxy):
    proxy, _ = voiding_proxy
    storage = s3(s3_server, bucket, "p", endpoint_url=proxy, conditional_writes="best-effort")
    etag = storage.write_bytes("k", b"one", create_only=True)
    with pytest.raises(PreconditionFailed) as caught:
        storage.write_bytes("k", b"two", create_only=True)  # the HEAD sees it
    assert not isinstance(caught.value, ConditionsNotEnforced)
    assert storage.write_bytes("k", b"two", if_hash=etag)
    assert storage.read_bytes("k") == b"two"


def test_a_store_that_enforces_conditions_is_probed_once_and_writes_natively(s3_server, bucket):
    log: list[tuple[str, str]] = []
    with rewriting_proxy(s3_server.endpoint_url, log=log) as proxy:
        storage = s3(s3_server, bucket, "p", endpoint_url=proxy)
        storage.write_bytes("k", b"one", create_only=True)
        with pytest.raises(PreconditionFailed) as caught:
            storage.write_bytes("k", b"two", create_only=True)
        assert not isinstance(caught.value, ConditionsNotEnforced)
        probes = _probes(log)
        # Two racing create-only writes, a repeat and a wrong If-Match (each refusal is sent
        # twice today: the lean request path hands a 412 to botocore to map; issue 26).
        assert 4 <= probes <= 7
        storage.write_bytes("k2", b"x", create_only=True)
        assert _probes(log) == probes
    remembered = json.loads(conditions.memory_file().read_text())
    assert [v["honoured"] for k, v in remembered.items() if k.startswith(proxy)] == [True]


def test_another_process_recalls_the_answer_without_probing(s3_server, bucket, voiding_proxy):
    proxy, log = voiding_proxy
    assert s3(s3_server, bucket, "p", endpoint_url=proxy).conditions_enforced() is False
    log.clear()
    code = f"""
from hashsync.storage import S3Storage
from hashsync.errors import ConditionsNotEnforced
s = S3Storage({bucket!r}, "p", endpoint_url={proxy!r}, max_attempts=1,
              aws_access_key_id={s3_server.access_key!r},
              aws_secret_access_key={s3_server.secret_key!r})
try:
    s.write_bytes("k", b"x", create_only=True)
except ConditionsNotEnforced:
    print("refused")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "refused"
    assert _probes(log) == 0
    assert not any(method == "PUT" for method, _ in log)
