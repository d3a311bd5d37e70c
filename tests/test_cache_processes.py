"""Caches shared by several processes: one budget, one download, nothing torn by a kill.

Every process here is a real interpreter started with subprocess, talking to SeaweedFS through
a counting proxy on 127.0.0.1, so the requests the store saw are what is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from hashsync.atomic import TMP_MARK
from hashsync.cache import CopyToLocalCache, LocalCache
from proxy_helpers import rewriting_proxy

pytestmark = [pytest.mark.slow]

# A child: wait at a file barrier, then get KEY through a cache over S3 at ENDPOINT; print the
# sha256 of the file it was given.
GET_IN_CHILD = """
import hashlib, json, os, sys, time
from hashsync.cache import CopyToLocalCache
from hashsync.storage import S3Storage
endpoint, bucket, access, secret, root, keys, locking, barrier, n = sys.argv[1:]
os.makedirs(barrier, exist_ok=True)
open(os.path.join(barrier, str(os.getpid())), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(barrier)) < int(n) and time.monotonic() < deadline:
    time.sleep(0.001)
remote = S3Storage(bucket, endpoint_url=endpoint, aws_access_key_id=access,
                   aws_secret_access_key=secret, part_size=5 * 2**20)
cache = CopyToLocalCache([remote], root, locking=locking == "1", num_workers=4)
paths = cache.get_many(keys.split(","), progress=False)
print(json.dumps([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]))
"""


def _child(server, bucket, endpoint, root, keys, *, locking=True, barrier, n):
    args = [endpoint, bucket, server.access_key, server.secret_key, root, ",".join(keys)]
    return subprocess.Popen(
        [sys.executable, "-c", GET_IN_CHILD, *map(str, args), "1" if locking else "0", barrier,
         str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _object_gets(log, bucket, key):
    return sum(1 for method, path in log if method == "GET" and path.startswith(f"/{bucket}/{key}"))


@pytest.mark.s3
@pytest.mark.parametrize("locking", [True, False], ids=["leases", "no-locking"])
def test_eight_processes_get_one_key(s3_server, bucket, tmp_path, locking):
    body = os.urandom(300_000)
    s3_server.client().put_object(Bucket=bucket, Key="shared/model.bin", Body=body)
    log: list[tuple[str, str]] = []
    root = tmp_path / "cache"
    # Each request waits 0.3 s at the proxy, so all eight are inside get() together.
    with rewriting_proxy(s3_server.endpoint_url, delay=0.3, log=log) as url:
        procs = [
            _child(s3_server, bucket, url, root, ["shared/model.bin"], locking=locking,
                   barrier=tmp_path / "go", n=8)
            for _ in range(8)
        ]  # fmt: skip
        outs = [p.communicate(timeout=120) for p in procs]
    want = hashlib.sha256(body).hexdigest()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out) == [want]
    gets = _object_gets(log, bucket, "shared/model.bin")
    if locking:
        assert gets == 1, log
    else:
        assert 1 <= gets <= 8, log
    # One good entry remains, and no temporary.
    cache = LocalCache(root)
    assert cache.get("shared/model.bin").read_bytes() == body
    assert cache.stats().files == 1
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name], out


BUDGET_IN_CHILD = """
import os, random, sys, tempfile
from pathlib import Path
from hashsync.cache import LocalCache
root, budget, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
cache = LocalCache(root, max_size_bytes=budget)
work = Path(tempfile.mkdtemp())
over = []
for i in range(count):
    src = work / f"f{i}"
    src.write_bytes(rng.randbytes(rng.randint(8, 64) * 1024))
    cache.put(f"p{seed}/d{i % 3}/f{i}.bin", src)
    got = cache.stats().bytes
    if got > budget:
        over.append(got)
