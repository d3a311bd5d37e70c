"""hashsync at several transfer concurrencies against s5cmd, small files, optional delay proxy.

Measures what the default concurrency (``HASHSYNC_NUM_WORKERS``, 64) was chosen by: N files of
1-64 KiB uploaded to an empty prefix and downloaded into an empty directory, each hashsync
setting and s5cmd (default settings) alternating, medians of the repeats. With ``--delay-ms``
every tool talks to SeaweedFS through ``benches/delay-proxy`` (``make bench-sync`` builds it).

    python benches/concurrency_sweep.py --files 2000 --delay-ms 10 --workers 16,64,128
    python benches/concurrency_sweep.py --files 5000 --delay-ms 0 --workers 16,64
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from hashsync.testing import SeaweedFS
from hashsync.testing import benchmark as bm
from hashsync.testing.delay_proxy import DelayProxy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way; 0: loopback")
    parser.add_argument("--workers", default="16,64,128", help="hashsync settings to compare")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hashsync-sweep-"))
    tree = work / "tree"
    rng = random.Random(1)
    pool = rng.randbytes(4 << 20)
    for i in range(args.files):
        path = tree / f"d{rng.randrange(16):02d}/f{i:06d}.bin"
        size = rng.randint(1, 64) * 1024
        off = rng.randrange(0, len(pool) - size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pool[off : off + size])
    tools = [f"hashsync-{w}" for w in workers] + ["s5cmd"]
    times: dict[str, dict[str, list[float]]] = {t: {"up": [], "down": []} for t in tools}
    try:
        with SeaweedFS(work / "weed") as s3, contextlib.ExitStack() as stack:
            s3.create_bucket("bench")
            endpoint = s3.endpoint_url
            if args.delay_ms:
                proxy = DelayProxy(s3.endpoint_url, delay_ms=args.delay_ms)
                endpoint = stack.enter_context(proxy).url
            env = dict(s3.env(inherit=True), **bm.endpoint_vars(endpoint))
            for rep in range(args.repeats):
                for t in tools:
                    tool = "s5cmd" if t == "s5cmd" else "hashsync"
                    e = dict(env, HASHSYNC_CACHE_DIR=str(work / "state" / t / str(rep)))
                    if tool == "hashsync":
                        e["HASHSYNC_NUM_WORKERS"] = t.split("-")[1]
                    url = f"s3://bench/{t}-{rep}"
                    down = work / "down"
                    for way, (src, dst) in (("up", (str(tree), url)), ("down", (url, str(down)))):
                        cmd = bm.command(tool, src, dst, endpoint)
                        started = time.perf_counter()
                        r = subprocess.run(cmd, env=e, capture_output=True, text=True)
                        times[t][way].append(time.perf_counter() - started)
                        if r.returncode != 0:
                            raise SystemExit(f"{t} {way} failed: {r.stderr[-2000:]}")
                        if way == "down":
                            shutil.rmtree(down)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rtt = f"{2 * args.delay_ms:g} ms RTT" if args.delay_ms else "loopback"
    print(f"{args.files} files of 1-64 KiB, {rtt}, medians of {args.repeats}")
    print("| tool | upload | download |\n|---|---:|---:|")
    for t in tools:
        up, dn = statistics.median(times[t]["up"]), statistics.median(times[t]["down"])
        print(f"| {t} | {up:.2f} s | {dn:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
