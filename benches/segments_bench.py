"""Sharded sync benchmark: Dask's overhead on one machine, and peak memory per million entries.

1. **Overhead** (issue 16: ``local:2`` at most 1.3x a single process): a tree of ``--files``
   small files synced to SeaweedFS on 127.0.0.1 (upload to a fresh prefix, a no-op re-sync,
   a download to a fresh directory), once by the single-machine engine and once on a
   2-worker LocalCluster whose start is timed separately (a ``--scheduler local:2`` command
   pays it; a long-lived cluster does not). Methods alternate; medians of ``--rounds``.
2. **Peak memory** of a dry-run sync between two generated S3-like storages of
   ``--entries`` entries each (1% of them differing), in a child process (peak RSS from
   ``/usr/bin/time``): the whole-listing engine against the segment-by-segment one.

Run: ``make bench-segments`` (= ``python benches/segments_bench.py``). Writes
``benches/results/segments.md`` and ``segments.json``.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import hashsync
from hashsync.storage.base import ObjectInfo, ReadWriteStorage
from hashsync.testing import SeaweedFS

BUCKET = "segbench"
RESULTS = Path(__file__).parent / "results"
WHEN = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class GeneratedStorage(ReadWriteStorage):
    """``entries`` made-up objects in a 3-level tree (100 x 100 x N); nothing is stored.

    Keys ``d000/e00/f0000000.bin``; every ``change_every``-th entry gets another hash.
    """

    lists_by_level = True

    def __init__(self, entries: int, change_every: int = 0) -> None:
        self.entries = entries
        self.change_every = change_every
        self._keys = sorted(
            f"d{i % 100:03d}/e{(i // 100) % 100:02d}/f{i:07d}.bin" for i in range(entries)
        )

    def _under(self, prefix: str) -> list[str]:
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, prefix + "\U0010ffff")
        return self._keys[lo:hi]

    def _info(self, key: str) -> ObjectInfo:
        i = int(key[-11:-4])
        salt = b"x" if self.change_every and i % self.change_every == 0 else b""
        digest = hashlib.md5(key.encode() + salt).hexdigest()
        return ObjectInfo(key, 1000 + i % 997, WHEN, digest)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in self._under(prefix):
            yield self._info(key)

    def list_level(self, prefix: str = "") -> tuple[int, list[str]]:
        depth = prefix.count("/")
        under = self._under(prefix)
        if depth >= 2:
            return len(under), []
        return 0, sorted({"/".join(k.split("/")[: depth + 1]) + "/" for k in under})

    def count_keys(self, prefix: str, limit: int) -> int:
        return min(limit, len(self._under(prefix)))

    # Never called by a dry run.
    def copy(self, key, destination):  # noqa: D102
        raise NotImplementedError

    def copy_from(self, key, source):  # noqa: D102
        raise NotImplementedError

    def delete(self, key):  # noqa: D102
        raise NotImplementedError

    def get_hash(self, key):  # noqa: D102
        return self._info(key).hash

    def get_size(self, key):  # noqa: D102
        return self._info(key).size

    def get_last_modified(self, key):  # noqa: D102
        return WHEN

    def copy_from_if_local_is_newer(self, key, source):  # noqa: D102
        raise NotImplementedError

    def copy_from_if_overwriting_hash(self, key, hash, source):  # noqa: D102
        raise NotImplementedError

    def delete_if_hash_matches(self, key, hash):  # noqa: D102
        raise NotImplementedError


def memory_child(mode: str, entries: int) -> None:
    """Run in a child process: one dry-run sync, then print what it found."""
    os.environ["HASHSYNC_SEGMENTED_ABOVE"] = str(entries * 10 if mode == "whole" else 1000)
    src = GeneratedStorage(entries)
    dst = GeneratedStorage(entries, change_every=100)
    if mode == "baseline":  # the generated key lists and the interpreter alone
        print(json.dumps({"copy": 0, "seconds": 0.0}))
        return
    t = time.perf_counter()
    r = hashsync.sync(src, dst, dry_run=True)
    print(json.dumps({"copy": len(r.transferred), "seconds": time.perf_counter() - t}))


def peak_rss(mode: str, entries: int) -> tuple[float, dict]:
    out = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            __file__,
            "--memory-child",
            mode,
            "--entries",
            str(entries),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stderr.strip().splitlines()[-1]) / 1024, json.loads(out.stdout)


def write_tree(root: Path, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(files):
        p = root / f"d{i % 20:02d}" / f"e{(i // 20) % 10}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1024, 32 * 1024)))


def listing_rates(bucket: str, prefix: str, files: int) -> dict[str, list[float]]:
    """Listing speed in keys per second and CPU microseconds per key.

    One sequential lister (what one segment's listing does), and the storage's own listing
    (subtrees in parallel).
    """
    from hashsync.storage import S3Storage

    store = S3Storage(bucket)
    raw = store._raw_client()
    out: dict[str, list[float]] = {}
    for name, run in (
        ("one lister", lambda: raw.walk(prefix, 0)[0]),
        ("parallel subtrees", lambda: list(store.list(prefix))),
    ):
        rates, cpu = [], []
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            listed = run()
            rates.append(len(listed) / (time.perf_counter() - t))
            cpu.append((time.process_time() - c) / max(1, len(listed)) * 1e6)
            assert len(listed) == files, len(listed)
        out[f"list|{name}|keys/s"] = rates
        out[f"list|{name}|cpu us/key"] = cpu
    return out


def overhead(work: Path, files: int, rounds: int) -> dict:
    import dask.distributed as dd

    tree = work / "tree"
    write_tree(tree, files)
    times: dict[str, list[float]] = {}
    with SeaweedFS(work / "seaweedfs") as server:
        server.create_bucket(BUCKET)
        for k, v in server.env().items():
            os.environ[k] = v
        t = time.perf_counter()
        cluster = dd.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = dd.Client(cluster)
        times["cluster start"] = [time.perf_counter() - t]
        try:
            for r in range(rounds):
                for method, scheduler in (("single", None), ("local:2", client)):
                    url = f"s3://{BUCKET}/{method.replace(':', '')}-{r}"
                    for scenario, src, dst in (
                        ("upload", tree, url),
                        ("no-op", tree, url),
                        ("download", url, work / f"down-{method}-{r}".replace(":", "")),
                    ):
                        t = time.perf_counter()
                        result = hashsync.sync(src, dst, scheduler=scheduler)
                        times.setdefault(f"{scenario}|{method}", []).append(time.perf_counter() - t)
                        assert result.ok, result.failed[:3]
                    print(f"  round {r + 1}: {method} done", flush=True)
            times.update(listing_rates(f"{BUCKET}", "single-0/", files))
        finally:
            client.close()
            cluster.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--memory-child", choices=["baseline", "whole", "segmented"])
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.entries)
        return
    lines = [
        f"Segments benchmark, {datetime.date.today()}: {os.cpu_count()} cores. "
        f"Command: `python benches/segments_bench.py --files {args.files} --rounds "
        f"{args.rounds} --entries {args.entries}`",
        "",
    ]
    data: dict = {}
    if not args.skip_overhead:
        work = Path(tempfile.mkdtemp(prefix="hashsync-segbench-"))
        try:
            times = overhead(work, args.files, args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        data["overhead"] = times
        lines += [
            f"**Dask overhead on one machine** ({args.files:,} files of 1-32 KiB to SeaweedFS; "
            f"median of {args.rounds}; a 2-worker LocalCluster started in "
            f"{times['cluster start'][0]:.1f} s, not included):",
            "",
            "| scenario | single process | local:2 | local:2 / single |",
            "|---|---:|---:|---:|",
        ]
        for scenario in ("upload", "no-op", "download"):
            one = statistics.median(times[f"{scenario}|single"])
            two = statistics.median(times[f"{scenario}|local:2"])
            lines.append(f"| {scenario} | {one:.2f} s | {two:.2f} s | {two / one:.2f} |")
        lines += [
            "",
            f"**Listing throughput** ({args.files:,} objects, median of 5; CPU time of the "
            "listing process per key):",
            "",
            "| lister | keys/s | CPU per key |",
            "|---|---:|---:|",
        ]
        for name in ("one lister", "parallel subtrees"):
            rate = statistics.median(times[f"list|{name}|keys/s"])
            cpu = statistics.median(times[f"list|{name}|cpu us/key"])
            lines.append(f"| {name} | {rate:,.0f} | {cpu:.1f} us |")
        lines.append("")
    memory = {}
    for mode in ("baseline", "whole", "segmented"):
        mib, found = peak_rss(mode, args.entries)
        memory[mode] = {"peak_mib": mib, **found}
        print(f"  memory {mode}: {mib:.0f} MiB, {found}", flush=True)
    data["memory"] = memory
    per_million = 1_000_000 / args.entries
    base = memory["baseline"]["peak_mib"]
    lines += [
        f"**Peak memory of a dry-run sync of {args.entries:,} generated entries per side** "
        "(S3-like listings, 1% differing; peak RSS of the process, and the engine's share: "
        f"minus the {base:.0f} MiB that the interpreter and the generated key lists take "
        "alone):",
        "",
        "| engine | peak RSS | engine | engine per million entries per side | seconds "
        "| files to copy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, label in (("whole", "both listings whole"), ("segmented", "segment by segment")):
        m = memory[mode]
        engine = m["peak_mib"] - base
        lines.append(
            f"| {label} | {m['peak_mib']:.0f} MiB | {engine:.0f} MiB | "
            f"{engine * per_million:.0f} MiB | {m['seconds']:.1f} | {m['copy']:,} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "segments.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "segments.json").write_text(json.dumps(data, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
