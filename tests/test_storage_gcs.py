"""GCSStorage against gcp-storage-emulator: the storage contract, syncs, caches, TreeCache.

The emulator is a real GCS JSON API server (a subprocess on 127.0.0.1). It ignores
preconditions, so the requests' preconditions are checked against a small GCS of this
module (``_FakeGCS``) that enforces them, as GCS does; it also serves what the emulator
cannot make (composite objects, a hostile store).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from http_helpers import Request, answering

import hashsync
from hashsync.errors import (
    ConditionsNotEnforced,
    FileChanged,
    HashsyncWarning,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StorageUnavailable,
)
from hashsync.storage import SimpleLocalStorage, open_storage
from hashsync.storage.base import reporting_progress
from hashsync.storage.conditions import forget
from hashsync.storage.gcs import GCSStorage
from hashsync.storage.local import TemporaryLocalStorage
from hashsync.testing.contract import MANY, PART, ReadWriteContract, blob

MIB = 1024**2
# Small chunks: the contract's multi-part sizes go through several resumable chunks.
FAST = {"part_size": PART, "upload_chunk_size": MIB, "max_attempts": 2, "timeout": 20.0}

_prefixes = itertools.count()


def gcs(bucket: str, prefix: str = "", **options) -> GCSStorage:
    """A storage on the emulator that ``STORAGE_EMULATOR_HOST`` names (no credentials)."""
    return GCSStorage(bucket, prefix, **{**FAST, "conditional_writes": "best-effort", **options})


@pytest.fixture(scope="module")
def shared_gcs_bucket(gcs_emulator):
    return gcs_emulator.create_bucket("gcs-contract")


@pytest.fixture
def fresh_prefix():
    return f"test-{next(_prefixes)}/some/prefix"


class TestGCSStorage(ReadWriteContract):
    """The contract on the emulator (best-effort conditions: it ignores preconditions)."""

    storage_class = GCSStorage

    @pytest.fixture
    def storage(self, gcs_env, shared_gcs_bucket, fresh_prefix):
        with gcs(shared_gcs_bucket, fresh_prefix) as storage:
            yield storage

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, gcs_emulator):
        name = gcs_emulator.create_bucket("gcs-many")
        storage = GCSStorage(name, endpoint_url=gcs_emulator.endpoint_url, anonymous=True, **FAST)
        keys = [f"k/{i:04d}" for i in range(MANY)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: storage.write_bytes(k, k.encode()), keys))
        return storage, keys


# -- URLs, options, errors --------------------------------------------------------------


def test_a_gs_url_opens_a_gcs_storage(gcs_env, gcs_bucket):
    storage = open_storage(f"gs://{gcs_bucket}/data/#1?x", part_size=PART)
    assert isinstance(storage, GCSStorage)
    # Taken literally, as gsutil does: "#" and "?" are characters of object names.
    assert storage.prefix == "data/#1?x/"
    assert storage.hash_algorithm == "md5"
    assert repr(storage) == f"GCSStorage('gs://{gcs_bucket}/data/#1?x/')"


@pytest.mark.parametrize(
    "url", ["gs://", "gs:///prefix", "gs://UPPER/x", "gs://a/x", "gs://bad..name/x", "gs://b/../x"]
)
def test_bad_urls_are_refused(gcs_env, url):
    with pytest.raises(InvalidArgument):
        open_storage(url)


def test_a_missing_bucket_is_not_found(gcs_env):
    storage = gcs("no-such-bucket-here")
    with pytest.raises(NotFound):
        list(storage.list())
    with pytest.raises(NotFound):
        storage.get_size("k")


def test_a_server_that_is_down_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = GCSStorage(
        "bucket", endpoint_url=f"http://127.0.0.1:{port}", anonymous=True, max_attempts=2
    )
    with pytest.raises(StorageUnavailable, match="unreachable"):
        storage.get_size("k")


def test_pickled_storage_works_on_the_other_side(gcs_env, gcs_bucket):
    import pickle

    storage = gcs(gcs_bucket, "p")
    storage.write_bytes("a", b"1")
    again = pickle.loads(pickle.dumps(storage))
    assert again.read_bytes("a") == b"1"
    with pytest.raises(TypeError, match="credentials"):
        pickle.dumps(GCSStorage(gcs_bucket, credentials=object()))


def test_the_emulator_is_found_to_ignore_preconditions(gcs_env, gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    forget()
    storage = GCSStorage(gcs_bucket, **FAST)  # native: checked once
    with pytest.raises(ConditionsNotEnforced, match="best-effort"):
        storage.write_bytes("lease", b"x", create_only=True)
    assert not storage.exists("lease")
    # The probe's object is gone and never listed.
    assert list(storage.list()) == []


def test_a_file_rewritten_during_a_resumable_upload_is_not_stored(gcs_env, gcs_bucket, tmp_path):
    storage = gcs(gcs_bucket, part_size=MIB)
    src = SimpleLocalStorage(tmp_path / "src")
    path = src.path("big.bin")
    path.write_bytes(blob(3 * MIB))
    old = time.time() - 100
    os.utime(path, (old, old))
    seen = []

    def rewrite(n: int) -> None:
        if not seen:
            path.write_bytes(bytes(3 * MIB))  # same size, new content, new mtime
        seen.append(n)

    with reporting_progress(rewrite), pytest.raises(FileChanged):
        storage.copy_from("big.bin", src)
    assert not storage.exists("big.bin")


def test_missing_extra_is_one_line(tmp_path):
    # Without google-auth a gs:// URL says which extra to install, and nothing else.
    code = (
        "import sys; sys.modules['google'] = None; sys.modules['google.auth'] = None\n"
        "from hashsync.cli import main\n"
        f"sys.exit(main(['sync', {str(tmp_path)!r}, 'gs://bucket/x']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'hashsync[gcs]'" in lines[0]


def test_no_credentials_says_how_to_get_them(monkeypatch, tmp_path):
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server to ask here
    started = time.monotonic()
    with pytest.raises(PermissionDenied, match="gcloud auth application-default login"):
        GCSStorage("bucket")
    assert time.monotonic() - started < 10
    # Public buckets need none.
    assert GCSStorage("bucket", anonymous=True).bucket == "bucket"


# -- syncs ---------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "dir/b.json": b'{"b": 1}',
        "dir/deeper/c.bin": blob(1000),
        "big/model.bin": blob(2 * PART + 12345),  # a resumable upload in 1 MiB chunks
        "name with space & ü.txt": b"odd",
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_sync_up_noop_stale_edit_down_and_between_buckets(gcs_env, gcs_bucket, tmp_path):
    src = tmp_path / "src"
    files = _tree(src)
    remote = gcs(gcs_bucket, "ds")

    up = hashsync.sync(src, remote, progress=False)
    assert sorted(up.transferred) == sorted(files) and not up.failed
    assert {i.key: i.size for i in remote.list()} == {k: len(v) for k, v in files.items()}
    assert remote.get_hash("a.txt") == "md5:" + hashlib.md5(b"alpha\n").hexdigest()

    again = hashsync.sync(src, remote, progress=False)
    assert again.transferred == [] and again.skipped == len(files)

    # A same-size edit with an older mtime: aws s3 sync and s5cmd miss it; content does not.
    edited = src / "dir/b.json"
    edited.write_bytes(b'{"b": 2}')
    past = time.time() - 10 * 24 * 3600
    os.utime(edited, (past, past))
    stale = hashsync.sync(src, remote, progress=False)
    assert stale.transferred == ["dir/b.json"]
    assert remote.read_bytes("dir/b.json") == b'{"b": 2}'

    down = tmp_path / "down"
    got = hashsync.sync(remote, down, progress=False)
    assert len(got.transferred) == len(files) and not got.failed
    assert hashsync.tree_hash(down) == hashsync.tree_hash(src)
    # Downloads carry the object's time, so a size-and-mtime sync agrees too.
    assert hashsync.sync(remote, down, compare="size-mtime", progress=False).transferred == []
    assert hashsync.sync(remote, down, progress=False).transferred == []

    # Bucket to bucket: rewritten server-side, content compared by MD5 on both sides.
    other = gcs(gcs_bucket, "copy")
    copied = hashsync.sync(remote, other, progress=False)
    assert len(copied.transferred) == len(files)
    assert {i.key: i.hash for i in other.list()} == {i.key: i.hash for i in remote.list()}
    assert hashsync.sync(remote, other, progress=False).transferred == []

    (src / "a.txt").unlink()
    deleted = hashsync.sync(src, remote, delete=True, progress=False)
    assert deleted.deleted == ["a.txt"] and not remote.exists("a.txt")


def test_sync_between_gcs_and_s3_compares_md5s(gcs_env, gcs_bucket, s3_env, bucket, tmp_path):
    from hashsync.storage import S3Storage

    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"small")
    remote = gcs(gcs_bucket, "x")
    hashsync.sync(src, remote, progress=False)
    s3 = S3Storage(bucket, "y", part_size=PART)
    assert hashsync.sync(remote, s3, progress=False).transferred == ["small.txt"]
    # A single-part ETag is the MD5: nothing to copy the second time, either way round.
    assert hashsync.sync(remote, s3, progress=False).transferred == []
    assert hashsync.sync(s3, remote, progress=False).transferred == []


def test_cli_sync_and_json(gcs_env, gcs_bucket, tmp_path):
    src = tmp_path / "src"
    _tree(src)
    done = subprocess.run(
        [sys.executable, "-m", "hashsync", "sync", str(src), f"gs://{gcs_bucket}/cli", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["transferred"]) == 6 and summary["failed"] == []


# -- caches and TreeCache -----------------------------------------------------------------


def test_local_path_and_cache_get(gcs_env, gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "cache-home"))
    storage = gcs(gcs_bucket)
    storage.write_bytes("img/cat.jpg", b"meow")
    from hashsync.cache import local_path

    path = local_path(f"gs://{gcs_bucket}/img/cat.jpg")
    assert path.read_bytes() == b"meow"
    assert "gs" in path.parts and gcs_bucket in path.parts
    assert local_path(f"gs://{gcs_bucket}/img/cat.jpg") == path
    storage.write_bytes("img/cat.jpg", b"purr!")  # a new version is fetched, never stale
    assert local_path(f"gs://{gcs_bucket}/img/cat.jpg").read_bytes() == b"purr!"
    with pytest.raises(NotFound):
        local_path(f"gs://{gcs_bucket}/img/dog.jpg")

    from hashsync.cache import CopyToLocalCache

    cache = CopyToLocalCache([storage], tmp_path / "tiered")
    assert cache.get("img/cat.jpg").read_bytes() == b"purr!"
    assert cache.get_hash("img/cat.jpg") == "md5:" + hashlib.md5(b"purr!").hexdigest()
    assert cache.stats().misses == 1


def test_treecache_builds_once_then_downloads(gcs_env, gcs_bucket, tmp_path, monkeypatch):
    from hashsync.treecache import TreeCache

    builds = []

    def build(out: Path) -> None:
        builds.append(out)
        (out / "index.bin").write_bytes(blob(PART + 7))  # several chunks: a resumable upload
        (out / "stats.json").write_text('{"n": 3}')

    remote = f"gs://{gcs_bucket}/caches"
    with warnings.catch_warnings():
        # The emulator ignores preconditions: TreeCache says so and falls back.
        warnings.simplefilter("ignore", HashsyncWarning)
        monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "machine-a"))
        first = TreeCache(tmp_path / "a" / "prep", remote, name="prep", key="k1")
        first.ensure(build)
        assert len(builds) == 1
        manifest = json.loads(
            gcs(gcs_bucket, "caches/prep-k1").read_bytes(".hashsync/manifest.json")
        )
        assert all("md5" in rec for rec in manifest["files"].values())

        monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "machine-b"))
        second = TreeCache(tmp_path / "b" / "prep", remote, name="prep", key="k1")
        second.ensure(build)
    assert len(builds) == 1

    def content(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and ".hashsync" not in p.parts
        }

    assert content(tmp_path / "b" / "prep") == content(tmp_path / "a" / "prep")
    assert sorted(content(tmp_path / "b" / "prep")) == ["index.bin", "stats.json"]


# -- what the emulator cannot show: preconditions, composite objects, a hostile store ------


class _FakeGCS:
    """A GCS JSON API of a few objects that enforces preconditions atomically, as GCS does."""

    def __init__(self, bucket: str = "bkt") -> None:
        self.bucket = bucket
        self.objects: dict[
            str, tuple[int, bytes, bool]
        ] = {}  # name -> (generation, data, composite)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.generations = itertools.count(1000)
        self.session_location: str | None = None
        # (name, data): written by "another client" right after the next metadata read of name.
        self.race: tuple[str, bytes] | None = None
        self.refuse_next = False  # answer the next request 401 (an expired token)
        self.page_size = 10**9  # objects per listing page

    def resource(self, name: str) -> dict:
        generation, data, composite = self.objects[name]
        crc = hashsync.hash_bytes(data, "crc32c")
        out = {
            "name": name,
            "size": str(len(data)),
            "generation": str(generation),
            "metageneration": "1",
            "updated": "2026-01-02T03:04:05.678Z",
            "crc32c": base64.b64encode(bytes.fromhex(crc)).decode(),
        }
        if not composite:
            out["md5Hash"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        return out

    def put(self, name: str, data: bytes, *, composite: bool = False) -> None:
        self.objects[name] = (next(self.generations), data, composite)

    def __call__(self, request: Request):
        self.requests.append(request)
        if self.refuse_next:
            self.refuse_next = False
            return 401, b'{"error": {"message": "Invalid Credentials"}}', {}
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        path = parts.path
        with self.lock:
            want = query.get("ifGenerationMatch")
            if path == f"/storage/v1/b/{self.bucket}/o" and request.method == "GET":
                prefix = query.get("prefix", "")
                names = [n for n in sorted(self.objects) if n.startswith(prefix)]
                start = int(query.get("pageToken", "0"))
                page = names[start : start + self.page_size]
                out: dict = {"items": [self.resource(n) for n in page]}
                if start + self.page_size < len(names):
                    out["nextPageToken"] = str(start + self.page_size)
                return 200, json.dumps(out).encode(), {}
            if path.startswith(f"/storage/v1/b/{self.bucket}/o/"):
                name = urllib.parse.unquote(path.rpartition("/o/")[2])
                if name not in self.objects:
                    return 404, b'{"error": {"message": "No such object"}}', {}
                generation, data, _ = self.objects[name]
                if want is not None and want != str(generation):
                    return 412, b'{"error": {"message": "conditionNotMet"}}', {}
                if request.method == "DELETE":
                    del self.objects[name]
                    return 204, b"", {}
                if query.get("alt") == "media":
                    headers = {"x-goog-generation": str(generation)}
                    span = request.headers.get("Range")
                    if span:
                        start, end = map(int, span.split("=")[1].split("-"))
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                        return 206, data[start : end + 1], headers
                    return 200, data, headers
                answer = json.dumps(self.resource(name)).encode()
                if self.race is not None and self.race[0] == name:
                    self.put(*self.race)
                    self.race = None
                return 200, answer, {}
            if path == f"/upload/storage/v1/b/{self.bucket}/o":
                if query.get("uploadType") == "resumable":
                    return 200, b"", {"Location": self.session_location or ""}
                boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
                chunks = request.body.split(b"--" + boundary)
                meta = json.loads(chunks[1].split(b"\r\n\r\n", 1)[1])
                data = chunks[2].split(b"\r\n\r\n", 1)[1][:-2]
                name = meta["name"]
                current = self.objects.get(name, (0, b"", False))[0]
                if want is not None and want != str(current):
                    return 412, b'{"error": {"message": "conditionNotMet"}}', {}
                if meta.get("md5Hash") != base64.b64encode(hashlib.md5(data).digest()).decode():
                    return 400, b'{"error": {"message": "md5 mismatch"}}', {}
                self.put(name, data)
                return 200, json.dumps(self.resource(name)).encode(), {}
        return 404, b"", {}


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    forget()
    fake = _FakeGCS()
    with answering(fake) as url:
        yield fake, url
    forget()


def test_preconditions_make_conditional_writes_atomic(fake_gcs):
    fake, url = fake_gcs
    storage = GCSStorage("bkt", endpoint_url=url, anonymous=True)  # native mode
    first = storage.write_bytes("lease", b"one", create_only=True)  # the probe runs first
    assert storage.conditions_enforced()
    sent = [r for r in fake.requests if "name=" not in r.path and "uploadType" in r.path]
    assert "ifGenerationMatch=0" in sent[-1].path
    with pytest.raises(PreconditionFailed):
        storage.write_bytes("lease", b"two", create_only=True)
    generation = fake.objects["lease"][0]
    second = storage.write_bytes("lease", b"two", if_hash=first)
    assert f"ifGenerationMatch={generation}" in fake.requests[-1].path
    # Someone else writes between our check and our write: GCS refuses, nothing is replaced.
    fake.race = ("lease", b"theirs")
    with pytest.raises(PreconditionFailed, match="someone else"):
        storage.write_bytes("lease", b"three", if_hash=second)
    assert fake.objects["lease"][1] == b"theirs"
    with pytest.raises(PreconditionFailed):
        storage.delete_if_hash_matches("lease", second)
    storage.delete_if_hash_matches("lease", storage.get_hash("lease"))
    assert "lease" not in fake.objects


def test_composite_objects_compare_by_crc32c(fake_gcs, tmp_path):
    fake, url = fake_gcs
    data = blob(3000)
    fake.put("comp.bin", data, composite=True)
    storage = GCSStorage("bkt", endpoint_url=url, anonymous=True)
    crc = hashsync.hash_bytes(data, "crc32c")
    assert storage.get_hash("comp.bin") == f"crc32c:{crc}"
    dest = tmp_path / "dest"
    assert hashsync.sync(storage, dest, progress=False).transferred == ["comp.bin"]
    assert (dest / "comp.bin").read_bytes() == data
    # The file's CRC32C matches: nothing to download again, although no MD5 is known.
    again = hashsync.sync(storage, dest, progress=False)
    assert again.transferred == [] and again.skipped == 1
    (dest / "comp.bin").write_bytes(bytes(3000))
    assert hashsync.sync(storage, dest, progress=False).transferred == ["comp.bin"]
    assert (dest / "comp.bin").read_bytes() == data


def test_a_download_that_does_not_match_the_checksum_is_refused(fake_gcs, tmp_path):
    fake, url = fake_gcs
    fake.put("x.bin", b"good data")
    storage = GCSStorage("bkt", endpoint_url=url, anonymous=True)
    generation, _, _ = fake.objects["x.bin"]
    original = fake.resource

    def lying(name):
        out = original(name)
        out["md5Hash"] = base64.b64encode(hashlib.md5(b"other data").digest()).decode()
        return out

    fake.resource = lying  # type: ignore[method-assign]
    dest = SimpleLocalStorage(tmp_path / "d")
    with pytest.raises(IntegrityError):
        storage.copy("x.bin", dest)
    assert not dest.path("x.bin").exists()
    assert list((tmp_path / "d").rglob("*")) == [] or not (tmp_path / "d").exists()


def test_a_session_on_another_host_gets_no_credentials(fake_gcs, tmp_path):
    fake, url = fake_gcs
    stolen: list[Request] = []

    def thief(request):
        stolen.append(request)
        return 200, b"{}", {}

    with answering(thief) as elsewhere:
        fake.session_location = f"{elsewhere}/upload?upload_id=1"
        storage = GCSStorage("bkt", endpoint_url=url, anonymous=True, part_size=256 * 1024)
        src = TemporaryLocalStorage()
        src.path("big").write_bytes(blob(300 * 1024))
        with pytest.raises(IntegrityError, match="refusing to send credentials"):
            storage.copy_from("big", src)
    assert stolen == []


def test_a_hostile_object_name_is_not_written_outside(fake_gcs, tmp_path):
    # GCS accepts names a filesystem would resolve upwards; a download must refuse them.
    fake, url = fake_gcs
    fake.put("data/ok.txt", b"fine")
    fake.put("data/../../escaped.txt", b"evil")
    fake.put("data/a//b", b"evil")
    dest = tmp_path / "a" / "b" / "dest"
    storage = GCSStorage("bkt", "data", endpoint_url=url, anonymous=True)
    result = hashsync.sync(storage, dest, progress=False)
    assert (dest / "ok.txt").read_bytes() == b"fine"
    assert sorted(k for k, _ in result.failed) == ["../../escaped.txt", "a//b"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ok.txt"]


def test_a_listing_outside_the_prefix_is_refused(fake_gcs):
    fake, url = fake_gcs
    fake.put("p/in", b"1")
    fake.put("q/out", b"2")
    assert [i.key for i in GCSStorage("bkt", "p", endpoint_url=url, anonymous=True).list()] == [
        "in"
    ]

    def ignoring_the_prefix(request):
        if request.method == "GET" and urllib.parse.urlsplit(request.path).path.endswith("/o"):
            items = [fake.resource(n) for n in sorted(fake.objects)]
            return 200, json.dumps({"items": items}).encode(), {}
        return fake(request)

    with answering(ignoring_the_prefix) as other:
        lying = GCSStorage("bkt", "p", endpoint_url=other, anonymous=True)
        # Stripping "p/" from "q/out" would make up a key: the listing is refused whole.
        with pytest.raises(IntegrityError, match="outside the prefix"):
            list(lying.list())


def test_application_default_credentials_are_used_and_refreshed(fake_gcs, tmp_path, monkeypatch):
    fake, url = fake_gcs
    fake.put("k", b"v")
    tokens = itertools.count(1)
    issued: list[str] = []

    def token_server(request):
        token = f"token-{next(tokens)}"
        issued.append(token)
        return (
            200,
            json.dumps({"access_token": token, "expires_in": 3600}).encode(),
            {"Content-Type": "application/json"},
        )

    with answering(token_server) as token_url:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        adc = tmp_path / "service-account.json"
        adc.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "demo-project",
                    "private_key_id": "1",
                    "private_key": pem,
                    "client_email": "sa@demo-project.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"{token_url}/token",
                }
            )
        )
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
        storage = GCSStorage("bkt", endpoint_url=url)
        assert storage.project == "demo-project"
        assert storage.read_bytes("k") == b"v"
        assert issued == ["token-1"]
        assert all(r.headers["Authorization"] == "Bearer token-1" for r in fake.requests)

        # The token is refused once (revoked, expired in flight): refreshed and retried.
        fake.refuse_next = True
        assert storage.get_size("k") == 1
        assert issued == ["token-1", "token-2"]
        assert fake.requests[-1].headers["Authorization"] == "Bearer token-2"


def test_rclone_and_hashsync_agree_on_gcs_content(gcs_emulator, gcs_env, gcs_bucket, tmp_path):
    # Another tool's GCS client on the same objects: rclone reads hashsync's uploads as equal
    # by MD5, and hashsync finds rclone's uploads unchanged (one listing, nothing moved).
    from hashsync.testing import find_rclone

    src = tmp_path / "src"
    _tree(src)
    config = tmp_path / "rclone.conf"
    config.write_text(
        "[gcs]\ntype = google cloud storage\nanonymous = true\n"
        f"endpoint = {gcs_emulator.endpoint_url}\nbucket_policy_only = true\n"
    )

    def rclone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_rclone(), "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    hashsync.sync(src, gcs(gcs_bucket, "by-hashsync"), progress=False)
    checked = rclone("check", str(src), f"gcs:{gcs_bucket}/by-hashsync")
    assert checked.returncode == 0, checked.stderr
    assert "0 differences found" in checked.stderr

    uploaded = rclone("copy", str(src), f"gcs:{gcs_bucket}/by-rclone")
    assert uploaded.returncode == 0, uploaded.stderr
    theirs = gcs(gcs_bucket, "by-rclone")
    again = hashsync.sync(src, theirs, progress=False)
    assert again.transferred == [] and again.skipped == 6
    down = hashsync.sync(theirs, tmp_path / "down", progress=False)
    assert len(down.transferred) == 6 and hashsync.tree_hash(tmp_path / "down") == (
        hashsync.tree_hash(src)
    )


def test_credentials_are_never_sent_over_plain_http_to_another_host(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with pytest.raises(InvalidArgument, match="plain http"):
        GCSStorage("bucket", endpoint_url="http://storage.example.com", credentials=object())
    # Loopback (a test server, a local proxy) and https are fine.
    GCSStorage("bucket", endpoint_url="http://127.0.0.1:1", credentials=object())
    GCSStorage("bucket", endpoint_url="https://storage.example.com", credentials=object())


def test_a_failed_resumable_upload_cancels_its_session(fake_gcs):
    fake, _ = fake_gcs
    deleted: list[Request] = []

    def session(request):
        # A session that fails every chunk, and records its cancellation.
        if request.method == "DELETE":
            deleted.append(request)
            return 499, b"", {}
        return 503, b'{"error": {"message": "backend error"}}', {}

    def route(request):
        if request.path.startswith("/session"):
            return session(request)
        return fake(request)

    with answering(route) as gcs_url:
        fake.session_location = f"{gcs_url}/session?upload_id=1"
        storage = GCSStorage(
            "bkt", endpoint_url=gcs_url, anonymous=True, part_size=256 * 1024, max_attempts=2
        )
        src = TemporaryLocalStorage()
        src.path("big").write_bytes(blob(600 * 1024))
        with pytest.raises(StorageUnavailable):
            storage.copy_from("big", src)
    assert len(deleted) == 1 and deleted[0].path == "/session?upload_id=1"
    assert "big" not in fake.objects


class _Session:
    """A resumable upload session as GCS keeps one; its second chunk fails once half taken."""

    def __init__(self, fake: _FakeGCS, name: str) -> None:
        self.fake, self.name = fake, name
        self.held = bytearray()
        self.chunks = 0
        self.hash_header: str | None = None

    def __call__(self, request: Request):
        span = request.headers["Content-Range"]
        _, _, total = span.rpartition("/")
        if span.startswith("bytes */"):
            pass  # a status query
        else:
            start = int(span.split()[1].split("-")[0])
            assert start == len(self.held), "a chunk must start where the session stands"
            self.chunks += 1
            if self.chunks == 2:
                self.held += request.body[: len(request.body) // 2]
                return 503, b'{"error": {"message": "backend error"}}', {}
            self.held += request.body
        if len(self.held) < int(total):
            return 308, b"", {"Range": f"bytes=0-{len(self.held) - 1}"}
        self.hash_header = request.headers.get("X-Goog-Hash")
        md5 = base64.b64encode(hashlib.md5(self.held).digest()).decode()
        if f"md5={md5}" not in (self.hash_header or ""):
            return 400, b'{"error": {"message": "checksum mismatch"}}', {}
        self.fake.put(self.name, bytes(self.held))
        return 200, json.dumps(self.fake.resource(self.name)).encode(), {}


def test_a_resumable_upload_resumes_where_the_session_stands(fake_gcs, tmp_path):
    fake, _ = fake_gcs
    session = _Session(fake, "big")

    def route(request):
        if request.path.startswith("/session"):
            return session(request)
        return fake(request)

    data = blob(5 * 256 * 1024 + 1000)
    with answering(route) as url:
        fake.session_location = f"{url}/session?upload_id=7"
        storage = GCSStorage(
            "bkt",
            endpoint_url=url,
            anonymous=True,
            part_size=256 * 1024,
            upload_chunk_size=2 * 256 * 1024,
        )
        src = SimpleLocalStorage(tmp_path / "src")
        src.path("big").write_bytes(data)
        seen: list[int] = []
        with reporting_progress(seen.append):
            storage.copy_from("big", src)
        assert fake.objects["big"][1] == data
        assert sum(seen) == len(data)  # each byte reported once, resent or not
        crc = base64.b64encode(bytes.fromhex(hashsync.hash_bytes(data, "crc32c"))).decode()
        assert f"crc32c={crc}" in (session.hash_header or "")
        dest = SimpleLocalStorage(tmp_path / "dest")
        storage.copy("big", dest)
        assert dest.path("big").read_bytes() == data


# -- what an adversarial review reproduced, one test each ------------------------------------


def test_local_path_takes_gs_names_literally(gcs_env, gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "cache-home"))
    storage = gcs(gcs_bucket)
    for name in ("report#1.csv", "a%20b", "q?v=2", "report", "a b", "q"):
        storage.write_bytes(name, name.encode())
    from hashsync.cache import local_path

    for name in ("report#1.csv", "a%20b", "q?v=2"):
        assert local_path(f"gs://{gcs_bucket}/{name}").read_bytes() == name.encode()


class _Token:
    """Credentials as google-auth's look to hashsync: always valid, one token."""

    valid = True
    token = "ya29.SECRET-TOKEN"

    def refresh(self, request) -> None:  # pragma: no cover - never expires
        pass


