"""pandas reading parquet from S3: through hashsync.fsspec (cold, warm) vs pyarrow's own S3 client.

What a notebook pays for ``pd.read_parquet("s3://...")`` the first time and every time after,
side by side in one run against SeaweedFS, on loopback and through the delay proxy (20 ms
round trip), medians over rounds:

- ``pyarrow S3``: pandas with a ``pyarrow.fs.S3FileSystem`` (what pandas uses for ``s3://``
  when no ``storage_options`` are given): ranged GETs every time, nothing kept;
- ``hashsync cold``: after ``hashsync.fsspec.register("s3")``, an empty cache: the object is
  downloaded (parallel ranged GETs, verified) into the cache, then read locally;
- ``hashsync warm``: the same read again, in a new filesystem instance: one HEAD asks whether
  the cached copy is current, the rest is local.

s3fs is not installed here, so it is not in the table. Run: ``make bench-fsspec`` (=
``python benches/fsspec_bench.py``). Writes ``benches/results/fsspec.md`` and ``fsspec.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BUCKET = "fsspecbench"


def _frame(rows: int, seed: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.random(rows),
            "y": rng.integers(0, 1 << 40, rows),
            "s": rng.integers(0, 1000, rows).astype(str),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4, help="parquet files read per round")
    parser.add_argument("--rows", type=int, default=1_500_000, help="rows per file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    args = parser.parse_args()

    import pandas as pd
    import pyarrow.fs as pafs

    import hashsync.fsspec
    from hashsync.testing import SeaweedFS
    from hashsync.testing.delay_proxy import DelayProxy

    work = Path(tempfile.mkdtemp(prefix="hashsync-fsspec-bench-"))
    rows: list[dict[str, object]] = []
    with SeaweedFS(work / "weed") as s3:
        s3.create_bucket(BUCKET)
        client = s3.client()
        sizes = []
        for i in range(args.files):
            local = work / f"p{i}.parquet"
            _frame(args.rows, i).to_parquet(local)
            sizes.append(local.stat().st_size)
            client.upload_file(str(local), BUCKET, f"t/p{i}.parquet")
        env = s3.env()
        for k, v in env.items():
            os.environ[k] = v
        hashsync.fsspec.register("s3")
        urls = [f"s3://{BUCKET}/t/p{i}.parquet" for i in range(args.files)]

        for network, delay in (("loopback", 0.0), (f"{2 * args.delay_ms:g} ms RTT", args.delay_ms)):
            with contextlib.ExitStack() as stack:
                proxy = (
                    stack.enter_context(DelayProxy(s3.endpoint_url, delay_ms=delay))
                    if delay
                    else None
                )
                endpoint = proxy.url if proxy is not None else s3.endpoint_url
                host = endpoint.partition("://")[2]
                native = pafs.S3FileSystem(
                    endpoint_override=host,
                    scheme="http",
                    access_key=env["AWS_ACCESS_KEY_ID"],
                    secret_key=env["AWS_SECRET_ACCESS_KEY"],
                    region=env["AWS_REGION"],
                )
                times: dict[str, list[float]] = {
                    "pyarrow S3": [],
                    "hashsync cold": [],
                    "hashsync warm": [],
                }
                for r in range(args.rounds):
                    # A new cache directory each round: "cold" is cold every time.
                    options = {
                        "endpoint_url": endpoint,
                        "cache_dir": str(work / f"c-{network}-{r}"),
                    }
                    t = time.perf_counter()
                    for url in urls:
                        pd.read_parquet(url.removeprefix("s3://"), filesystem=native)
                    times["pyarrow S3"].append(time.perf_counter() - t)
                    for label in ("hashsync cold", "hashsync warm"):
                        import fsspec

                        fsspec.AbstractFileSystem.clear_instance_cache()
                        t = time.perf_counter()
                        for url in urls:
                            pd.read_parquet(url, storage_options=options)
                        times[label].append(time.perf_counter() - t)
                    print(
                        f"{network} round {r + 1}: "
                        + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                        flush=True,
                    )
                base = statistics.median(times["pyarrow S3"])
                for label, values in times.items():
                    median = statistics.median(values)
                    rows.append(
                        {
                            "network": network,
                            "reader": label,
                            "median_s": round(median, 3),
                            "vs_pyarrow": round(median / base, 2),
                            "runs": [round(v, 3) for v in values],
                        }
                    )

    total = sum(sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": args.files,
        "bytes": total,
        "rounds": args.rounds,
        "command": "python benches/fsspec_bench.py " + " ".join(sys.argv[1:]),
    }
    (RESULTS / "fsspec.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"`{meta['command'].strip()}` — {args.files} parquet files, {total / 2**20:.0f} MiB in "
        f"all, read by pandas; median of {args.rounds} rounds ({meta['date']}).",
        "",
        "| network | reader | median (s) | vs pyarrow S3 |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['network']} | {r['reader']} | {r['median_s']:.2f} | {r['vs_pyarrow']:.2f} |"
        for r in rows
    ]
    (RESULTS / "fsspec.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    # pyarrow can abort at interpreter exit after reading through an fsspec filesystem
    # (apache/arrow#39162); the results are written, so leave without its finalizers.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
