"""TreeCache benchmark: what the manifest, the lease and the checks cost over a plain sync.

Against SeaweedFS on 127.0.0.1, a tree of small files plus a few large ones, methods alternating
within each round, medians reported:

- ``build + upload``: ``TreeCache.ensure(build)`` with the remote missing (build = copy of a
  prepared tree: the build itself costs the same as copying it), against ``hashsync.sync`` of
  the same tree to a fresh prefix;
- ``download``: ``ensure()`` into a fresh directory (manifest read and checked, every file
  verified, manifest re-checked after the download) against ``hashsync.sync`` and ``s5cmd sync``
  (which verifies nothing) of the same prefix;
- ``both present``: ``ensure()`` when both copies exist (what every training job pays at
  start: a listing, the local stat check, the derived-file comparison) against a no-op
  ``hashsync.sync`` of the prefix.

Run: ``make bench-treecache`` (= ``python benches/treecache_bench.py --files 2000 --rounds 3``).
Writes ``benches/results/treecache.md`` and ``treecache.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import hashsync
from hashsync.testing import SeaweedFS, find_s5cmd

BUCKET = "treebench"
RESULTS = Path(__file__).parent / "results"


def _tree(root: Path, files: int, big: int, rng: random.Random) -> int:
    total = 0
    for i in range(files):
        p = root / f"d{i % 20:02d}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(4, 64) * 1024)
        p.write_bytes(data)
        total += len(data)
    for i in range(big):
        data = rng.randbytes(48 * 2**20)
        (root / f"big{i}.bin").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-files", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hashsync-treebench-"))
    os.environ["HASHSYNC_CACHE_DIR"] = str(work / "home")
    s5cmd = find_s5cmd()
    times: dict[str, list[float]] = {}
    try:
        source = work / "prepared"
        total = _tree(source, args.files, args.big_files, random.Random(7))
        print(f"{args.files} small + {args.big_files} large files, {total / 2**20:.1f} MiB")
        with SeaweedFS(work / "seaweedfs") as server:
            server.create_bucket(BUCKET)
            os.environ.update(server.env(inherit=False))

            def fresh(name: str) -> Path:
                d = work / name
                shutil.rmtree(d, ignore_errors=True)
                return d

            def cache(local: Path, key: str) -> hashsync.TreeCache:
                return hashsync.TreeCache(
                    local, f"s3://{BUCKET}/caches", name="bench", key=key, verbose=False
                )

            def build(out: Path) -> None:
                shutil.copytree(source, out, dirs_exist_ok=True)

            def timed(name: str, fn, *a) -> None:
                # Directories are cleaned before the clock starts.
                t = time.perf_counter()
                fn(*a)
                times.setdefault(name, []).append(time.perf_counter() - t)
                print(f"  {name:36} {times[name][-1]:.2f} s")

            for r in range(args.rounds):
                print(f"round {r + 1}")
                key = f"r{r}"
                local = fresh(f"built-{r}")
                timed("build + upload: TreeCache.ensure", cache(local, key).ensure, build)
                timed(
                    "build + upload: copy + hashsync.sync",
                    lambda r=r: (
                        build(fresh(f"plain-{r}")),
                        hashsync.sync(work / f"plain-{r}", f"s3://{BUCKET}/plain-{r}"),
                    ),
                )
                prefix = f"s3://{BUCKET}/caches/bench-{key}"
                down = fresh("down")
                timed("download: TreeCache.ensure", cache(down, key).ensure)
                target = fresh("down-sync")
                timed("download: hashsync.sync", hashsync.sync, prefix, target)
                target = fresh("down-s5cmd")
                timed(
                    "download: s5cmd sync",
                    lambda target=target, prefix=prefix: subprocess.run(
                        [
                            s5cmd,
                            "--endpoint-url",
                            server.endpoint_url,
                            "sync",
                            f"{prefix}/*",
                            f"{target}/",
                        ],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    ),
                )
                timed("both present: TreeCache.ensure", cache(down, key).ensure)
                timed(
                    "both present: no-op hashsync.sync", hashsync.sync, prefix, work / "down-sync"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in times.items()}

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.2f}"

    lines = [
        f"{datetime.date.today()}: {args.files} files of 4-64 KiB + {args.big_files} x 48 MiB "
        f"({total / 2**20:.0f} MiB), SeaweedFS on 127.0.0.1, {os.cpu_count()} CPUs, medians of "
        f"{args.rounds} rounds, methods alternating. Command: `python benches/treecache_bench.py "
        f"--files {args.files} --big-files {args.big_files} --rounds {args.rounds}` "
        "(`make bench-treecache`).",
        "",
        "| scenario: method | time (s) |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.2f} |" for name, value in med.items()]
    lines += [
        "",
        "TreeCache / plain `hashsync.sync`: build + upload "
        f"{ratio('build + upload: TreeCache.ensure', 'build + upload: copy + hashsync.sync')}, "
        f"download {ratio('download: TreeCache.ensure', 'download: hashsync.sync')}, both "
        f"present {ratio('both present: TreeCache.ensure', 'both present: no-op hashsync.sync')}; "
        "TreeCache download / s5cmd sync "
        f"{ratio('download: TreeCache.ensure', 'download: s5cmd sync')}.",
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "treecache.md").write_text(table + "\n")
    (RESULTS / "treecache.json").write_text(json.dumps({"times": times, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
