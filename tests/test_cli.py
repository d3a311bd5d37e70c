"""The `hashsync` command line, run as a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from refs import reference


def run(*args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "hashsync", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "sub dir" / "b.bin"
    b.parent.mkdir()
    a.write_bytes(b"hello\n")
    b.write_bytes(bytes(range(256)) * 100)
    return tmp_path, a, b


def test_hash_prints_like_sha256sum(files):
    _, a, b = files
    r = run("hash", a, b)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        f"{hashlib.sha256(a.read_bytes()).hexdigest()}  {a}\n"
        f"{hashlib.sha256(b.read_bytes()).hexdigest()}  {b}\n"
    )


@pytest.mark.parametrize("algorithm", ["md5", "crc32c", "xxh3", "etag"])
def test_hash_algorithms(files, algorithm):
    _, a, _ = files
    r = run("hash", "-a", algorithm, a)
    assert r.stdout.split()[0] == reference(a.read_bytes(), algorithm)


def test_hash_stdin_and_json(files):
    _, a, _ = files
    r = run("hash", "-a", "md5", "-", stdin="hello\n")
    assert r.stdout == f"{hashlib.md5(b'hello' + chr(10).encode()).hexdigest()}  -\n"
    r = run("hash", "--json", a)
    assert json.loads(r.stdout) == [
        {"path": str(a), "algorithm": "sha256", "digest": reference(a.read_bytes(), "sha256")}
    ]


def test_missing_file_exit_codes(files):
    tmp, a, _ = files
    r = run("hash", a, tmp / "missing")
    assert r.returncode == 2
    assert "missing: No such file or directory" in r.stderr
    assert str(a) in r.stdout
    r = run("hash", tmp / "missing")
    assert r.returncode == 1


def test_check_round_trip_and_failures(files):
    tmp, a, b = files
    listing = run("hash", "-a", "md5", a.name, b.relative_to(tmp), cwd=tmp).stdout
    (tmp / "sums.md5").write_text(listing)
    r = run("hash", "-a", "md5", "--check", "sums.md5", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a.txt: OK\nsub dir/b.bin: OK\n"
    # md5sum's own output is accepted too.
    if subprocess.run(["which", "md5sum"], capture_output=True).returncode == 0:
        theirs = subprocess.run(["md5sum", "a.txt"], capture_output=True, text=True, cwd=tmp).stdout
        (tmp / "theirs.md5").write_text(theirs)
        assert run("hash", "-a", "md5", "-c", "theirs.md5", cwd=tmp).returncode == 0
    a.write_bytes(b"HELLO\n")  # same size, different content
    r = run("hash", "-a", "md5", "--check", "sums.md5", cwd=tmp)
    assert r.returncode == 1
    assert "a.txt: FAILED" in r.stdout and "did NOT match" in r.stderr
    b.unlink()
    a.write_bytes(b"hello\n")
    r = run("hash", "-a", "md5", "--check", "sums.md5", cwd=tmp)
    assert r.returncode == 2
    assert "could not be read" in r.stderr


def test_check_etag_accepts_any_part_size(tmp_path):
    from refs import MIB, s3_etag

    data = bytes(range(256)) * (48 * 1024)  # 12 MiB
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "sums").write_text(f"{s3_etag(data, 5 * MIB)}  f\n")
    r = run("hash", "-a", "etag", "-c", "sums", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_arguments(files):
    _, a, _ = files
    r = run("hash", "-a", "sha3", a)
    # A usage error is a failure (1); 2 means "some files were skipped".
    assert r.returncode == 1 and "invalid choice" in r.stderr
    r = run("hash", "--part-size", "1KiB", "-a", "etag", a)
    assert r.returncode != 0 and "minimum part size" in r.stderr
    r = run("hash", "--part-size", "lots", a)
    assert "is not a size" in r.stderr
    assert run("--help").returncode == 0
    assert "--check" in run("hash", "--help").stdout


def test_sync_bar_goes_to_the_terminal_and_output_to_stdout(tmp_path):
    # A user in a terminal piping the output on: the bar is drawn on stderr, stdout stays
    # clean (plain lines, or one JSON document with --json).
    from sync_helpers import stderr_on_a_terminal, write_tree

    write_tree(tmp_path / "src", {f"f{i}.bin": bytes(100_000) for i in range(20)})
    drawn, out = stderr_on_a_terminal(
        ["sync", str(tmp_path / "src"), str(tmp_path / "dst"), "--verbose"]
    )
    assert "\x1b[" in drawn
    assert "\x1b" not in out and out.count("copy: ") == 20
    (tmp_path / "src" / "f0.bin").write_bytes(b"changed")
    drawn, out = stderr_on_a_terminal(
        ["sync", str(tmp_path / "src"), str(tmp_path / "dst"), "--json", "--verbose"]
    )
    assert json.loads(out)["transferred"] == ["f0.bin"]
    assert "copy: f0.bin" in drawn
