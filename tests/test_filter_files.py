"""--exclude-from / --include-from: filter patterns kept in a file (aws-cli#3520)."""

from __future__ import annotations

import json

import pytest

from hashsync.errors import InvalidArgument, NotFound
from hashsync.syncing.rules import read_pattern_file
from sync_helpers import cli


def tree(root):
    for rel in ("a.parquet", "b.csv", "logs/x.log", "keep/y.parquet", "keep/z.tmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


def test_pattern_files_skip_comments_blanks_and_spaces(tmp_path):
    f = tmp_path / "patterns"
    f.write_bytes("\ufeff# a comment\r\n\r\n  *.log  \r\n; rclone's comment\r\nkeep/*\n".encode())
    assert read_pattern_file(f) == ["*.log", "keep/*"]
    with pytest.raises(NotFound, match="no such filter file"):
        read_pattern_file(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(InvalidArgument, match="UTF-8"):
        read_pattern_file(tmp_path / "binary")


def synced(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout)["transferred"])


def test_exclude_from_and_include_from_apply_in_place(tmp_path):
    src = tree(tmp_path / "src")
    excludes = tmp_path / "exclude.txt"
    excludes.write_text("# scratch and logs\n*.log\n*.tmp\n")
    got = cli("sync", src, tmp_path / "d1", "--exclude-from", excludes, "--json")
    assert synced(got) == ["a.parquet", "b.csv", "keep/y.parquet"]

    # A selection under version control: everything out, the listed patterns back in.
    selection = tmp_path / "selection.txt"
    selection.write_text("*.parquet\n")
    got = cli("sync", src, tmp_path / "d2", "--exclude", "*", "--include-from", selection, "--json")
    assert synced(got) == ["a.parquet", "keep/y.parquet"]

    # Later rules win, as with --exclude/--include: the file's patterns sit where it is named.
    got = cli(
        "sync", src, tmp_path / "d3", "--exclude", "*", "--include-from", selection,
        "--exclude", "keep/*", "--json",
    )  # fmt: skip
    assert synced(got) == ["a.parquet"]

    diff = cli("diff", src, tmp_path / "d3", "--exclude-from", excludes)
    assert diff.returncode == 0, diff.stderr
    assert "+ b.csv" in diff.stdout and "x.log" not in diff.stdout


def test_a_missing_filter_file_is_one_clear_error(tmp_path):
    src = tree(tmp_path / "src")
    got = cli("sync", src, tmp_path / "dst", "--exclude-from", tmp_path / "nope.txt")
    assert got.returncode == 1  # a usage error, as for any bad argument
    assert "no such filter file" in got.stderr and "nope.txt" in got.stderr
    assert "Errno" not in got.stderr
    assert not (tmp_path / "dst").exists()
