"""hashsync's own SigV4 signer (Rust), its transport, and the settings that let S3 commands
start without botocore.

The signer is compared byte for byte with botocore's ``S3SigV4Auth`` on generated requests;
the lean path is then used for real against SeaweedFS (the S3 contract suite runs through it).
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse

import pytest
from http_helpers import Answer, Request, answering
from hypothesis import given, settings
from hypothesis import strategies as st

from hashsync import _native
from hashsync.errors import StorageUnavailable
from hashsync.storage import _s3_settings, _s3list
from hashsync.storage.s3 import S3Storage

NOW = datetime.datetime(2026, 12, 5, 6, 30, 15, tzinfo=datetime.UTC)
CREDS = _s3_settings.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")

key_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
)


def sign(method, url, headers, body, creds, region, *, now):
    """The Rust signer, called as the old Python one was."""
    payload = hashlib.sha256(body or b"").hexdigest()
    signed = _native.sigv4_sign(
        method, url, list(headers.items()), payload, now.strftime("%Y%m%dT%H%M%SZ"),
        tuple(creds), region,
    )  # fmt: skip
    return dict(signed)


def botocore_headers(method, url, headers, body, creds, region, monkeypatch):
    from botocore import auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setattr(auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    auth.S3SigV4Auth(Credentials(*creds), "s3", region).add_auth(request)
    return {k: v for k, v in request.headers.items()}


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "HEAD", "DELETE", "POST"]),
    scheme=st.sampled_from(["http", "https"]),
    port=st.sampled_from([None, 80, 443, 8333]),
    key=key_text,
    query=st.dictionaries(st.sampled_from(["prefix", "list-type", "delimiter", "x y"]), key_text),
    body=st.one_of(st.none(), st.binary(max_size=64)),
    extra=st.dictionaries(
        st.sampled_from(["Range", "Content-MD5", "If-None-Match", "x-amz-meta-hash", "User-Agent"]),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).map(
            lambda v: f"  {v}  with  spaces "
        ),
    ),
    token=st.one_of(st.none(), st.just("FwoGZXIvYXdzEXAMPLE//token+=")),
    region=st.sampled_from(["us-east-1", "eu-central-1"]),
)
def test_signature_equals_botocores(
    method, scheme, port, key, query, body, extra, token, region, monkeypatch_session
):
    host = "127.0.0.1" if port is None else f"127.0.0.1:{port}"
    path = "/bucket/" + urllib.parse.quote(key, safe="/~")
    q = urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
    url = f"{scheme}://{host}{path}" + (f"?{q}" if q else "")
    creds = _s3_settings.Credentials(CREDS.access_key, CREDS.secret_key, token)
    ours = sign(method, url, extra, body, creds, region, now=NOW)
    theirs = botocore_headers(method, url, extra, body, creds, region, monkeypatch_session)
    assert ours == theirs


@pytest.fixture(scope="module")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_aws_published_example_signature():
    # AWS's GetObject example ("Example: GET Object", SigV4 header-based authentication).
    headers = {"Range": "bytes=0-9"}
    url = "https://examplebucket.s3.amazonaws.com/test.txt"
    when = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC)
    creds = _s3_settings.Credentials(
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )
    signed = sign("GET", url, headers, None, creds, "us-east-1", now=when)
    assert signed["Authorization"].endswith(
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


# -- when the lean settings apply -----------------------------------------------------------

NONE_SET = {
    "endpoint_url": None,
    "region_name": None,
    "profile_name": None,
    "anonymous": False,
    "aws_access_key_id": None,
    "aws_secret_access_key": None,
    "aws_session_token": None,
    "addressing_style": None,
}
AWS_VARS = [
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CA_BUNDLE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
    return monkeypatch


def static(**kw):
    return _s3_settings.static_settings(**{**NONE_SET, **kw})


def test_environment_alone_decides(clean_env):
    got = static()
    assert got == _s3_settings.StaticSettings(
        "http://127.0.0.1:9", "us-east-1", _s3_settings.Credentials("ak", "sk", None), None
    )
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://store:8333")
    clean_env.setenv("AWS_SESSION_TOKEN", "tok")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    clean_env.setenv("AWS_CA_BUNDLE", "/etc/ca.pem")
    assert static() == _s3_settings.StaticSettings(
        "http://store:8333", "eu-west-3", _s3_settings.Credentials("ak", "sk", "tok"), "/etc/ca.pem"
    )
    # Arguments win over the environment, as in botocore.
    got = static(
        endpoint_url="https://other:1",
        region_name="ap-south-1",
        aws_access_key_id="k2",
        aws_secret_access_key="s2",
    )
    assert got == _s3_settings.StaticSettings(
        "https://other:1", "ap-south-1", _s3_settings.Credentials("k2", "s2", None), "/etc/ca.pem"
    )
    assert static(anonymous=True).credentials is None


@pytest.mark.parametrize(
    "change",
    [
        {"env": {"AWS_PROFILE": "work"}},
        {"kw": {"profile_name": "work"}},
        {"kw": {"addressing_style": "virtual"}},
        {"env": {"AWS_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com"}},
        {"env": {"AWS_ENDPOINT_URL": "ftp://127.0.0.1"}},
        {"env": {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}},
        {"unset": ["AWS_ENDPOINT_URL"]},
        {"unset": ["AWS_SECRET_ACCESS_KEY"]},
        {"kw": {"aws_access_key_id": "only-the-key"}},
        {"config": "[default]\nendpoint_url = http://elsewhere:1\n"},
        {"config": "[default]\ns3 =\n  addressing_style = virtual\n"},
        {"config": "not an ini file ["},
    ],
)
def test_anything_unusual_leaves_it_to_botocore(clean_env, tmp_path, change):
    for name, value in change.get("env", {}).items():
        clean_env.setenv(name, value)
    for name in change.get("unset", []):
        clean_env.delenv(name)
    if "config" in change:
        (tmp_path / "config").write_text(change["config"])
    assert static(**change.get("kw", {})) is None


def test_the_proxy_is_chosen_as_botocore_chooses_it(clean_env):
    from hashsync.storage._s3list import proxy_for

    assert proxy_for("http://store:8333") is None
    clean_env.setenv("HTTP_PROXY", "http://proxy:3128")
    assert proxy_for("http://store:8333") == "http://proxy:3128"
    assert proxy_for("https://store:8333") is None  # HTTP_PROXY is for http only
    clean_env.setenv("https_proxy", "proxy2:3129")
    assert proxy_for("https://store") == "http://proxy2:3129"
    clean_env.setenv("NO_PROXY", "localhost,.example.com,127.0.0.1")
    assert proxy_for("http://127.0.0.1:9") is None
    assert proxy_for("http://s3.store.example.com:8333") is None
    assert proxy_for("http://badexample.com") == "http://proxy:3128"
    clean_env.delenv("HTTP_PROXY")
    clean_env.setenv("ALL_PROXY", "socks5://proxy:1080")
    assert proxy_for("http://other") == "socks5://proxy:1080"
    # Settings stay static with a proxy: the transport goes through it.
    assert static() is not None


def test_config_region(clean_env, tmp_path):
    (tmp_path / "config").write_text("[default]\nregion = sa-east-1\noutput = json\n")
    assert static().region == "sa-east-1"
    (tmp_path / "config").write_text("[profile other]\nendpoint_url = http://x\n")
    assert static().region == "us-east-1"


def test_botocore_is_not_loaded_when_the_environment_decides(clean_env, s3_server, bucket):
    storage = S3Storage(
        bucket,
        "lazy",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    assert storage._client is None
    storage.write_bytes("a.txt", b"one")
    assert [o.key for o in storage.list()] == ["a.txt"]
    assert storage.location() == (("s3", s3_server.endpoint_url, bucket), "lazy/")
    assert storage.delete_many(["a.txt"]) == [None]
    assert list(storage.list()) == []
    assert storage._client is None  # never needed


def test_wrong_secret_on_the_lean_path_is_permission_denied(clean_env, s3_server, bucket):
    from hashsync.errors import PermissionDenied

    storage = S3Storage(
        bucket,
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong",
        max_attempts=1,
    )
    with pytest.raises(PermissionDenied):
        list(storage.list())


def test_noop_sync_never_imports_botocore(tmp_path, s3_server, bucket):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(20):
        (tree / "d" / f"f{i}.txt").write_text(f"file {i}\n")
    env = {**os.environ, **s3_server.env()}
    env.pop("AWS_PROFILE", None)
    url = f"s3://{bucket}/noimport"
    first = subprocess.run(
        [sys.executable, "-m", "hashsync", "sync", str(tree), url, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr
    probe = (
        "import sys\n"
        "from hashsync.cli import main\n"
        f"sys.argv = ['hashsync', 'sync', {str(tree)!r}, {url!r}, '--json']\n"
        "code = main()\n"
        "print('BOTO', sorted(m for m in sys.modules if m.startswith(('boto', 'urllib3'))))\n"
        "sys.exit(code)\n"
    )
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    *document, last = again.stdout.splitlines()
    result = json.loads("\n".join(document))
    assert result["skipped"] == 20 and result["transferred"] == []
    assert last == "BOTO []"


class _OneRequestPerConnection(http.server.BaseHTTPRequestHandler):
    """Answers keep-alive style, then hangs up: what a server's idle timeout looks like."""

    protocol_version = "HTTP/1.1"
    connections = 0

    def do_GET(self):
        type(self).connections += 1
        body = b"<x/>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_connection_the_server_closed_is_replaced():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneRequestPerConnection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = _s3list.RawClient(
            f"http://127.0.0.1:{server.server_port}", "us-east-1", None, "b", timeout=5.0
        )
        for _ in range(3):
            assert raw._page_bytes("", None, None) == b"<x/>"
        assert _OneRequestPerConnection.connections == 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_down_is_storage_unavailable_after_retries(monkeypatch):
    monkeypatch.setattr(_s3list, "wait_before_retry", lambda n: None)
    raw = _s3list.RawClient(
        "http://127.0.0.1:9", "us-east-1", None, "b", timeout=2.0, max_attempts=3
    )
    with pytest.raises(_s3list.ErrorAnswer, match="127.0.0.1:9") as info:
        raw._page_bytes("", None, None)
    assert info.value.status is None
    storage = S3Storage("b", endpoint_url="http://127.0.0.1:9", max_attempts=2,
                        aws_access_key_id="ak", aws_secret_access_key="sk")  # fmt: skip
    with pytest.raises(StorageUnavailable, match="unreachable after 2 attempts"):
        storage.get_size("k")


