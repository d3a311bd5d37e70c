"""Turns pytest-benchmark JSON from benches/ into the markdown tables shown in the README."""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hash_table(data: dict) -> str:
    rows: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    dd: dict[str, float] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") == "dd":
            dd[info["dataset"]] = info["bytes"] / b["stats"]["median"] / 1e9
        if "algorithm" not in info:
            continue
        rows[(info["dataset"], info["algorithm"])][info["tool"]] = {**info, **b["stats"]}
    names = {"big_files": "(a) 1 GiB in 4 files", "small_files": "(b) 20,000 files of 4-64 KiB"}
    out = []
    for dataset in ("big_files", "small_files"):
        reference = dd.get(dataset)
        out.append(f"\n**{names[dataset]}** (median of 3 runs)\n")
        if reference:
            out.append(
                f"Two `dd` readers (`dd bs=1M of=/dev/null`, 2 at a time, median of 5) read "
                f"the same files at {reference:.2f} GB/s.\n"
            )
        extra = " hashsync / dd |" if reference else ""
        out.append(f"| algorithm | hashsync | GB/s | Python baseline | GB/s | speed-up |{extra}")
        out.append("|---|---:|---:|---|---:|---:|" + ("---:|" if reference else ""))
        for (ds, algorithm), tools in sorted(rows.items()):
            if ds != dataset or len(tools) != 2:
                continue
            ours, theirs = tools["hashsync"], tools["python"]
            gbs = lambda s: s["bytes"] / s["median"] / 1e9  # noqa: E731
            out.append(
                f"| {algorithm} | {ours['median']:.3f} s | {gbs(ours):.2f} | "
                f"{theirs['label']}: {theirs['median']:.3f} s | {gbs(theirs):.2f} | "
                f"{theirs['median'] / ours['median']:.2f}x |"
                + (f" {gbs(ours) / reference:.2f} |" if reference else "")
            )
    return "\n".join(out)


def scan_table(data: dict) -> str:
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    memory = None
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") == "scan":
            rows[info["tree"]][info["tool"]] = b["stats"]
        elif info.get("kind") == "diff_memory":
            memory = info
    if not rows:
        return ""
    names = {"tree_20k": "20,000 files", "tree_100k": "100,000 files"}
    out = [
        "\n**Scanning** (1-64 KiB files, page-cached; median of 5 runs, 3 for the Python loop)\n",
        "| tree | `find -printf` | hashsync warm (etag, all reused) | warm / find "
        "| hashsync cold (etag) | os.walk + hashlib | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tree in ("tree_20k", "tree_100k"):
        t = rows.get(tree, {})
        if len(t) != 4:
            continue
        f, w, c, p = (
            t[k]["median"]
            for k in ("find", "hashsync-warm", "hashsync-cold", "python-walk-hashlib")
        )
        out.append(
            f"| {names[tree]} | {f:.3f} s | {w:.3f} s | {w / f:.2f}x | {c:.3f} s | {p:.3f} s "
            f"| {p / c:.2f}x |"
        )
    if memory:
        out.append(
            f"\n**Diff of {int(memory['entries_per_side']):,} entries per side** (ETag digests, 1% "
            f"changed): peak RSS {memory['peak_rss_mb']} MB (listings {memory['listing_heap_mb']} "
            f"MB), merge {float(memory['diff_seconds']) * 1000:.0f} ms"
        )
    return "\n".join(out)


def main() -> None:
    data = json.load(open(sys.argv[1]))
    m = data.get("machine_info", {})
    print(
        f"Machine: {_cpu()}, {m.get('cpu', {}).get('count', '?')} CPUs, "
        f"Python {m.get('python_version', '?')}"
    )
    print(hash_table(data))
    print(scan_table(data))


if __name__ == "__main__":
    main()
