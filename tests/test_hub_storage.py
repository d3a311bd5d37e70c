"""``hub://`` storage against a real uvicorn hub: the storage contract, sync, caches, hostility."""

from __future__ import annotations

import email.utils
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import urllib3

import hashsync
from hashsync import errors
from hashsync.cache import CopyToLocalCache, local_path
from hashsync.hub import HubStorage
from hashsync.hub._manifest import HIDDEN_PATTERNS
from hashsync.storage import SimpleLocalStorage, open_storage
from hashsync.testing.contract import MANY, ReadOnlyContract
from hub_helpers import KEY, free_port, running_hub
from proxy_helpers import rewriting_proxy
from sync_helpers import cli, write_tree

pytest.importorskip("fastapi")

MANY_KEYS = [f"k/{i:04d}" for i in range(MANY)]


def _writer(root: Path):
    def put(key: str, data: bytes) -> None:
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub-root")


@pytest.fixture(scope="module")
def hub(datasets):
    with running_hub(datasets) as url:
        yield url


class TestHubStorage(ReadOnlyContract):
    storage_class = HubStorage

    @pytest.fixture
    def served(self, hub, datasets, tmp_path):
        # Each test gets its own dataset on the shared hub.
        name = f"t-{tmp_path.name}"
        (datasets / name).mkdir()
        return datasets / name, name

    @pytest.fixture
    def storage(self, hub, served):
        return HubStorage(hub, served[1], api_key=KEY, timeout=10)

    @pytest.fixture
    def put(self, served):
        return _writer(served[0])

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, hub, datasets):
        put = _writer(datasets / "many")
        for key in MANY_KEYS:
            put(key, key.encode())
        return HubStorage(hub, "many", api_key=KEY), MANY_KEYS


# -- URLs ------------------------------------------------------------------------------


def test_open_storage_hub_urls(monkeypatch):
    monkeypatch.setenv("HASHSYNC_HUB_API_KEY", "first, second")
    storage = open_storage("hub://gpu-box:9000/mnist/train/")
    assert isinstance(storage, HubStorage)
    assert storage.client.base_url == "http://gpu-box:9000"
    assert (storage.dataset, storage.prefix) == ("mnist", "train/")
    assert storage.client.api_key == "first"  # the server's list: a client sends one
    assert repr(storage) == "HubStorage('hub://gpu-box:9000/mnist/train/')"
    assert open_storage("hub://box/mnist").client.base_url == "http://box:8000"
    assert open_storage("hubs://box/mnist").client.base_url == "https://box"
    assert open_storage("hub://[::1]:5/d").client.base_url == "http://[::1]:5"
    monkeypatch.delenv("HASHSYNC_HUB_API_KEY")
    monkeypatch.setenv("DSX_API_KEY", "seed")
    assert open_storage("hub://box/mnist").client.api_key == "seed"
    assert open_storage("hub://box/mnist", api_key="given").client.api_key == "given"


@pytest.mark.parametrize(
    "url",
    [
        "hub://box:8000",
        "hub://box:8000/",
        "hub://box:99999/mnist",
        "hub://box:port/mnist",
        "hub:///mnist",
        "hub://box/../etc",
        "hub://box/.hidden",
        "hub://box/%2e%2e/etc/passwd",
        "hub://box/mnist/../../etc/passwd",
        "hub://box/mnist/a//b",
        "hub://box/mnist?x=1",
        "hub://user:secret@box/mnist",
    ],
)
def test_bad_hub_urls_are_refused_clearly(url):
    with pytest.raises(errors.InvalidArgument) as info:
        open_storage(url)
    assert "secret" not in str(info.value)


# -- sync ------------------------------------------------------------------------------