print(len(over), max(over, default=0))
"""


def _disk_bytes(root: Path) -> int:
    seen: set[int] = set()
    total = 0
    for p in root.rglob("*"):
        if p.is_file() and "leases" not in p.parts and not p.name.startswith("index.db"):
            st = p.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def test_the_byte_budget_holds_with_four_processes_inserting(tmp_path):
    root = tmp_path / "cache"
    budget = 1_000_000
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUDGET_IN_CHILD, str(root), str(budget), str(seed), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.split() == ["0", "0"], f"the index went over the budget: {out}"
    cache = LocalCache(root, max_size_bytes=budget)
    stats = cache.stats()
    assert 0 < stats.bytes <= budget and stats.evictions > 0
    # What is on disk is what the index counts: no entry or copy escaped it.
    assert _disk_bytes(root) == stats.bytes
    assert sum(e.size for e in cache.entries()) >= stats.bytes  # shared copies count once
    # Every surviving entry is intact and readable through the cache.
    for entry in cache.entries():
        assert cache.get(entry.key).stat().st_size == entry.size


@pytest.mark.s3
def test_a_download_killed_with_sigkill_leaves_nothing_served(s3_server, bucket, tmp_path):
    client = s3_server.client()
    big = {k: os.urandom(12 * 2**20) for k in ("a/big.bin", "b/big.bin")}
    for key, data in big.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    root = tmp_path / "cache"
    release = threading.Event()
    gets: Counter[str] = Counter()

    def stall(path: str, data: bytes) -> bytes:
        # The first GET of a key (the small-object probe) passes; its ranged GETs hang, so the
        # child is killed with a half-written temporary file and a held lease.
        gets[path.split("?")[0]] += 1
        if gets[path.split("?")[0]] > 1:
            release.wait(60)
        return data

    with rewriting_proxy(s3_server.endpoint_url, stall) as url:
        child = _child(s3_server, bucket, url, root, list(big), barrier=tmp_path / "go", n=1)
        try:
            deadline = time.monotonic() + 60
            temps: list[Path] = []
            while time.monotonic() < deadline and len(temps) < 2:
                temps = [p for p in root.rglob("*") if TMP_MARK in p.name]
                time.sleep(0.02)
            leases = list((root / ".hashsync-cache" / "leases").iterdir())
            assert len(temps) == 2 and len(leases) == 2, (
                temps,
                leases,
                child.poll() is None or child.communicate(),
            )
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            release.set()
            if child.poll() is None:
                child.kill()
    direct = CopyToLocalCache([_s3(s3_server, bucket)], root, lock_timeout=600.0, max_age=None)
    # Nothing of the killed download is served as an entry.
    assert direct.stats().files == 0
    assert not (root / "a" / "big.bin").exists() and not (root / "b" / "big.bin").exists()
    # The dead holder's lease is taken over at once (not after lock_timeout), and the next get
    # fetches a correct copy.
    started = time.monotonic()
    assert direct.get("a/big.bin").read_bytes() == big["a/big.bin"]
    assert time.monotonic() - started < 30
    # prune removes what the killed process left in the directory the get did not write to.
    report = direct.prune()
    assert [Path(t).parent.name for t in report["temporaries"]] == ["b"]
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name]
    assert not list((root / ".hashsync-cache" / "leases").iterdir())
    assert direct.get("b/big.bin").read_bytes() == big["b/big.bin"]


def _s3(server, bucket):
    from hashsync.storage import S3Storage

    return S3Storage(
        bucket,
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        part_size=5 * 2**20,
    )


INTERRUPTED_IN_CHILD = """
import sys
from hashsync.cache import CopyToLocalCache
from hashsync.storage import S3Storage
endpoint, bucket, access, secret, root = sys.argv[1:]
remote = S3Storage(bucket, endpoint_url=endpoint, aws_access_key_id=access,
                   aws_secret_access_key=secret)
cache = CopyToLocalCache([remote], root, num_workers=2)
try:
    cache.get_many([f"k/{i:03d}" for i in range(200)], progress=False)
except KeyboardInterrupt:
    import os, pathlib
    left = [p.name for p in pathlib.Path(root).rglob("*") if ".hashsync-tmp-" in p.name]
    print("interrupted", cache.stats().files, os.getpid(), left, flush=True)
    sys.exit(130)
"""


@pytest.mark.s3
def test_ctrl_c_stops_get_many_soon_and_leaves_only_whole_entries(s3_server, bucket, tmp_path):
    client = s3_server.client()
    bodies = {f"k/{i:03d}": os.urandom(5000 + i) for i in range(200)}
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    root = tmp_path / "cache"
    # 0.2 s per request: 200 keys on 2 threads would take 20 s.
    with rewriting_proxy(s3_server.endpoint_url, delay=0.2) as url:
        args = [url, bucket, s3_server.access_key, s3_server.secret_key, str(root)]
        child = subprocess.Popen(
            [sys.executable, "-c", INTERRUPTED_IN_CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(root.glob("k/*")):
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = child.communicate(timeout=30)
        stopped = time.monotonic() - sent
    assert child.returncode == 130, err
    assert stopped < 5, f"took {stopped:.1f} s to stop"  # the running gets finish, no more start
    held = int(out.split()[1])
    assert 0 < held < 200
    cache = CopyToLocalCache([_s3(s3_server, bucket)], root, max_age=None)
    assert cache.stats().files == held
    for entry in cache.entries():
        assert cache.get(entry.key).read_bytes() == bodies[entry.key]
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name], out
