"""Big downloads at several range sizes and streams per object, s5cmd alongside.

Uploads ``--files`` random files of ``--mib`` MiB to a fresh local SeaweedFS once, then
downloads them into an empty directory with hashsync (each ``RANGE_MIB:STREAMS`` given) and
with ``s5cmd cp`` (default settings), alternating, ``--rounds`` times; prints medians. A
hashsync storage's ``part_size`` sets the shortest range; ranges grow to spread an object over
``max_concurrency`` streams, up to ``hashsync.storage._s3_reading.MAX_DOWNLOAD_RANGE``.

    python benches/download_ranges.py --rounds 3 --configs 8:8,8:4
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hashsync
from hashsync.storage import S3Storage
from hashsync.testing.seaweedfs import SeaweedFS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configs", default="8:8,8:4", help="comma-separated PART_MIB:STREAMS for hashsync"
    )
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")
    work = Path(tempfile.mkdtemp(prefix="hashsync-ranges-"))
    try:
        src = work / "src"
        src.mkdir()
        for i in range(args.files):
            with open(src / f"f{i}", "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
        with SeaweedFS(work / "weed") as server:
            bucket = server.create_bucket("ranges")

            def storage(part_mib: int, streams: int) -> S3Storage:
                return S3Storage(
                    bucket,
                    "x",
                    endpoint_url=server.endpoint_url,
                    aws_access_key_id=server.access_key,
                    aws_secret_access_key=server.secret_key,
                    part_size=part_mib << 20,
                    max_concurrency=streams,
                )

            assert hashsync.sync(src, storage(8, 8)).ok
            env = {**os.environ, **server.env()}
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for config in [*configs, None]:
                    dest = work / "dst"
                    shutil.rmtree(dest, ignore_errors=True)
                    subprocess.run(["sync"], check=False)
                    started = time.perf_counter()
                    if config is None:
                        name = "s5cmd"
                        subprocess.run(
                            [s5cmd, "--endpoint-url", server.endpoint_url, "cp",
                             f"s3://{bucket}/x/*", f"{dest}/"],
                            env=env, check=True, capture_output=True,
                        )  # fmt: skip
                    else:
                        name = f"hashsync {config[0]} MiB parts, {config[1]} streams"
                        result = hashsync.sync(storage(*config), dest)
                        assert result.ok, result.failed
                    times.setdefault(name, []).append(time.perf_counter() - started)
        for name, got in times.items():
            shown = ", ".join(f"{t:.2f}" for t in got)
            print(f"{name}: median {statistics.median(got):.2f} s ({shown})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
