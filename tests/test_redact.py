"""Secrets in URLs are never echoed; HTTPStorage takes credentials and tokens in its URL."""

from __future__ import annotations

import base64
import errno
import os
import socket
import subprocess
import sys
import urllib.parse

import pytest

import hashsync
from hashsync import sync
from hashsync._redact import redact, redact_url
from hashsync.errors import (
    HashsyncError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    describe,
)
from hashsync.storage import HTTPStorage, open_storage
from storage_helpers import PART, serve_directory

# -- redact_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@host/x", "http://user:***@host/x"),
        ("https://ak:s3cr%2Ft@h:9000/b/", "https://ak:***@h:9000/b/"),
        # An unencoded "/" (AWS secret keys have them) must not end the password early.
        ("http://AKIA:abc/def+ghi@127.0.0.1:9000", "http://AKIA:***@127.0.0.1:9000"),
        ("http://u:p@ss@host/", "http://u:***@host/"),
        ("http://u:p#w@host/x", "http://u:***@host/x"),
        # A userinfo without a password is usually a token.
        ("https://ghp_0123456789abcdef@github.com/o/r", "https://***@github.com/o/r"),
        ("http://user:@host/", "http://user:@host/"),
        ("HTTP://U:PW@[::1]:8080/x", "HTTP://U:***@[::1]:8080/x"),
    ],
)
def test_redact_url_userinfo(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "name",
    [
        "X-Amz-Signature",
        "x-amz-signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "Signature",
        "AWSAccessKeyId",
        "sig",
        "token",
        "TOKEN",
        "access_token",
        "key",
        "password",
        "secret",
        "api_key",
        "apikey",
        "client_secret",
        "X-Goog-Signature",
        "refresh_token",
        "x-api-key",
    ],
)
def test_redact_url_sensitive_query_parameters(name):
    url = f"https://host/p/file.bin?a=1&{name}=VALUE42&z=2"
    assert redact_url(url) == f"https://host/p/file.bin?a=1&{name}=***&z=2"


