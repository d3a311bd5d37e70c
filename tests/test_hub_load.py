"""The hub under load: 16 clients download one 2,000-file dataset at once from a real server."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import urllib3

from hashsync.hub import DatasetHubClient
from hub_helpers import free_port

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

CLIENTS = 16
FILES = 2000


def test_sixteen_clients_download_a_2000_file_dataset(tmp_path):
    rng = random.Random(5)
    root = tmp_path / "datasets"
    want = {}
    for i in range(FILES):
        rel = f"shard{i % 20:02d}/{i:05d}.bin"
        data = rng.randbytes(rng.randint(1, 4) * 1024)
        want[rel] = hashlib.sha256(data).hexdigest()
        (root / "ds" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "ds" / rel).write_bytes(data)
    port = free_port()
    env = {**os.environ, "HASHSYNC_HUB_API_KEY": "load-key", "HASHSYNC_CACHE_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "hashsync.hub", str(root), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.communicate()
            try:
                if urllib3.request("GET", url + "/health", retries=False).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                assert time.monotonic() < deadline, "the hub did not start"
                time.sleep(0.1)
        failures: list[str] = []
        results: dict[int, list] = {}

        def client(n: int) -> None:
            try:
                hub = DatasetHubClient(url, "load-key", cache_dir=tmp_path / f"c{n}", num_workers=2)
                results[n] = hub.download_dataset("ds", progress=False)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(f"client {n}: {exc!r}")

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed = time.monotonic() - started
        assert failures == []
        assert len(results) == CLIENTS
        # Every file of every client is the server's content (each was verified on arrival;
        # checked here once more, independently).
        for n, paths in results.items():
            assert len(paths) == FILES
            for p in paths:
                rel = p.relative_to(tmp_path / f"c{n}" / "ds").as_posix()
                assert hashlib.sha256(p.read_bytes()).hexdigest() == want[rel]
        status = open(f"/proc/{server.pid}/status").read()
        peak_kib = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
        assert peak_kib < 400 * 1024, f"server peak RSS {peak_kib / 1024:.0f} MiB"
        assert elapsed < 300, f"took {elapsed:.0f} s"
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    # No server error in its log (refusals and tracebacks would be there).
    assert "Traceback" not in err and "Exception" not in err, err[-2000:]
