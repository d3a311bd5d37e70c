"""A burst of 60 concurrent ``GET /manifest`` of an N-file dataset against the hub server.

Prints the server's peak RSS, the latency of ``/health`` and of one ``/file`` during the burst,
and the burst's wall time (issue 24: a key holder must not be able to starve the server).
Usage: ``python benches/hub_manifest_burst.py 200000 /tmp/burst`` (the dataset is made there once).
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hub_helpers import free_port

n = int(sys.argv[1])
data = Path(sys.argv[2])
root = data / "datasets"
if not (root / "big").exists():
    for i in range(n):
        d = root / "big" / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"{i:06d}.bin").write_bytes(b"%d" % i)
port = free_port()
env = {**os.environ, "HASHSYNC_HUB_API_KEY": "k", "HASHSYNC_CACHE_DIR": str(data / "state")}
proc = subprocess.Popen(
    [sys.executable, "-m", "hashsync.hub", str(root), "--port", str(port)],
    env=env,
    stderr=open(data / "server.log", "w"),
)
url = f"http://127.0.0.1:{port}"
A = {"Authorization": "Bearer k"}
pm = urllib3.PoolManager(maxsize=100)
for _ in range(300):
    try:
        pm.request("GET", url + "/health", retries=False, timeout=1)
        break
    except Exception:
        time.sleep(0.1)
t = time.monotonic()
r = pm.request("GET", url + "/manifest/big", headers=A, timeout=600)
print(f"first manifest {time.monotonic() - t:.1f}s, {len(r.data) / 1e6:.1f} MB")
t = time.monotonic()
r = pm.request("GET", url + "/manifest/big", headers=A, timeout=600)
print(f"second manifest {time.monotonic() - t:.2f}s")


def rss():
    return (
        int(next(x for x in open(f"/proc/{proc.pid}/status") if x.startswith("VmHWM")).split()[1])
        // 1024
    )


base = rss()
lat = {}


def man(i):
    h = {**A, "Accept-Encoding": "gzip"} if i % 2 else A
    pm.request("GET", url + "/manifest/big", headers=h, timeout=600, preload_content=True)


def probe(p, h):
    time.sleep(0.5)
    t = time.monotonic()
    pm.request("GET", url + p, headers=h, timeout=600)
    lat[p] = time.monotonic() - t


t = time.monotonic()
with ThreadPoolExecutor(62) as ex:
    fs = [ex.submit(man, i) for i in range(60)] + [
        ex.submit(probe, "/health", None),
        ex.submit(probe, "/file/big/d003/003456.bin", A),
    ]
    for f in fs:
        f.result()
print(
    f"60 manifests: {time.monotonic() - t:.1f}s wall; peak RSS {base} -> {rss()} MiB; "
    f"/health {lat['/health']:.2f}s, /file {lat['/file/big/d003/003456.bin']:.2f}s"
)
proc.send_signal(signal.SIGINT)
proc.wait(60)