def test_a_loopback_endpoint_is_never_reached_through_a_proxy(fake_gcs, monkeypatch):
    fake, url = fake_gcs
    fake.put("k", b"v")
    proxied: list[Request] = []

    def proxy(request):
        proxied.append(request)
        return 502, b"", {}

    with answering(proxy) as proxy_url:
        monkeypatch.setenv("http_proxy", proxy_url)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        storage = GCSStorage("bkt", endpoint_url=url, credentials=_Token())
        assert storage.read_bytes("k") == b"v"
    assert proxied == []
    assert fake.requests[-1].headers["Authorization"] == "Bearer ya29.SECRET-TOKEN"


def _scripted_upload(fake, tmp_path, answer, *, size=4 * 256 * 1024, **options):
    """Upload ``size`` bytes in 256 KiB chunks through a session that ``answer`` plays."""

    def route(request):
        if request.path.startswith("/session"):
            return answer(request)
        return fake(request)

    data = blob(size)
    with answering(route) as url:
        fake.session_location = f"{url}/session?upload_id=1"
        storage = GCSStorage(
            "bkt",
            endpoint_url=url,
            anonymous=True,
            part_size=256 * 1024,
            upload_chunk_size=256 * 1024,
            **options,
        )
        src = SimpleLocalStorage(tmp_path / "src")
        src.path("big").write_bytes(data)
        storage.copy_from("big", src)
    return data


