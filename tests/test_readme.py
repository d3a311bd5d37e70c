"""Every Python example in README.md runs, in order, against a real S3 server."""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import pytest

from hashsync.hub import DatasetHubClient
from hub_helpers import running_hub

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.s3
def test_readme_python_examples_run(
    s3_server, s3_env, gcs_emulator, gcs_env, tmp_path, monkeypatch
):
    # The files and the buckets the examples name (GCS's on the emulator).
    s3_server.create_bucket("bucket")
    gcs_emulator.create_bucket("bucket")
    gcs_emulator.create_bucket("public-bucket")
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard-000.tar").write_bytes(random.Random(0).randbytes(9 * 1024**2))
    (data / "model.safetensors").write_bytes(b"weights" * 1000)
    (data / "scratch.tmp").write_bytes(b"excluded")
    share = tmp_path / "share" / "datasets" / "train"
    share.mkdir(parents=True)
    (share / "0.parquet").write_bytes(b"on the share")
    s3_server.client().put_object(Bucket="bucket", Key="datasets/train/1.parquet", Body=b"in S3")
    s3_server.client().put_object(Bucket="bucket", Key="datasets/train/0.parquet", Body=b"in S3")
    # The hub example's server: a real one, at the address the README names.
    hub_root = tmp_path / "hub"
    (hub_root / "mnist" / "train").mkdir(parents=True)
    (hub_root / "mnist" / "train" / "0.png").write_bytes(b"\x89PNG" + bytes(100))
    (hub_root / "cifar10").mkdir()
    hub = contextlib.ExitStack()
    hub_url = hub.enter_context(running_hub(hub_root, keys=("secret1",)))
    original_init = DatasetHubClient.__init__

    def at_test_hub(self, base_url, *args, **kwargs):
        original_init(self, base_url.replace("http://gpu-box:8000", hub_url), *args, **kwargs)

    monkeypatch.setattr(DatasetHubClient, "__init__", at_test_hub)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HASHSYNC_CONFIG", str(tmp_path / "no-config.yaml"))
    namespace: dict[str, object] = {"__name__": "readme"}
    # The fsspec example registers hashsync for s3://: undone afterwards for the other tests.
    import sys

    import fsspec

    registry = sys.modules["fsspec.registry"]._registry
    hub.callback(lambda before=dict(registry): (registry.clear(), registry.update(before)))
    hub.callback(fsspec.AbstractFileSystem.clear_instance_cache)
    with hub:
        for number, block in enumerate(python_blocks(), 1):
            code = compile(block, f"README.md python block {number}", "exec")
            exec(code, namespace)  # noqa: S102 - the README is this repository's own text
    assert (tmp_path / "cache" / "mnist" / "train" / "0.png").read_bytes().startswith(b"\x89PNG")
    assert namespace["uploaded"] == 1 and namespace["downloaded"] == 0
    assert (tmp_path / "prepared" / "weights.bin").read_bytes() == b"weights" * 1000
    assert (tmp_path / "scratch" / "cache" / "train" / "0.parquet").read_bytes() == b"on the share"
    assert (tmp_path / "scratch" / "cache" / "train" / "1.parquet").read_bytes() == b"in S3"
    assert namespace["magic"] == b"PAR1" and namespace["df"].equals(namespace["table"])
    assert namespace["listed"] == ["s3://bucket/tables/t.parquet"]
    assert (tmp_path / "cache" / "shard-000.tar").read_bytes() == (
        data / "shard-000.tar"
    ).read_bytes()