def test_the_transport_raises_builtin_errors_and_never_shows_the_query():
    t = _native.S3Transport(timeout=2.0)
    with pytest.raises(ConnectionRefusedError) as info:
        t.request("GET", "http://127.0.0.1:9/b?X-Amz-Signature=secret", [])
    assert "secret" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        _native.S3Transport(timeout=2.0, ca_bundle="/nonexistent/ca.pem")


def test_a_ca_bundle_without_certificates_is_refused(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(OSError, match="no certificates"):
        _native.S3Transport(timeout=2.0, ca_bundle=bundle)


@pytest.mark.parametrize(("failures", "attempts", "ok"), [(2, 3, True), (2, 2, False)])
def test_throttling_is_retried_then_reported(monkeypatch, failures, attempts, ok):
    monkeypatch.setattr(_s3list, "wait_before_retry", lambda n: None)
    seen = []

    def flaky(_request: Request) -> Answer:
        # 503 SlowDown to the first ``failures`` requests, then an empty listing.
        seen.append(1)
        if len(seen) <= failures:
            return (
                503,
                b"<Error><Code>SlowDown</Code><Message>Please &amp; slow</Message></Error>",
                {},
            )
        return 200, b"<x/>", {}

    with answering(flaky) as url:
        raw = _s3list.RawClient(url, "us-east-1", None, "b", timeout=5.0, max_attempts=attempts)
        if ok:
            assert raw._page_bytes("", None, None) == b"<x/>"
        else:
            with pytest.raises(_s3list.ErrorAnswer) as info:
                raw._page_bytes("", None, None)
            assert (info.value.status, info.value.code) == (503, "SlowDown")
            assert info.value.message == "Please & slow"
        assert len(seen) == min(failures + 1, attempts)


def test_errors_and_big_downloads_never_import_botocore(tmp_path, s3_server, bucket):
    # A missing key, a wrong bucket and a multipart-sized download are answered and mapped by
    # the Rust transport path alone.
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (12 * 2**20 // 256))
    s3_server.client().upload_file(str(big), bucket, "p/big")  # multipart, by s3transfer
    env = {**os.environ, **s3_server.env()}
    env.pop("AWS_PROFILE", None)
    probe = f"""
import sys
from hashsync import errors
from hashsync.storage import S3Storage, SimpleLocalStorage
s = S3Storage({bucket!r}, "p", part_size=5 * 2**20)
try:
    s.get_size("missing")
except errors.NotFound as exc:
    print("missing:", exc)
try:
    list(S3Storage("no-such-bucket-here").list())
except errors.NotFound as exc:
    print("bucket:", exc)
dst = SimpleLocalStorage({str(tmp_path / "dst")!r})
s.copy("big", dst)
print("BOTO", sorted(m for m in sys.modules if m.startswith(("boto", "urllib3"))))
"""
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("missing:") and "'missing'" in lines[0]
    assert lines[1].startswith("bucket:") and "does not exist" in lines[1]
    assert lines[2] == "BOTO []"
    assert (tmp_path / "dst" / "big").read_bytes() == big.read_bytes()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_the_parents_pooled_connections(s3_server, bucket):
    storage = S3Storage(
        bucket,
        "fork",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    storage.write_bytes("k", b"parent")
    raw = storage._raw_client()
    assert raw is not None
    parents = raw.http
    pid = os.fork()
    if pid == 0:  # the child: only os._exit, never pytest's teardown
        code = 1
        try:
            ok = raw.http is not parents and storage.read_bytes("k") == b"parent"
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert storage.read_bytes("k") == b"parent"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw.http is parents
