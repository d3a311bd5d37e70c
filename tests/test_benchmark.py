"""The sync benchmark harness runs end to end (--quick) and reports correctly.

Timings are not asserted (they are what the harness measures, on a shared machine); the
correctness columns are: after a same-size edit with an older mtime, hashsync transfers every
edited file and the size/mtime tools transfer none.
"""

from __future__ import annotations

import json
import sys

import pytest

from hashsync.testing.benchmark import main, write_report

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_quick_benchmark(tmp_path, monkeypatch):
    assert main(["--quick", "--out", str(tmp_path), "--name", "q"]) == 0
    report = json.loads((tmp_path / "q.json").read_text())
    runs = report["runs"]
    assert {r["tool"] for r in runs} == {"hashsync", "awscli", "s5cmd"}
    assert all(r["exit_code"] == 0 for r in runs), [r for r in runs if r["exit_code"]]
    same_size = {r["tool"]: r for r in runs if r["scenario"] == "edit-same-size"}
    assert same_size["hashsync"]["edited_transferred"] == same_size["hashsync"]["edited_total"]
    assert same_size["hashsync"]["remote_equals_local"] is True
    for tool in ("awscli", "s5cmd"):
        assert same_size[tool]["edited_transferred"] == 0
        assert same_size[tool]["remote_equals_local"] is False
    normal = {r["tool"]: r for r in runs if r["scenario"] == "edit"}
    assert all(r["remote_equals_local"] for r in normal.values())
    md = (tmp_path / "q.md").read_text()
    assert "| edit-same-size |" in md and "hashsync/awscli" in md
    assert (tmp_path / "q.png").stat().st_size > 1000
    # The same results without matplotlib: written first, the chart skipped, nothing lost.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = report
    plain = tmp_path / "plain"
    assert not write_report(plain, "q", r["meta"], r["summary"], r["checks"], r["runs"], "t")
    assert (plain / "q.md").read_text() == md
    assert json.loads((plain / "q.json").read_text()) == report
    assert not (plain / "q.png").exists()


def test_chart_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    from hashsync.testing.benchmark import chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    summary = {"upload": {"hashsync": {"median": 1.0, "min": 1.0, "max": 1.0}}}
    assert chart(summary, tmp_path / "c.png", "t") is False
    assert not (tmp_path / "c.png").exists()