@pytest.fixture
def dataset(datasets, tmp_path, monkeypatch) -> tuple[Path, str]:
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    name = f"sync-{tmp_path.name}"
    files = {f"d{i % 3}/{i:03d}.bin": os.urandom(500 + 97 * i) for i in range(24)}
    files["big.bin"] = os.urandom(3 * 1024 * 1024 + 5)
    write_tree(datasets / name, files)
    return datasets / name, name


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HASHSYNC_HUB_API_KEY": KEY,
        "HASHSYNC_CACHE_DIR": str(tmp_path / "state"),
    }


def _same_tree(a: Path, b: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }

    assert files(a) == files(b)


def test_cli_sync_from_a_hub_copies_only_what_changed(hub, dataset, tmp_path):
    root, name = dataset
    url = hub.replace("http://", "hub://") + f"/{name}"
    local = tmp_path / "local"
    first = cli("sync", url, local, "--json", env=_env(tmp_path))
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)["transferred"]) == 25
    _same_tree(root, local)
    # The download keeps the hub's Last-Modified (whole seconds) as the mtime.
    assert int((local / "big.bin").stat().st_mtime) == int((root / "big.bin").stat().st_mtime)

    again = cli("sync", url, local, "--json", env=_env(tmp_path))
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["transferred"] == [] and report["skipped"] == 25

    # A same-size edit with the old mtime (what a size-and-mtime tool misses) is fetched,
    # and only it; an extra local file goes with --delete.
    edited = root / "d1" / "001.bin"
    st = edited.stat()
    edited.write_bytes(os.urandom(st.st_size))
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    (local / "extra.txt").write_bytes(b"not on the hub")
    third = cli("sync", url, local, "--delete", "--json", env=_env(tmp_path))
    assert third.returncode == 0, third.stderr
    report = json.loads(third.stdout)
    assert report["transferred"] == ["d1/001.bin"] and report["deleted"] == ["extra.txt"]
    _same_tree(root, local)


def test_sync_from_a_hub_prefix_and_filters(hub, dataset, tmp_path):
    root, name = dataset
    local = tmp_path / "local"
    source = HubStorage(hub, name, prefix="d2", api_key=KEY)
    result = hashsync.sync(source, local, include="*.bin", exclude="*")
    assert result.ok and len(result.transferred) == 8
    _same_tree(root / "d2", local)


def test_sync_from_a_hub_to_s3_and_back(hub, dataset, tmp_path, s3_server, bucket):
    from sync_helpers import s3

    root, name = dataset
    remote = s3(s3_server, bucket, "from-hub")
    result = hashsync.sync(HubStorage(hub, name, api_key=KEY), remote)
    assert result.ok and len(result.transferred) == 25
    back = tmp_path / "back"
    assert hashsync.sync(remote, back).ok
    _same_tree(root, back)


def test_sync_from_a_hub_wrong_key_and_hub_down(hub, dataset, tmp_path):
    _root, name = dataset
    local = tmp_path / "local"
    with pytest.raises(errors.PermissionDenied):
        hashsync.sync(HubStorage(hub, name, api_key="wrong"), local)
    with pytest.raises(errors.NotFound):
        hashsync.sync(HubStorage(hub, "no-such-dataset", api_key=KEY), local)
    down = HubStorage(f"http://127.0.0.1:{free_port()}", name, api_key=KEY, timeout=2)
    with pytest.raises(errors.StorageUnavailable):
        hashsync.sync(down, local)
    assert not local.exists()  # a failed source creates nothing
    bad = cli("sync", f"hub://127.0.0.1:{free_port()}/{name}", local, "--json", env=_env(tmp_path))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


# -- verification ----------------------------------------------------------------------


