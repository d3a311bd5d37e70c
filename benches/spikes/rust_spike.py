"""Spike benchmark (issue 26, item 1): the Rust engine (benches/spikes/rust-engine) against s5cmd
and today's hashsync, side by side on one SeaweedFS, medians of N runs, tools alternating.

Scenarios (each tool uploads to a fresh prefix and downloads into an empty directory):

* ``small``: FILES files of 1-64 KiB, up and down, loopback.
* ``big``: BIG_COUNT files of BIG_MIB MiB, up and down, loopback.
* ``wan``: the small files through the delay proxy (``--delay-ms`` each way, 20 ms RTT by
  default), the Rust engine at each of ``--wan-concurrency`` (64 and 256).

Every tool runs as its own process and is timed from the outside (start-up included):
``rust-engine put|get`` (concurrency 64 unless said), ``s5cmd cp`` with default settings, and
``hashsync.sync`` with a ``S3Storage`` (default settings) in a ``python -c`` child.

Other modes: ``--check-signer`` compares the Rust SigV4 signer's headers with
``hashsync.storage._sigv4.sign`` on a few requests; ``--build-stats`` does a clean release build
of the engine and reports its time, ``cargo tree`` crate count and binary size.

Usage::

    .venv/bin/python benches/spikes/rust_spike.py            # ~10 minutes
    .venv/bin/python benches/spikes/rust_spike.py --quick    # ~1-2 minutes
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRATE = HERE / "rust-engine"
BINARY = CRATE / "target" / "release" / "rust-engine"
BUCKET = "spike"

HASHSYNC_CHILD = """
import sys
from hashsync import sync
from hashsync.storage import S3Storage
direction, local, endpoint, bucket, prefix, key, secret = sys.argv[1:]
store = S3Storage(bucket, prefix, endpoint_url=endpoint, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="us-east-1")
result = sync(local, store) if direction == "up" else sync(store, local)
if result.failed:
    print(result.failed, file=sys.stderr)
    sys.exit(1)