def _span(request) -> tuple[int, int, int]:
    span = request.headers["Content-Range"]  # bytes START-END/TOTAL
    first, _, total = span.split()[1].partition("/")
    start, _, end = first.partition("-")
    return int(start), int(end), int(total)


def test_a_session_claiming_bytes_never_sent_is_refused(fake_gcs, tmp_path):
    fake, _ = fake_gcs

    def overclaiming(request):
        if request.method == "DELETE":
            return 499, b"", {}
        start, end, total = _span(request)
        return 308, b"", {"Range": f"bytes=0-{end + 256 * 1024}"}  # one chunk more than sent

    with pytest.raises(IntegrityError, match="holds"):
        _scripted_upload(fake, tmp_path, overclaiming)
    assert "big" not in fake.objects


def test_a_session_that_stops_taking_data_gives_up(fake_gcs, tmp_path):
    fake, _ = fake_gcs
    puts = []

    def stuck(request):
        if request.method == "DELETE":
            return 499, b"", {}
        puts.append(request)
        return 308, b"", {}  # holds nothing, forever

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="stopped taking data"):
        _scripted_upload(fake, tmp_path, stuck, max_attempts=3)
    assert len(puts) <= 3 and time.monotonic() - started < 10


def test_transient_failures_that_make_progress_do_not_add_up(fake_gcs, tmp_path):
    fake, _ = fake_gcs
    held = bytearray()
    state = {"n": 0}

    def flaky(request):
        span = request.headers["Content-Range"]
        if span.startswith("bytes */"):
            if "big" in fake.objects:  # complete: the status query answers with the object
                return 200, json.dumps(fake.resource("big")).encode(), {}
            return 308, b"", {"Range": f"bytes=0-{len(held) - 1}"} if held else {}
        state["n"] += 1
        start, _, total = _span(request)
        assert start == len(held)
        held.extend(request.body)
        if len(held) == total:
            fake.put("big", bytes(held))
        if state["n"] % 2 == 0:
            return 503, b"", {}  # taken, but the answer is lost
        if len(held) < total:
            return 308, b"", {"Range": f"bytes=0-{len(held) - 1}"}
        return 200, json.dumps(fake.resource("big")).encode(), {}

    data = _scripted_upload(fake, tmp_path, flaky, size=8 * 256 * 1024, max_attempts=2)
    assert fake.objects["big"][1] == data


