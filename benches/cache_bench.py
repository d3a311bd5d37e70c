"""Cache benchmark: get_many of small objects from SeaweedFS, cold, against the alternatives.

Measured side by side in one run, each round in a fresh directory, medians reported:

- ``hashsync get_many``: CopyToLocalCache.get_many (verified, indexed, atomic) on the CPUs;
- ``hashsync.sync``: the sync engine downloading the same prefix to a local directory;
- ``boto3 loop``: one ``download_file`` after another (the simplest user code);
- ``seed 004 pool``: seed 004's approach, a process pool calling ``download_file`` per key;
- warm ``get`` of a cached key without revalidation (``max_age=None``), and with it (a HEAD).

Run: ``make bench-cache`` (= ``python benches/cache_bench.py --files 2000 --rounds 5``).
Writes ``benches/results/cache.md`` and ``cache.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

import hashsync
from hashsync.cache import CopyToLocalCache
from hashsync.storage import S3Storage
from hashsync.testing import SeaweedFS

BUCKET = "cachebench"
PREFIX = "objs"
RESULTS = Path(__file__).parent / "results"


def _client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(max_pool_connections=32, retries={"max_attempts": 3}),
    )


_pool_client = None


def _pool_init(endpoint: str) -> None:
    global _pool_client
    _pool_client = _client(endpoint)


def _pool_download(item: tuple[str, str]) -> None:
    # Seed 004: download_file per key in a pool of processes, into the key's path.
    key, dest = item
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _pool_client.download_file(BUCKET, key, dest)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-calls", type=int, default=20000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hashsync-cachebench-"))
    os.environ["HASHSYNC_CACHE_DIR"] = str(work / "home")
    rng = random.Random(7)
    times: dict[str, list[float]] = {}
    try:
        with SeaweedFS(work / "seaweedfs") as server:
            server.create_bucket(BUCKET)
            os.environ.update(server.env(inherit=False))
            client = _client(server.endpoint_url)
            keys = [f"{PREFIX}/d{i % 20:02d}/f{i:05d}.bin" for i in range(args.files)]
            total = 0
            for key in keys:
                body = rng.randbytes(rng.randint(4, 64) * 1024)
                total += len(body)
                client.put_object(Bucket=BUCKET, Key=key, Body=body)  # type: ignore[attr-defined]
            print(f"{len(keys)} objects, {total / 2**20:.1f} MiB")

            def remote() -> S3Storage:
                return S3Storage(BUCKET, endpoint_url=server.endpoint_url)

            def fresh(name: str) -> Path:
                d = work / name
                shutil.rmtree(d, ignore_errors=True)
                return d

            def run_get_many() -> None:
                cache = CopyToLocalCache(remote(), fresh("cache"), max_size_bytes=2**34)
                cache.get_many(keys, progress=False)
                cache.close()

            def run_sync() -> None:
                hashsync.sync(f"s3://{BUCKET}/{PREFIX}", str(fresh("synced")))

            def run_loop() -> None:
                dest = fresh("loop")
                for key in keys:
                    path = dest / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(BUCKET, key, str(path))  # type: ignore[attr-defined]

            def run_pool() -> None:
                dest = fresh("pool")
                ctx = multiprocessing.get_context("fork")
                with ctx.Pool(os.cpu_count() or 1, _pool_init, (server.endpoint_url,)) as pool:
                    pool.map(_pool_download, [(k, str(dest / k)) for k in keys], chunksize=16)

            runs = {
                "hashsync get_many": run_get_many,
                "hashsync.sync": run_sync,
                "boto3 loop": run_loop,
                "seed 004 pool": run_pool,
            }
            for r in range(args.rounds):
                for name, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    times.setdefault(name, []).append(time.perf_counter() - t)
                    print(f"round {r + 1}: {name:18} {times[name][-1]:.2f} s")

            cache = CopyToLocalCache(remote(), work / "warm", max_age=None)
            cache.get(keys[0])
            warm: list[float] = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(args.warm_calls):
                    cache.get(keys[0])
                warm.append((time.perf_counter() - t) / args.warm_calls)
            checking = CopyToLocalCache(remote(), work / "warm", max_age=0)
            head: list[float] = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(200):
                    checking.get(keys[0])
                head.append((time.perf_counter() - t) / 200)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["hashsync get_many"]
    # Rounds alternate the methods, so each round's pair ran on the same machine state.
    paired = [
        g / y for g, y in zip(times["hashsync get_many"], times["hashsync.sync"], strict=True)
    ]
    lines = [
        f"{datetime.date.today()}: `get_many` of {args.files} objects of 4-64 KiB from SeaweedFS "
        f"on 127.0.0.1, cold "
        f"(fresh directory each round), medians of {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs. Command: `python benches/cache_bench.py --files {args.files} "
        f"--rounds {args.rounds}` (`make bench-cache`).",
        "",
        "| method | time (s) | vs hashsync get_many |",
        "|---|---:|---:|",
    ]
    for name, value in med.items():
        lines.append(f"| {name} | {value:.2f} | {value / base:.2f}x |")
    lines += [
        "",
        f"Ratios of the medians: `get_many` / `hashsync.sync` = "
        f"{base / med['hashsync.sync']:.2f} (issue-12 target: at most 1.2); boto3 loop / "
        f"`get_many` = {med['boto3 loop'] / base:.2f} (target: at least 3); "
        f"per round, `get_many` / `hashsync.sync` ranged {min(paired):.2f}-{max(paired):.2f}.",
        "",
        f"Warm `get` of a cached key, no revalidation (`max_age=None`): "
        f"{statistics.median(warm) * 1e6:.1f} µs per call (median of 5 x {args.warm_calls}); "
        f"with revalidation on every call (`max_age=0`, one HEAD): "
        f"{statistics.median(head) * 1e3:.2f} ms per call.",
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache.md").write_text(table + "\n")
    (RESULTS / "cache.json").write_text(
        json.dumps(
            {"times": times, "medians": med, "warm_get_s": warm, "revalidated_get_s": head},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
