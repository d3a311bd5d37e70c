"""What `pip install hashsync` users get: the public names, and the wheel in a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_sync_after_a_bare_import(tmp_path):
    code = (
        "import hashsync, sys\n"
        "r = hashsync.sync(sys.argv[1], sys.argv[2])\n"
        "assert isinstance(r, hashsync.SyncResult) and r.transferred == ['f'], r\n"
        "import hashsync.cli, hashsync.engine\n"
        "assert callable(hashsync.sync) and hashsync.sync is hashsync.engine.sync\n"
        "print('ok')\n"
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "src"), str(tmp_path / "dst")],
        capture_output=True,
        text=True,
        env={**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "state")},
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_stubbed_return_types_match_the_extension(tmp_path):
    # stubtest checks names and signatures, not return types: these once drifted.
    from hashsync import _native

    (tmp_path / "f").write_bytes(b"x")
    assert isinstance(_native.default_cache_dir(), Path)
    assert isinstance(_native.scan(tmp_path).root, Path)
    assert _native.diff([], []).unchanged == 0


def test_public_names_are_exported_with_all():
    import hashsync

    for name in ("sync", "SyncResult", "TransferEvent", "plan_sync", "scan", "diff"):
        assert name in hashsync.__all__ and getattr(hashsync, name) is not None
    assert sorted(hashsync.__all__) == sorted(set(hashsync.__all__))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    maturin = Path(sys.executable).parent / "maturin"
    r = subprocess.run(
        [str(maturin), "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (built,) = out.glob("hashsync-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv holding the wheel and only its declared dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_wheel_ships_types_and_no_dev_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "hashsync/py.typed" in names and "hashsync/_native.pyi" in names
    assert not [n for n in names if n.startswith(("tests/", "benches/"))]
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: boto3" in text
    assert "Provides-Extra: hub" in text and "Provides-Extra: bench" in text


@pytest.mark.slow
@pytest.mark.s3
def test_wheel_in_a_fresh_venv_syncs_to_s3(fresh_venv, s3_server, tmp_path):
    bucket = "wheel-check"
    s3_server.create_bucket(bucket)
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "a.txt").write_bytes(b"hello")
    (tmp_path / "src" / "b.bin").write_bytes(os.urandom(6 * 1024**2))
    env = {
        "PATH": f"{fresh_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HASHSYNC_CACHE_DIR": str(tmp_path / "state"),
        **s3_server.env(),
    }
    hs = str(fresh_venv / "bin" / "hashsync")
    r = subprocess.run(
        [hs, "sync", str(tmp_path / "src"), f"s3://{bucket}/p", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [hs, "sync", f"s3://{bucket}/p", str(tmp_path / "back")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "d" / "a.txt").read_bytes() == b"hello"
    # A cache named in a YAML config file (PyYAML is a declared dependency), and its CLI.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"default: data\ncaches:\n  data:\n    type: copy-to-local\n"
        f"    storages: [s3://{bucket}/p]\n    directory: {tmp_path / 'cached'}\n"
    )
    env["HASHSYNC_CONFIG"] = str(config)
    code = "from hashsync.cache import get_cache; print(get_cache().get('d/a.txt').read_text())"
    r = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "hello", r.stderr
    r = subprocess.run(
        [hs, "cache", "stats", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0 and json.loads(r.stdout)["files"] == 1, r.stdout + r.stderr
    # The hub server is an extra too; the client is not.
    r = subprocess.run(
        [hs, "serve", str(tmp_path), "--no-auth"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1 and "pip install 'hashsync[hub]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    code = "from hashsync.hub import DatasetHubClient; print(DatasetHubClient)"
    r = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    # The benchmark's tools are an extra: one line naming it, no traceback.
    r = subprocess.run(
        [hs, "bench", "--quick"], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 1
    assert "pip install 'hashsync[bench]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_gcs_extra_brings_what_the_credentials_need():
    # google-auth's urllib3 transport (token refresh) needs its own extra: found by installing
    # the wheel with [gcs] into an empty venv, where `packaging` was missing.
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    gcs = project["project"]["optional-dependencies"]["gcs"]
    assert any(dep.replace(" ", "").startswith("google-auth[urllib3]") for dep in gcs)


def test_make_refuses_a_python_older_than_3_11(tmp_path):
    # A stock Mac's python3 is 3.9: make must say what it needs instead of failing later.
    import subprocess
    from pathlib import Path

    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # "sys.version_info < (3, 11)"
    old.chmod(0o755)
    root = Path(__file__).parents[1]
    done = subprocess.run(
        ["make", "-C", str(root), "venv", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "needs Python 3.11 or newer" in done.stderr
    assert not (tmp_path / "venv").exists()
