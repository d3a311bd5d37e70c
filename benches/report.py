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
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "algorithm" not in info:
            continue
        rows[(info["dataset"], info["algorithm"])][info["tool"]] = {**info, **b["stats"]}
    names = {"big_files": "(a) 1 GiB in 4 files", "small_files": "(b) 20,000 files of 4-64 KiB"}
    out = []
    for dataset in ("big_files", "small_files"):
        out.append(f"\n**{names[dataset]}** (median of 3 runs)\n")
        out.append("| algorithm | hashsync | GB/s | Python baseline | GB/s | speed-up |")
        out.append("|---|---:|---:|---|---:|---:|")
        for (ds, algorithm), tools in sorted(rows.items()):
            if ds != dataset or len(tools) != 2:
                continue
            ours, theirs = tools["hashsync"], tools["python"]
            gbs = lambda s: s["bytes"] / s["median"] / 1e9  # noqa: E731
            out.append(
                f"| {algorithm} | {ours['median']:.3f} s | {gbs(ours):.2f} | "
                f"{theirs['label']}: {theirs['median']:.3f} s | {gbs(theirs):.2f} | "
                f"{theirs['median'] / ours['median']:.2f}x |"
            )
    return "\n".join(out)


def main() -> None:
    data = json.load(open(sys.argv[1]))
    m = data.get("machine_info", {})
    print(f"Machine: {_cpu()}, {m.get('cpu', {}).get('count', '?')} CPUs, "
          f"Python {m.get('python_version', '?')}")
    print(hash_table(data))


if __name__ == "__main__":
    main()
