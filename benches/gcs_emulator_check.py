"""hashsync and rclone on gcp-storage-emulator: a correctness run, not a speed claim.

An emulator written in Python, storing in memory, says nothing about GCS's speed; what this
checks, on a tree of ``--files`` small files and ``--big`` files of ``--mib`` MiB, is that both
tools agree: hashsync uploads, a second sync moves nothing, a same-size edit with an older mtime
is caught, ``rclone check`` finds hashsync's objects equal by MD5, hashsync finds rclone's
uploads unchanged, and downloads are identical by ``tree_hash``. Times are printed for the
record only.

    python benches/gcs_emulator_check.py --files 500 --big 2 --mib 64
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hashsync
from hashsync.storage.gcs import GCSStorage
from hashsync.testing import find_rclone
from hashsync.testing.gcs_emulator import GCSEmulator


def write_tree(root: Path, files: int, big: int, mib: int) -> None:
    rng = random.Random(1)
    for i in range(files):
        path = root / f"d{i % 20}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(0, 64 * 1024)))
    for i in range(big):
        (root / f"big{i}.bin").write_bytes(os.urandom(mib * 1024**2))


def timed(label: str, fn):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    out = fn()
    print(f"{label:<48} {time.monotonic() - started:7.2f} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--big", type=int, default=2)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hashsync-gcs-check-"))
    src = work / "src"
    write_tree(src, args.files, args.big, args.mib)
    n = args.files + args.big
    failures = []

    def check(what: str, ok: bool) -> None:
        print(f"  {what}: {'yes' if ok else 'NO'}")
        if not ok:
            failures.append(what)

    with GCSEmulator(work / "emulator") as emulator:
        bucket = emulator.create_bucket("check")
        remote = GCSStorage(bucket, "hs", endpoint_url=emulator.endpoint_url, anonymous=True)
        up = timed("hashsync sync src gs://check/hs", lambda: hashsync.sync(src, remote))
        check(f"uploaded {n} files", len(up.transferred) == n and up.ok)
        again = timed("hashsync sync (again)", lambda: hashsync.sync(src, remote))
        check("second sync moved nothing", again.transferred == [])
        edited = src / "d0" / "f0.bin"
        data = bytearray(edited.read_bytes() or b"x")
        data[0] ^= 0xFF
        edited.write_bytes(bytes(data))
        past = time.time() - 3600
        os.utime(edited, (past, past))
        stale = timed(
            "hashsync sync (same-size edit, older mtime)", lambda: hashsync.sync(src, remote)
        )
        check("the edit was caught", stale.transferred == ["d0/f0.bin"])

        config = work / "rclone.conf"
        config.write_text(
            "[gcs]\ntype = google cloud storage\nanonymous = true\n"
            f"endpoint = {emulator.endpoint_url}\nbucket_policy_only = true\n"
        )
        rclone = [find_rclone(), "--config", str(config)]
        checked = timed(
            "rclone check src gcs:check/hs",
            lambda: subprocess.run(
                [*rclone, "check", str(src), "gcs:check/hs"], capture_output=True
            ),
        )
        check("rclone finds hashsync's objects equal", checked.returncode == 0)
        # The small files only: rclone's resumable uploads (its big files) stop on the
        # emulator's 308 answers, which is between those two.
        timed(
            "rclone copy src gcs:check/rc --exclude big*",
            lambda: subprocess.run(
                [*rclone, "copy", str(src), "gcs:check/rc", "--exclude", "big*"], check=True
            ),
        )
        theirs = GCSStorage(bucket, "rc", endpoint_url=emulator.endpoint_url, anonymous=True)
        noop = timed(
            "hashsync sync src gs://check/rc --exclude big*",
            lambda: hashsync.sync(src, theirs, exclude="big*"),
        )
        check("rclone's uploads are unchanged to hashsync", noop.transferred == [])
        down = timed(
            "hashsync sync gs://check/hs down/", lambda: hashsync.sync(remote, work / "down")
        )
        check(
            "download identical by tree_hash",
            down.ok and hashsync.tree_hash(work / "down") == hashsync.tree_hash(src),
        )
    print("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
