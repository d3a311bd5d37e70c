"""Puts the latest benchmark tables into README.md, between its marker comments."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {
    "bench": ROOT / "benches" / "results" / "latest.md",
    "sync": ROOT / "benches" / "results" / "sync.md",
    "counts": ROOT / "benches" / "results" / "sync-counts-table.md",
    "cache": ROOT / "benches" / "results" / "cache.md",
    "fsspec": ROOT / "benches" / "results" / "fsspec.md",
    "hub": ROOT / "benches" / "results" / "hub.md",
    "treecache": ROOT / "benches" / "results" / "treecache.md",
    "segments": ROOT / "benches" / "results" / "segments.md",
}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, source in SECTIONS.items():
        if not source.exists():
            print(f"skipping {name}: {source} does not exist", file=sys.stderr)
            continue
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            print(f"README.md has no {name} markers", file=sys.stderr)
            return 1
        body = source.read_text().strip() + "\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    readme.write_text(text)
    print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
