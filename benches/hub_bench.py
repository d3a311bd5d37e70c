"""Hub benchmark: hashsync's hub client against a seed-style sequential client and curl.

A hub (``python -m hashsync.hub``, its own process) serves two datasets on 127.0.0.1:

- ``small``: 2,000 files of 4-64 KiB. ``download_dataset`` (parallel, every file verified,
  atomic) against the seed's way (one request after another, written as they come, nothing
  verified), and ``stream`` (in order, in memory, verified);
- ``large``: 4 files of 256 MiB. ``download_dataset`` against ``curl`` fetching the same files
  one after another (no verification).

Each method runs cold (a fresh directory) in every round, methods alternating; medians are
reported. Run: ``make bench-hub`` (= ``python benches/hub_bench.py --rounds 3``). Writes
``benches/results/hub.md`` and ``hub.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from hashsync.hub import DatasetHubClient

RESULTS = Path(__file__).parent / "results"
KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make(root: Path, files: int, big: int, big_mib: int) -> tuple[int, int]:
    rng = random.Random(11)
    small = 0
    for i in range(files):
        f = root / "small" / f"s{i % 20:02d}" / f"{i:05d}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(4, 64) * 1024)
        small += len(data)
        f.write_bytes(data)
    (root / "large").mkdir(parents=True, exist_ok=True)
    block = rng.randbytes(2**20)
    for i in range(big):
        with open(root / "large" / f"part-{i}.bin", "wb") as fh:
            for j in range(big_mib):
                fh.write(block[j % 256 :] + block[: j % 256])
    return small, big * big_mib * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-files", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hashsync-hubbench-"))
    root = work / "datasets"
    small_bytes, large_bytes = _make(root, args.files, args.big_files, args.big_mib)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HASHSYNC_HUB_API_KEY": KEY, "HASHSYNC_CACHE_DIR": str(work / "state")}
    server = subprocess.Popen(
        [sys.executable, "-m", "hashsync.hub", str(root), "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    times: dict[str, list[float]] = {}
    try:
        http = urllib3.PoolManager()
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.request("GET", url + "/health", retries=False).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("the hub did not start") from None
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {KEY}"}
        # Manifests are computed once before timing (the hash state cache keeps them cheap).
        for dataset in ("small", "large"):
            http.request("GET", f"{url}/manifest/{dataset}", headers=auth)

        def fresh(name: str) -> Path:
            # Emptied before the clock starts (see the loop below): removing the previous
            # round's 2,000 files is not part of a download.
            return work / name

        def hashsync_small() -> None:
            DatasetHubClient(url, KEY, cache_dir=fresh("c1")).download_dataset(
                "small", progress=False
            )

        def seed_small() -> None:
            # The seed's client: the manifest, then one GET after another, no verification.
            dest = fresh("c2")
            session = urllib3.PoolManager()
            manifest = json.loads(
                session.request("GET", f"{url}/manifest/small", headers=auth).data
            )
            for entry in manifest:
                path = dest / "small" / entry["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                r = session.request("GET", f"{url}/file/small/{entry['path']}", headers=auth)
                path.write_bytes(r.data)

        def hashsync_stream() -> None:
            client = DatasetHubClient(url, KEY, cache_dir=None)
            for _ in client.stream("small", prefetch=16):
                pass

        def hashsync_large() -> None:
            DatasetHubClient(url, KEY, cache_dir=fresh("c3")).download_dataset(
                "large", progress=False
            )

        def curl_large() -> None:
            dest = fresh("c4")
            dest.mkdir()
            for i in range(args.big_files):
                subprocess.run(
                    ["curl", "-sS", "-f", "-H", f"Authorization: Bearer {KEY}",
                     "-o", str(dest / f"part-{i}.bin"), f"{url}/file/large/part-{i}.bin"],
                    check=True,
                )  # fmt: skip

        runs = {
            "small: hashsync download_dataset": hashsync_small,
            "small: seed-style sequential client": seed_small,
            "small: hashsync stream (prefetch 16)": hashsync_stream,
            "large: hashsync download_dataset": hashsync_large,
            "large: curl, one file after another": curl_large,
        }
        for r in range(args.rounds):
            for name, fn in runs.items():
                for d in ("c1", "c2", "c3", "c4"):
                    shutil.rmtree(work / d, ignore_errors=True)
                t = time.perf_counter()
                fn()
                times.setdefault(name, []).append(time.perf_counter() - t)
                print(f"round {r + 1}: {name:38} {times[name][-1]:.2f} s", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in times.items()}
    small_ratio = (
        med["small: seed-style sequential client"] / med["small: hashsync download_dataset"]
    )
    large_share = (
        med["large: curl, one file after another"] / med["large: hashsync download_dataset"]
    )
    lines = [
        f"{datetime.date.today()}: a hub on 127.0.0.1 (its own process), {os.cpu_count()} CPUs; "
        f"`small` = {args.files} files of 4-64 KiB ({small_bytes / 2**20:.0f} MiB), `large` = "
        f"{args.big_files} x {args.big_mib} MiB; cold, medians of {args.rounds} rounds. Command: "
        f"`python benches/hub_bench.py --files {args.files} --big-files {args.big_files} "
        f"--big-mib {args.big_mib} --rounds {args.rounds}` (`make bench-hub`).",
        "",
        "| method | time (s) | MiB/s |",
        "|---|---:|---:|",
    ]
    for name, value in med.items():
        size = small_bytes if name.startswith("small") else large_bytes
        lines.append(f"| {name} | {value:.2f} | {size / 2**20 / value:.0f} |")
    lines += [
        "",
        f"Small files: hashsync (verifying every file) is {small_ratio:.2f}x the sequential "
        f"client (issue-13 target: at least 5x). Large files: hashsync reaches "
        f"{100 * large_share:.0f}% of curl's speed (target: at least 80%).",
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub.md").write_text(table + "\n")
    (RESULTS / "hub.json").write_text(json.dumps({"times": times, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
