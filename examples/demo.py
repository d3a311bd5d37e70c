"""hashsync demo: the edit that `aws s3 sync` misses, and hashsync does not.

Run with ``make demo``. It starts a throwaway SeaweedFS S3 server on 127.0.0.1, then:

1. generates a small dataset (a few hundred files, two of them multipart-sized);
2. uploads it with ``hashsync sync``;
3. edits one file *keeping its size and putting an older mtime back* (what a restore from a
   backup, ``cp -p`` or a training job rewriting a checkpoint in place can produce);
4. runs ``aws s3 sync`` — it transfers nothing — and ``hashsync sync``, which transfers exactly
   that file;
5. syncs the bucket down into an empty directory and checks the trees are identical.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hashsync
from hashsync.testing import SeaweedFS

MIB = 1024**2
BIN = Path(sys.executable).parent


def make_dataset(root: Path, seed: int = 0) -> None:
    """Writes 300 small shards, a manifest and two multipart-sized checkpoints."""
    rng = random.Random(seed)
    for i in range(300):
        p = root / "shards" / f"{i % 10:02d}" / f"sample-{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1, 64) * 1024))
    (root / "manifest.json").write_text('{"version": 1}\n')
    for name in ("model-a.ckpt", "model-b.ckpt"):
        (root / "checkpoints").mkdir(exist_ok=True)
        (root / "checkpoints" / name).write_bytes(rng.randbytes(20 * MIB + rng.randint(0, MIB)))


def run(title: str, cmd: list[str], env: dict[str, str]) -> str:
    """Runs a command, printing it and its output, and returns its stdout."""
    print(f"\n$ {title}")
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    out = (r.stdout + r.stderr).strip()
    for line in out.splitlines()[-12:]:
        print(f"  {line}")
    print(f"  [exit {r.returncode}, {took:.2f} s]")
    if r.returncode not in (0, 2):
        raise SystemExit(f"demo step failed: {title}")
    return r.stdout


def main() -> int:
    """Runs the demo; exit status 1 if hashsync did not do what it claims."""
    work = Path(tempfile.mkdtemp(prefix="hashsync-demo-"))
    try:
        with SeaweedFS(work / "s3") as s3:
            s3.create_bucket("datasets")
            env = s3.env(inherit=True)
            env["HASHSYNC_CACHE_DIR"] = str(work / "hash-state")
            data = work / "data"
            make_dataset(data)
            # S3 keeps Last-Modified in whole seconds; uploading in the same second the files
            # were written would make aws s3 sync see them as newer than their copies.
            time.sleep(1.1)
            n = sum(1 for p in data.rglob("*") if p.is_file())
            print(f"S3 server (SeaweedFS) at {s3.endpoint_url}; dataset: {n} files in {data}")
            hs = [str(BIN / "hashsync")]
            aws = [str(BIN / "aws"), "s3", "sync"]
            url = "s3://datasets/train"

            run("hashsync sync data/ s3://datasets/train", [*hs, "sync", str(data), url], env)
            run("hashsync sync (again: nothing to do)", [*hs, "sync", str(data), url], env)

            target = data / "checkpoints" / "model-a.ckpt"
            st = target.stat()
            blob = bytearray(target.read_bytes())
            blob[1000:1010] = b"RETRAINED!"  # same size, new content
            target.write_bytes(bytes(blob))
            old = st.st_mtime - 3600  # and an mtime older than the upload
            os.utime(target, (old, old))
            print(
                f"\nedited {target.relative_to(data)}: same size ({st.st_size} bytes), "
                "mtime set one hour back"
            )

            aws_out = run(
                "aws s3 sync data/ s3://datasets/train --dryrun",
                [*aws, str(data), url, "--dryrun"],
                env,
            )
            aws_sees_it = "model-a.ckpt" in aws_out
            print(
                f"  -> aws s3 sync would upload the edited file: {'yes' if aws_sees_it else 'NO'}"
            )
            out = run(
                "hashsync sync data/ s3://datasets/train --json",
                [*hs, "sync", str(data), url, "--json"],
                env,
            )
            import json

            transferred = json.loads(out)["transferred"]
            down = work / "download"
            run("hashsync sync s3://datasets/train download/", [*hs, "sync", url, str(down)], env)
            same = hashsync.tree_hash(data) == hashsync.tree_hash(down)
            print(
                f"\nhashsync transferred exactly the edited file: "
                f"{'yes' if transferred == ['checkpoints/model-a.ckpt'] else 'NO'} "
                f"({transferred})"
            )
            print(f"downloaded tree identical to the source (tree_hash): {'yes' if same else 'NO'}")
            return 0 if same and transferred == ["checkpoints/model-a.ckpt"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