def test_redact_url_presigned_s3_urls():
    v4 = (
        "https://bucket.s3.us-east-1.amazonaws.com/data/k.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEJr%2F%2F%2F"
        "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    shown = redact_url(v4)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "FwoGZXIvYXdzEJr", "0123456789abcdef"):
        assert secret not in shown
    assert shown == (
        "https://bucket.s3.us-east-1.amazonaws.com/data/k.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )
    v2 = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAX&Expires=1700000000&Signature=a%2Bb%3D"
    assert redact_url(v2) == (
        "https://b.s3.amazonaws.com/k?AWSAccessKeyId=***&Expires=1700000000&Signature=***"
    )


def test_redact_url_fragment_and_relative_urls():
    assert redact_url("https://app/cb#access_token=abc&state=1") == (
        "https://app/cb#access_token=***&state=1"
    )
    assert redact_url("/x?X-Amz-Signature=abc") == "/x?X-Amz-Signature=***"
    assert redact_url("https://h/?Signature=x;AWSAccessKeyId=y") == (
        "https://h/?Signature=***;AWSAccessKeyId=***"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/data/",
        "http://127.0.0.1:9000/bucket/a%20b?list-type=2&prefix=p%2F&encoding-type=url",
        "http://host:8080/users/@me/file",
        "https://host/p?email=a@b.com&page=2",
        "http://[::1]:8080/x?a=1#frag",
        "s3://bucket/some/prefix",
        "file:///tmp/x%20y",
        "https://host/search?q=token&monkey=1&key=",
        "https://h/?C=N;O=D",
        "not a url at all",
        "",
    ],
)
def test_urls_without_secrets_are_untouched(url):
    assert redact_url(url) == url
    assert redact(url) == url


# -- redact (free text) ----------------------------------------------------------------


def test_redact_text_with_several_urls():
    text = (
        "GET http://u:pw1@h/x?token=t1: HTTPStorage('http://u:pw1@h/x/?token=t1') unreachable "
        '(see https://docs.example.com/help). Endpoint "http://ak:pw2@127.0.0.1:1/b?list-type=2"'
        ", then <https://b.s3.amazonaws.com/k?X-Amz-Signature=sig3>."
    )
    assert redact(text) == (
        "GET http://u:***@h/x?token=***: HTTPStorage('http://u:***@h/x/?token=***') unreachable "
        '(see https://docs.example.com/help). Endpoint "http://ak:***@127.0.0.1:1/b?list-type=2"'
        ", then <https://b.s3.amazonaws.com/k?X-Amz-Signature=***>."
    )


def test_redact_text_query_without_a_full_url():
    # urllib3: "Max retries exceeded with url: /x?X-Amz-Signature=... (Caused by ...)"
    text = "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /x?a=1&sig=s3cr3t"
    assert redact(text) == (
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /x?a=1&sig=***"
    )


def test_redact_text_authorization_headers():
    assert redact("{'Authorization': 'Basic dXNlcjpwdw=='}") == "{'Authorization': 'Basic ***'}"
    assert redact("authorization: Bearer abc.def") == "authorization: Bearer ***"


def test_redact_is_idempotent():
    text = "GET http://u:pw@h/x?token=t&X-Amz-Signature=s"
    once = redact(text)
    assert redact(once) == once == "GET http://u:***@h/x?token=***&X-Amz-Signature=***"


def test_describe_redacts():
    assert describe(StorageUnavailable(errno.EIO, "GET http://u:pw@h/x?token=t: down")) == (
        "GET http://u:***@h/x?token=***: down"
    )
    assert describe(NotFound(errno.ENOENT, "gone", "http://u:pw@h/f")) == "http://u:***@h/f: gone"
    assert describe(HashsyncError("see https://h/k?Signature=s")) == "see https://h/k?Signature=***"
    assert describe(ValueError()) == "ValueError"


# -- HTTPStorage with credentials and a token ------------------------------------------

USER = "us er"
PASSWORD = "pw:/@ é"  # percent-encoded in the URL; sent decoded
TOKEN = "t0ken"
FILES = {
    "a.txt": b"alpha",
    "dir/b.bin": b"b" * 1000,
    "dir/sub/c d#e?.txt": b"odd name",
}


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def guarded(tmp_path):
    """A server that wants Basic auth and ``?token=``, serving FILES under /base."""
    root = tmp_path / "www"
    for key, data in FILES.items():
        (root / "base" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "base" / key).write_bytes(data)
    with serve_directory(root) as server:
        server.basic_auth = (USER, PASSWORD)
        server.required_query = {"token": TOKEN}
        yield server


def _url(server, password: str = PASSWORD, token: str = TOKEN) -> str:
    port = server.server_address[1]
    return f"http://{_quote(USER)}:{_quote(password)}@127.0.0.1:{port}/base?token={token}"


def test_http_url_joins_keys_before_the_query():
    storage = HTTPStorage("http://u:p@host/base?token=abc")
    assert storage.url("a/b.txt") == "http://host/base/a/b.txt?token=abc"
    assert storage.url("a b/c#d?e%.txt") == "http://host/base/a%20b/c%23d%3Fe%25.txt?token=abc"
    assert storage.base_url == "http://host/base/" and storage.query == "token=abc"
    assert HTTPStorage("https://host").url("k") == "https://host/k"
    assert HTTPStorage("https://host/d/?x=1&y=2#frag").url("k") == "https://host/d/k?x=1&y=2"


def test_http_repr_hides_credentials_and_token():
    storage = HTTPStorage("http://user:hunter2@host:81/base?token=abc&page=1")
    assert repr(storage) == "HTTPStorage('http://user:***@host:81/base/?token=***&page=1')"
    assert "hunter2" not in str(vars(storage))


def test_http_storages_with_credentials_are_not_pickled():
    import pickle

    for storage in (
        HTTPStorage("http://user:hunter2@host/base"),
        HTTPStorage("http://host/base", headers={"Authorization": "Bearer hunter2"}),
    ):
        with pytest.raises(TypeError, match="credentials"):
            pickle.dumps(storage)
    plain = pickle.loads(pickle.dumps(HTTPStorage("http://host/base/")))
    assert plain.url("k") == "http://host/base/k"


def test_http_credentials_and_token_list_read_copy(guarded, dest):
    storage = HTTPStorage(_url(guarded), verify=True, timeout=5, max_attempts=2)
    listed = {info.key: info for info in storage.list()}
    assert set(listed) == set(FILES)
    assert {k: i.size for k, i in listed.items()} == {k: len(v) for k, v in FILES.items()}
    assert set(storage.list("dir/s")) == {listed["dir/sub/c d#e?.txt"]}
    for key, data in FILES.items():
        assert storage.exists(key)
        assert storage.get_size(key) == len(data)
        assert storage.get_hash(key) == hashsync.hash_bytes(data, "md5")
        assert storage.get_last_modified(key).tzinfo is not None
        storage.copy(key, dest)
        assert dest.path(key).read_bytes() == data
    assert not storage.exists("missing.txt")
    with pytest.raises(NotFound):
        storage.get_size("missing.txt")
    # Every request carried the token after the key and the credentials as Basic auth,
    # never in the URL.
    assert guarded.requests
    for method, path, authorization in guarded.requests:
        assert path.endswith(f"?token={TOKEN}"), (method, path)
        assert authorization == _basic(USER, PASSWORD)
        assert "us%20er" not in path and "pw" not in path
    assert ("GET", "/base/dir/sub/c%20d%23e%3F.txt?token=t0ken", _basic(USER, PASSWORD)) in (
        guarded.requests
    )


def test_http_resume_keeps_the_token_on_range_requests(guarded, dest):
    data = os.urandom(2 * PART + 123)
    (guarded.root / "base" / "big.bin").write_bytes(data)
    guarded.drop_after = 3 * 1024 * 1024
    HTTPStorage(_url(guarded), verify=True).copy("big.bin", dest)
    assert dest.path("big.bin").read_bytes() == data
    assert guarded.range_requests == [f"bytes={3 * 1024 * 1024}-"]
    gets = [path for method, path, _ in guarded.requests if method == "GET"]
    assert gets == ["/base/big.bin?token=t0ken"] * 2


def test_http_open_storage_and_sync_with_credentials(guarded, tmp_path):
    storage = open_storage(_url(guarded))
    assert isinstance(storage, HTTPStorage)
    assert sorted(info.key for info in storage.list()) == sorted(FILES)
    result = sync(_url(guarded), tmp_path / "out")
    assert result.ok and sorted(result.transferred) == sorted(FILES)
    for key, data in FILES.items():
        assert (tmp_path / "out" / key).read_bytes() == data


@pytest.mark.parametrize(("password", "token"), [("wrong-pass", TOKEN), (PASSWORD, "wrong-token")])
def test_http_refused_credentials_are_permission_denied_without_secrets(
    guarded, dest, password, token
):
    storage = HTTPStorage(_url(guarded, password, token), max_attempts=1)
    for call in (
        lambda: storage.get_size("a.txt"),
        lambda: storage.copy("a.txt", dest),
        lambda: list(storage.list()),
    ):
        with pytest.raises(PermissionDenied) as info:
            call()
        for text in (str(info.value), repr(info.value), describe(info.value)):
            assert password not in text and _quote(password) not in text
            assert token not in text
    assert not dest.path("a.txt").exists()


def test_http_unreachable_with_secrets_is_redacted(dest):
    storage = HTTPStorage("http://user:secret@127.0.0.1:1/x?X-Amz-Signature=abc", max_attempts=1)
    for call in (
        lambda: storage.get_hash("k"),
        lambda: storage.copy("k", dest),
        lambda: list(storage.list()),
    ):
        with pytest.raises(StorageUnavailable) as info:
            call()
        for text in (describe(info.value), str(info.value), repr(info.value)):
            assert "secret" not in text and "abc" not in text
            assert "127.0.0.1:1" in text


def test_http_redirect_to_another_origin_drops_the_credentials(guarded, tmp_path, dest):
    with serve_directory(tmp_path / "www") as front:
        front.redirect_to = guarded.url
        guarded.basic_auth = None  # the other origin would refuse the copy otherwise
        storage = HTTPStorage(_url(front), max_attempts=1)
        storage.copy("a.txt", dest)
    assert dest.path("a.txt").read_bytes() == FILES["a.txt"]
    assert front.requests[0][2] == _basic(USER, PASSWORD)
    assert [auth for _, _, auth in guarded.requests] == [None]


def test_http_bad_urls_are_reported_without_secrets():
    with pytest.raises(InvalidArgument) as info:
        HTTPStorage("http://u:secret@host:notaport/x")
    assert "secret" not in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        HTTPStorage("ftp://u:secret@host/x?token=abc")
    assert "secret" not in str(info.value) and "abc" not in str(info.value)
    with pytest.raises(InvalidArgument, match="Authorization"):
        HTTPStorage("http://u:secret@host/", headers={"authorization": "Bearer x"})
    with pytest.raises(InvalidArgument) as info:
        open_storage("gopher://u:secret@host/x?token=abc")
    assert "secret" not in describe(info.value) and "abc" not in describe(info.value)


# -- CLI -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("json_flag", [["--json"], []])
def test_cli_sync_does_not_echo_secrets(tmp_path, json_flag):
    url = "http://u:hunter2@127.0.0.1:1/x?X-Amz-Signature=deadbeef"
    env = {**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "hashsync", "sync", url, str(tmp_path / "dl"), *json_flag],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "127.0.0.1:1" in output
    assert "hunter2" not in output and "deadbeef" not in output
    assert "Traceback" not in output


def test_cli_endpoint_url_credentials_are_not_echoed(tmp_path):
    env = {
        **os.environ,
        "HASHSYNC_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "not-used",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    endpoint = f"http://ak:hunter2@127.0.0.1:{_free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "hashsync", "sync", "s3://b/p", str(tmp_path / "dl")]
        + ["--json", "--endpoint-url", endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hunter2" not in output
    assert "Traceback" not in output


def test_cli_usage_error_does_not_echo_secrets(tmp_path):
    url = "http://u:hunter2@127.0.0.1:1/x?X-Amz-Signature=deadbeef"
    proc = subprocess.run(
        [sys.executable, "-m", "hashsync", "sync", "a", "b", url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "unrecognized arguments" in output
    assert "hunter2" not in output and "deadbeef" not in output