def test_downloads_ask_for_the_bytes_as_stored(fake_gcs, tmp_path):
    # An object stored gzip-encoded (gsutil cp -z) is otherwise decompressed by GCS on the
    # fly, with Range ignored, and matches no checksum.
    fake, url = fake_gcs
    fake.put("x.gz", blob(5000))
    GCSStorage("bkt", endpoint_url=url, anonymous=True).copy(
        "x.gz", SimpleLocalStorage(tmp_path / "d")
    )
    media = [r for r in fake.requests if "alt=media" in r.path]
    assert media and all(r.headers["Accept-Encoding"] == "gzip" for r in media)


def test_a_checksum_the_store_refuses_is_an_integrity_error(fake_gcs, tmp_path):
    fake, url = fake_gcs

    def refusing(request):
        if "uploadType=multipart" in request.path:
            return 400, b'{"error": {"message": "Provided MD5 hash doesn\'t match"}}', {}
        return fake(request)

    with answering(refusing) as other:
        src = SimpleLocalStorage(tmp_path / "src")
        src.path("k").write_bytes(b"data")
        storage = GCSStorage("bkt", endpoint_url=other, anonymous=True)
        with pytest.raises(IntegrityError, match="MD5"):
            storage.copy_from("k", src)
        with pytest.raises(InvalidArgument, match="1,024 bytes"):
            storage.get_size("x" * 2000)  # GCS's limit, said before any request
        with pytest.raises(InvalidArgument, match="no CR or LF"):
            storage.get_size("a\nb")

    def bad_request(request):
        return 400, b'{"error": {"message": "Invalid argument."}}', {}

    with answering(bad_request) as other:
        with pytest.raises(InvalidArgument, match="Invalid argument"):
            GCSStorage("bkt", endpoint_url=other, anonymous=True).get_size("k")


def test_listings_stream_and_counting_stops_early(fake_gcs):
    fake, url = fake_gcs
    for i in range(2500):
        fake.put(f"d/{i:05d}", b"")
    fake.page_size = 1000
    storage = GCSStorage("bkt", endpoint_url=url, anonymous=True)
    before = len(fake.requests)
    assert storage.count_keys("d/", 200) == 200
    assert len(fake.requests) - before == 1
    assert [i.key for i in storage.list("d/")] == [f"d/{i:05d}" for i in range(2500)]
    assert len(fake.requests) - before == 4
