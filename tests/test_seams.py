"""Structural checks of the package: one way in for each concern (issue 25)."""

from __future__ import annotations

import re
from pathlib import Path

from hashsync._retry import BASE_DELAY, MAX_DELAY, backoff

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "hashsync"


def test_backoff_grows_is_capped_and_jittered():
    for retry in range(1, 12):
        waits = [backoff(retry) for _ in range(200)]
        step = min(BASE_DELAY * 2 ** (retry - 1), MAX_DELAY)
        assert all(step * 0.1 <= w <= step for w in waits), retry
        assert len(set(waits)) > 1  # jittered: threads that failed together spread out
    assert max(backoff(30) for _ in range(100)) <= MAX_DELAY


def test_one_retry_policy():
    # Any exponential backoff written out by hand outside the policy module.
    handmade = re.compile(r"[0-9]*\.[0-9]+\s*\*\s*2\s*\*\*|\bbackoff_factor\s*=\s*[0-9]|sleep\(min\(")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_retry.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if handmade.search(line)
    ]
    assert offenders == []