def test_a_corrupted_or_truncated_download_is_refused_and_leaves_nothing(hub, dataset, tmp_path):
    root, name = dataset
    dest = SimpleLocalStorage(tmp_path / "dest")
    dest.path("big.bin").parent.mkdir(parents=True, exist_ok=True)
    dest.path("big.bin").write_bytes(b"the old copy stays")
    dest.path("extra.txt").write_bytes(b"not on the hub, kept: the sync failed")

    def flip(path: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if "/file/" in path and data else data

    def truncate(path: str, data: bytes) -> bytes:
        return data[: len(data) // 2] if "/file/" in path else data

    for rewrite in (flip, truncate):
        with rewriting_proxy(hub, rewrite) as bad:
            storage = HubStorage(bad, name, api_key=KEY)
            with pytest.raises(errors.IntegrityError):
                storage.copy("big.bin", dest)
            result = hashsync.sync(storage, dest, delete=True)
        assert not result.ok and {k for k, _ in result.failed} == set(
            p.relative_to(root).as_posix() for p in root.rglob("*.bin")
        )
        assert result.deleted == [] and result.delete_suppressed
        assert dest.path("big.bin").read_bytes() == b"the old copy stays"
        left = sorted(p.name for p in (tmp_path / "dest").rglob("*") if p.is_file())
        assert left == ["big.bin", "extra.txt"]


class _DroppingHub(http.server.ThreadingHTTPServer):
    """Serves one file like the hub's /file endpoint, dropping the first answer halfway.

    Its /manifest names the file as it is now (not counted in ``requests``).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.etag = hashsync.hash_bytes(data, "sha256")
        self.requests: list[dict[str, str]] = []
        self.drops = 1
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/manifest/"):
                    entry = {
                        "path": "f.bin",
                        "size": len(outer.data),
                        "hash": f"sha256:{outer.etag}",
                    }
                    body = json.dumps([entry]).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                outer.requests.append(dict(self.headers))
                start = 0
                ranged = self.headers.get("Range")
                if ranged and self.headers.get("If-Range") == f'"{outer.etag}"':
                    start = int(ranged.split("=")[1].rstrip("-"))
                body = outer.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{outer.etag}"')
                self.send_header("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")
                if start:
                    n = len(outer.data)
                    self.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
                self.end_headers()
                if outer.drops:
                    outer.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def dropping():
    server = _DroppingHub(os.urandom(3_000_000))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_dropped_connection_resumes_with_range_and_if_range(dropping, tmp_path):
    dest = SimpleLocalStorage(tmp_path / "dest")
    storage = HubStorage(f"http://127.0.0.1:{dropping.server_port}", "ds", api_key=KEY)
    storage.copy("f.bin", dest)
    assert dest.path("f.bin").read_bytes() == dropping.data
    first, second = dropping.requests
    assert "Range" not in first
    # It asks for the rest from the last whole chunk it wrote, only if the file is the same.
    start = int(second["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 1_500_000 and second["If-Range"] == f'"{dropping.etag}"'
    stamp = email.utils.parsedate_to_datetime("Wed, 02 Dec 2026 10:00:00 GMT").timestamp()
    assert dest.path("f.bin").stat().st_mtime == stamp  # its Last-Modified


def test_a_file_changed_during_resume_starts_over(dropping, tmp_path):
    dest = SimpleLocalStorage(tmp_path / "dest")
    storage = HubStorage(f"http://127.0.0.1:{dropping.server_port}", "ds", api_key=KEY)
    old_etag = dropping.etag

    def swap(*_):
        # The file changes on the server between the drop and the resume.
        dropping.data = os.urandom(2_000_000)
        dropping.etag = hashsync.hash_bytes(dropping.data, "sha256")

    original = dropping.RequestHandlerClass.do_GET

    def get_then_swap(handler):
        original(handler)
        if len(dropping.requests) == 1:
            swap()

    dropping.RequestHandlerClass.do_GET = get_then_swap
    storage.copy("f.bin", dest)
    assert dest.path("f.bin").read_bytes() == dropping.data  # the new version, whole
    assert dropping.requests[1]["If-Range"] == f'"{old_etag}"'


def test_repeated_drops_give_up_with_storage_unavailable(dropping, tmp_path):
    dropping.drops = 10
    dest = SimpleLocalStorage(tmp_path / "dest")
    storage = HubStorage(
        f"http://127.0.0.1:{dropping.server_port}", "ds", api_key=KEY, max_attempts=3
    )
    with pytest.raises(errors.StorageUnavailable, match="connection lost"):
        storage.copy("f.bin", dest)
    assert len(dropping.requests) == 3
    assert list((tmp_path / "dest").rglob("*.bin")) == []


# -- the server serves what appeared since its last scan ------------------------------------


def test_a_file_added_after_the_last_scan_is_served(hub, datasets, tmp_path, monkeypatch):
    import hashsync.hub.server as server

    name = f"late-{tmp_path.name}"
    write_tree(datasets / name, {"a.txt": b"a"})
    storage = HubStorage(hub, name, api_key=KEY)
    assert [i.key for i in storage.list()] == ["a.txt"]  # scanned now
    scans = []
    real = server.scan_listing
    monkeypatch.setattr(server, "scan_listing", lambda *a, **k: scans.append(1) or real(*a, **k))
    write_tree(datasets / name, {"b/new.txt": b"new"})
    assert storage.get_hash("b/new.txt") == "sha256:" + hashsync.hash_bytes(b"new", "sha256")
    assert len(scans) == 1
    # A name that does not exist, a temporary of hashsync, a link: no scan at all.
    os.symlink(datasets / name / "a.txt", datasets / name / "link.txt")
    (datasets / name / ".x.hashsync-tmp-0a1b2c3d-1-deadbeef").write_bytes(b"t")
    for key in ("nope.txt", "b/nope", "link.txt", ".x.hashsync-tmp-0a1b2c3d-1-deadbeef"):
        assert not storage.exists(key)
    assert len(scans) == 1


def test_an_unreadable_new_file_costs_one_rescan_not_one_per_request(
    hub, datasets, tmp_path, monkeypatch
):
    import hashsync.hub.server as server

    name = f"unreadable-{tmp_path.name}"
    write_tree(datasets / name, {"a.txt": b"a"})
    storage = HubStorage(hub, name, api_key=KEY)
    list(storage.list())
    scans = []

    def scan(directory, **kw):
        scans.append(1)
        # As if the new file could not be read: the scan leaves it out.
        return hashsync.scan(
            directory,
            algorithm="sha256",
            state_dir=kw.get("state_dir"),
            confined=True,
            exclude=[*HIDDEN_PATTERNS, "secret.bin"],
        )

    monkeypatch.setattr(server, "scan_listing", scan)
    write_tree(datasets / name, {"secret.bin": b"s"})
    for _ in range(5):
        assert not storage.exists("secret.bin")
    assert len(scans) == 1
    # Changed on disk (say, made readable): worth one more look.
    (datasets / name / "secret.bin").write_bytes(b"s2")
    assert not storage.exists("secret.bin")
    assert len(scans) == 2


# -- caches ----------------------------------------------------------------------------


def test_a_cache_over_a_hub_revalidates_by_manifest_hash(hub, dataset, tmp_path):
    root, name = dataset
    log: list[tuple[str, str]] = []
    with rewriting_proxy(hub, log=log) as proxied:
        cache = CopyToLocalCache(
            [HubStorage(proxied, name, api_key=KEY)], tmp_path / "cache", max_age=0
        )
        path = cache.get("d0/000.bin")
        assert path.read_bytes() == (root / "d0" / "000.bin").read_bytes()
        want = "sha256:" + hashsync.hash_file(root / "d0" / "000.bin", "sha256")
        assert cache.get_hash("d0/000.bin") == want
        log.clear()
        assert cache.get("d0/000.bin") == path  # revalidated with one HEAD, not downloaded
        assert [m for m, _ in log] == ["HEAD"]
        (root / "d0" / "000.bin").write_bytes(b"changed on the hub")
        assert cache.get("d0/000.bin").read_bytes() == b"changed on the hub"


def test_local_path_of_a_hub_url(hub, dataset, tmp_path, monkeypatch):
    root, name = dataset
    monkeypatch.setenv("HASHSYNC_HUB_API_KEY", KEY)
    url = hub.replace("http://", "hub://") + f"/{name}/d1/004.bin"
    path = local_path(url)
    assert path.read_bytes() == (root / "d1" / "004.bin").read_bytes()
    assert "hub/127.0.0.1" in path.as_posix() and path.as_posix().endswith("d1/004.bin")
    with pytest.raises(errors.NotFound):
        local_path(hub.replace("http://", "hub://") + f"/{name}/nope.bin")


def test_refusals_are_logged_but_keys_never(hub, dataset, caplog):
    _root, name = dataset
    storage = HubStorage(hub, name, api_key=KEY)
    with caplog.at_level(logging.WARNING, logger="hashsync.hub"):
        assert not storage.exists("no/such/file")
    assert "no/such/file" in caplog.text and KEY not in caplog.text


def test_a_hostile_manifest_cannot_make_a_sync_write_outside(hub, dataset, tmp_path):
    import gzip

    _root, name = dataset
    evil = [{"path": "../../escape.txt", "size": 1, "hash": "sha256:" + "0" * 64, "mtime": 0}]

    def rewrite(path: str, body: bytes) -> bytes:
        return gzip.compress(json.dumps(evil).encode()) if path.startswith("/manifest/") else body

    with rewriting_proxy(hub, rewrite) as bad:
        with pytest.raises(errors.IntegrityError, match="unsafe path"):
            hashsync.sync(HubStorage(bad, name, api_key=KEY), tmp_path / "local" / "deep")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "local").exists()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_a_file_the_hub_cannot_read_suppresses_delete(tmp_path):
    """The hub leaves an unreadable file out of its manifest; a sync must not take that to
    mean "deleted" and remove the local copy."""
    root = tmp_path / "datasets"
    write_tree(root / "ds", {"a.txt": b"a", "secret.bin": b"s"})
    (root / "ds" / "secret.bin").chmod(0o000)
    local = tmp_path / "local"
    write_tree(local, {"secret.bin": b"the local copy", "gone.txt": b"g"})
    port = free_port()
    env = {
        **os.environ,
        "HASHSYNC_HUB_API_KEY": KEY,
        "HASHSYNC_CACHE_DIR": str(tmp_path / "server-state"),
    }
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", "--"]  # fmt: skip
    proc = subprocess.Popen(
        [*drop, sys.executable, "-m", "hashsync", "serve", str(root), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if urllib3.request("GET", url + "/health", retries=False).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        result = hashsync.sync(HubStorage(url, "ds", api_key=KEY), local, delete=True)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert (local / "a.txt").read_bytes() == b"a"
    assert (local / "secret.bin").read_bytes() == b"the local copy"
    assert (local / "gone.txt").exists()  # nothing deleted while the source is incomplete
    assert result.delete_suppressed and not result.ok
    assert any("could not read" in reason for _, reason in result.scan_errors)
    assert "secret.bin" in stderr  # the server logged what it left out


def test_a_pickled_hub_storage_carries_no_api_key(hub, datasets, monkeypatch):
    import pickle

    (datasets / "pickled").mkdir(exist_ok=True)
    (datasets / "pickled" / "a.txt").write_bytes(b"a")
    monkeypatch.delenv("HASHSYNC_HUB_API_KEY", raising=False)
    monkeypatch.delenv("DSX_API_KEY", raising=False)
    blob = pickle.dumps(HubStorage(hub, "pickled", api_key=KEY, prefix="", timeout=10))
    assert KEY.encode() not in blob
    # The other side takes its key from its own environment.
    with pytest.raises(errors.PermissionDenied):
        list(pickle.loads(blob).list())
    monkeypatch.setenv("HASHSYNC_HUB_API_KEY", KEY)
    assert [o.key for o in pickle.loads(blob).list()] == ["a.txt"]