"""


def build(*, clean: bool = False) -> float:
    """Build the engine (release); return the seconds it took."""
    manifest = str(CRATE / "Cargo.toml")
    if clean:
        subprocess.run(["cargo", "clean", "--release", "--manifest-path", manifest], check=True)
    started = time.perf_counter()
    subprocess.run(["cargo", "build", "--release", "--manifest-path", manifest], check=True)
    return time.perf_counter() - started


def build_stats() -> dict[str, object]:
    seconds = build(clean=True)
    manifest = str(CRATE / "Cargo.toml")
    tree = subprocess.run(
        ["cargo", "tree", "--manifest-path", manifest, "-e", "normal", "--prefix", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    crates = sorted({" ".join(line.split()[:2]) for line in tree.splitlines() if line.strip()})
    engine = BINARY.stat().st_size
    baseline = (CRATE / "target" / "release" / "baseline").stat().st_size
    stats = {
        "clean_release_build_s": round(seconds, 1),
        "crates_in_tree": len(crates),
        "crates": crates,
        "binary_bytes": engine,
        "baseline_bytes": baseline,
        "delta_bytes": engine - baseline,
    }
    print(json.dumps({k: v for k, v in stats.items() if k != "crates"}, indent=1))
    print("crates:", ", ".join(crates))
    return stats


def check_signer() -> bool:
    """The Rust signer's headers against the Python signer's on a few requests."""
    sys.path.insert(0, str(HERE.parents[1] / "python"))
    from hashsync.storage._sigv4 import Credentials, sign

    now = datetime.datetime(2026, 3, 1, 12, 34, 56, tzinfo=datetime.UTC)
    cases = [
        (
            "GET",
            "http://127.0.0.1:8333/bkt?list-type=2&prefix=a%2Fb&encoding-type=url",
            {},
            None,
            None,
        ),
        (
            "PUT",
            "http://127.0.0.1:8333/bkt/dir/file%20name%2B%C3%A9.txt",
            {
                "Content-MD5": "XUFAKrxLKna5cZ2REBfFkg==",
                "x-amz-checksum-crc64nvme": "AAAAAAAAAAA=",
                "If-None-Match": "*",
                "User-Agent": "unsigned",
            },
            b"hello",
            None,
        ),
        (
            "POST",
            "https://s3.example.com/bkt/k?uploads",
            {"x-amz-checksum-algorithm": "CRC64NVME", "X-Spaced": "  a   b  "},
            None,
            "tok/en+==",
        ),
        ("HEAD", "http://[::1]:9000/bkt/k", {"x-amz-checksum-mode": "ENABLED"}, None, None),
        ("PUT", "http://localhost/bkt/k?partNumber=3&uploadId=abc%2Fdef", {}, b"x" * 1000, None),
    ]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for method, url, headers, body, token in cases:
            creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
            expected = sign(method, url, headers, body, creds, "eu-west-3", now=now)
            cmd = [
                str(BINARY),
                "sign",
                "--method",
                method,
                "--url",
                url,
                "--now",
                now.strftime("%Y%m%dT%H%M%SZ"),
                "--access-key",
                creds.access_key,
                "--secret",
                creds.secret_key,
                "--region",
                "eu-west-3",
            ]
            if token:
                cmd += ["--token", token]
            for k, v in headers.items():
                cmd += ["--header", f"{k}: {v}"]
            if body:
                path = Path(tmp) / "body"
                path.write_bytes(body)
                cmd += ["--body-file", str(path)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            got = dict(line.split(": ", 1) for line in out.splitlines())
            same = got == expected
            ok &= same
            print(f"signer {method} {url}: {'same headers' if same else 'DIFFERENT'}")
            if not same:
                print("  python:", expected, "\n  rust:  ", got)
    return ok


def make_small(root: Path, count: int, seed: int = 26) -> None:
    rnd = random.Random(seed)
    for i in range(count):
        d = root / f"d{i % 30:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(rnd.randbytes(rnd.randint(1024, 64 * 1024)))


def make_big(root: Path, count: int, mib: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with open(root / f"big{i}.bin", "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))


def tree_summary(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in left], shallow=False)
    return not mismatch and not errors


class Bench:
    def __init__(self, s3, endpoint: str, s5cmd: str, server_pids: tuple[int, ...] = ()) -> None:
        self.s3 = s3
        self.server_pids = server_pids
        self.endpoint = endpoint
        self.s5cmd = s5cmd
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def command(self, tool: str, direction: str, local: Path, prefix: str) -> list[str]:
        if tool.startswith("rust"):
            concurrency = tool.partition("-")[2] or "64"
            return [
                str(BINARY),
                "put" if direction == "up" else "get",
                "--endpoint",
                self.endpoint,
                "--bucket",
                BUCKET,
                "--prefix",
                prefix,
                "--access-key",
                self.s3.access_key,
                "--secret",
                self.s3.secret_key,
                "--region",
                "us-east-1",
                "--concurrency",
                concurrency,
                str(local),
            ]
        if tool == "s5cmd":
            if direction == "up":
                return [
                    self.s5cmd,
                    "--endpoint-url",
                    self.endpoint,
                    "cp",
                    f"{local}/*",
                    f"s3://{BUCKET}/{prefix}",
                ]
            return [
                self.s5cmd,
                "--endpoint-url",
                self.endpoint,
                "cp",
                f"s3://{BUCKET}/{prefix}*",
                f"{local}/",
            ]
        if tool == "hashsync":
            return [
                sys.executable,
                "-c",
                HASHSYNC_CHILD,
                direction,
                str(local),
                self.endpoint,
                BUCKET,
                prefix,
                self.s3.access_key,
                self.s3.secret_key,
            ]
        raise ValueError(tool)

    def timed(
        self, tool: str, direction: str, local: Path, prefix: str
    ) -> tuple[float, float, float]:
        """(wall seconds, the tool's CPU seconds, the server's CPU seconds) of one run."""
        cmd = self.command(tool, direction, local, prefix)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = self.server_cpu()
        started = time.perf_counter()
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        server = self.server_cpu() - server_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode:
            raise RuntimeError(
                f"{tool} {direction} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        if tool.startswith("rust"):
            print(f"      {done.stderr.strip().splitlines()[0]}")
        return seconds, cpu, server

    def server_cpu(self) -> float:
        """CPU seconds the SeaweedFS process (and the delay proxy, if any) have used so far."""
        total = 0.0
        for pid in self.server_pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def delete_prefix(self, prefix: str) -> None:
        subprocess.run(
            [self.s5cmd, "--endpoint-url", self.s3.endpoint_url, "rm", f"s3://{BUCKET}/{prefix}*"],
            env=self.env,
            capture_output=True,
        )


def describe(run: tuple[float, float, float]) -> str:
    wall, cpu, server = run
    return (
        f"{wall:7.2f} s (tool CPU {cpu:.2f} s, server CPU {server:.2f} s,"
        f" load {os.getloadavg()[0]:.1f})"
    )


def run_scenario(
    bench: Bench,
    name: str,
    source: Path,
    tools: list[str],
    repeat: int,
    work: Path,
    results: dict,
    *,
    full_compare: bool,
) -> None:
    count, size = tree_summary(source)
    seed_prefix = f"{name}/seed/"
    # The downloads read what hashsync itself uploaded (its metadata, native CRC64NVME).
    print(f"  seeding {seed_prefix} with hashsync ({count} files, {size / 2**20:.0f} MiB)")
    bench.timed("hashsync", "up", source, seed_prefix)
    ups: dict[str, list[tuple[float, float, float]]] = {t: [] for t in tools}
    downs: dict[str, list[tuple[float, float, float]]] = {t: [] for t in tools}
    for rep in range(repeat):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for tool in order:
            prefix = f"{name}/{tool}-{rep}/"
            run = bench.timed(tool, "up", source, prefix)
            ups[tool].append(run)
            print(f"    {name} up   {tool:10s} rep {rep}: {describe(run)}")
            bench.delete_prefix(prefix)
        for tool in reversed(order):
            dest = work / f"{name}-{tool}-{rep}"
            run = bench.timed(tool, "down", dest, seed_prefix)
            downs[tool].append(run)
            got = tree_summary(dest)
            if got != (count, size):
                raise RuntimeError(f"{tool} downloaded {got}, expected {(count, size)}")
            if full_compare and rep == 0 and not same_tree(source, dest):
                raise RuntimeError(f"{tool} downloaded different bytes")
            print(f"    {name} down {tool:10s} rep {rep}: {describe(run)}")
            shutil.rmtree(dest)
    bench.delete_prefix(seed_prefix)
    results[name] = {
        "files": count,
        "bytes": size,
        "up": {t: statistics.median(r[0] for r in v) for t, v in ups.items()},
        "down": {t: statistics.median(r[0] for r in v) for t, v in downs.items()},
        "cpu": {
            d: {t: statistics.median(r[1] for r in v) for t, v in runs.items()}
            for d, runs in (("up", ups), ("down", downs))
        },
        "server_cpu": {
            d: {t: statistics.median(r[2] for r in v) for t, v in runs.items()}
            for d, runs in (("up", ups), ("down", downs))
        },
        "runs": {"up": ups, "down": downs},
    }


def markdown(results: dict, meta: dict) -> str:
    lines = [
        f"Medians of {meta['repeat']} runs, tools alternating, SeaweedFS on loopback, "
        f"{os.cpu_count()} cores; wall time of each tool's process.",
        "",
        "| scenario | direction | "
        + " | ".join(meta["columns"])
        + " | rust/s5cmd | rust/hashsync |",
        "|---|---|" + "---:|" * (len(meta["columns"]) + 2),
    ]
    for name, r in results.items():
        label = meta["labels"][name]
        for direction in ("up", "down"):
            row = r[direction]
            cells = [f"{row[c]:.2f} s" if c in row else "" for c in meta["columns"]]
            rust = min(v for k, v in row.items() if k.startswith("rust"))
            lines.append(
                f"| {label} | {direction} | "
                + " | ".join(cells)
                + f" | {rust / row['s5cmd']:.2f} | {rust / row['hashsync']:.2f} |"
            )
    lines += [
        "",
        "CPU seconds (medians): the tool's own process / the server's (SeaweedFS, plus the delay"
        " proxy in the RTT scenario) during the tool's run.",
        "",
        "| scenario | direction | " + " | ".join(meta["columns"]) + " |",
        "|---|---|" + "---:|" * len(meta["columns"]),
    ]
    for name, r in results.items():
        for direction in ("up", "down"):
            cpu, server = r["cpu"][direction], r["server_cpu"][direction]
            cells = [f"{cpu[c]:.2f} / {server[c]:.2f}" if c in cpu else "" for c in meta["columns"]]
            lines.append(f"| {meta['labels'][name]} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer files, smaller big files, 1 run")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--big-count", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay of the proxy")
    ap.add_argument("--wan-concurrency", default="64,256")
    ap.add_argument("--scenarios", default="small,big,wan")
    ap.add_argument(
        "--tools",
        default="rust,s5cmd,hashsync",
        help="tools of the loopback scenarios; rust-N is the engine at concurrency N",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--check-signer", action="store_true", help="only compare the signers")
    ap.add_argument("--build-stats", action="store_true", help="only a clean build's figures")
    args = ap.parse_args(argv)
    if args.build_stats:
        build_stats()
        return 0
    if not BINARY.exists():
        build()
    if args.check_signer:
        return 0 if check_signer() else 1
    if args.quick:
        args.files, args.big_mib, args.repeat = 500, 128, 1

    from hashsync.testing import SeaweedFS, find_s5cmd
    from hashsync.testing.delay_proxy import DelayProxy

    scenarios = args.scenarios.split(",")
    wan_tools = [f"rust-{c}" for c in args.wan_concurrency.split(",")] + ["s5cmd", "hashsync"]
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="rust-spike-"))
    try:
        small, big = work / "src-small", work / "src-big"
        if "small" in scenarios or "wan" in scenarios:
            make_small(small, args.files)
        if "big" in scenarios:
            make_big(big, args.big_count, args.big_mib)
        with SeaweedFS(work / "weed") as s3:
            s3.create_bucket(BUCKET)
            weed_pid = s3._proc.pid  # noqa: SLF001 (the server's CPU time, from /proc)
            bench = Bench(s3, s3.endpoint_url, find_s5cmd(), (weed_pid,))
            tools = args.tools.split(",")
            if "small" in scenarios:
                print(f"small: {args.files} files of 1-64 KiB, loopback")
                run_scenario(
                    bench, "small", small, tools, args.repeat, work, results, full_compare=True
                )
            if "big" in scenarios:
                print(f"big: {args.big_count} x {args.big_mib} MiB, loopback")
                run_scenario(
                    bench, "big", big, tools, args.repeat, work, results, full_compare=False
                )
            if "wan" in scenarios:
                with DelayProxy(s3.endpoint_url, delay_ms=args.delay_ms) as proxy:
                    wan = Bench(s3, proxy.url, bench.s5cmd, (weed_pid, proxy.pid))
                    print(f"wan: {args.files} files of 1-64 KiB, {2 * args.delay_ms:g} ms RTT")
                    run_scenario(
                        wan, "wan", small, wan_tools, args.repeat, work, results, full_compare=True
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ran = [t for r in results.values() for t in r["up"]]
    columns = sorted(
        set(ran), key=lambda t: (not t.startswith("rust"), t == "hashsync", ran.index(t))
    )
    labels = {
        "small": f"{args.files} files of 1-64 KiB, loopback",
        "big": f"{args.big_count} x {args.big_mib} MiB, loopback",
        "wan": f"{args.files} files of 1-64 KiB, {2 * args.delay_ms:g} ms RTT",
    }
    meta = {"repeat": args.repeat, "columns": columns, "labels": labels}
    print()
    print(markdown(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
