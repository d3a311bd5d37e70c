"""A hostile review of issue 24's hardening: each test is an attack that once worked.

Traffic goes only to 127.0.0.1; loops are bounded; another user is played with ``setpriv``
as in ``test_cache_trust.py``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import urllib.parse

import pytest
from test_hub_client_hostile import GOOD, GOOD_ENTRY, answer, hostile, manifest_of

import hashsync
from hashsync import errors
from hashsync.hub import DatasetHubClient
from hashsync.hub.storage import HubStorage
from hub_helpers import KEY, running_hub
from sync_helpers import write_tree

# -- the client against a hostile hub ----------------------------------------------------


@pytest.mark.parametrize("form", ["absolute", "scheme-relative"])
def test_a_redirect_with_a_backslash_in_its_authority_is_not_followed_elsewhere(tmp_path, form):
    # Python's urlsplit reads "http://A\@B/" as host B, urllib3 (which sends the request)
    # as host A: the origin check and the connection disagreed, and the key went to A.
    with hostile({"/": manifest_of([GOOD_ENTRY])}) as elsewhere:
        with hostile({}) as hub:
            inner = f"127.0.0.1:{elsewhere.server_port}\\@127.0.0.1:{hub.server_port}/manifest/ds"
            location = ("http://" if form == "absolute" else "//") + inner
            hub.routes["/manifest/"] = answer(b"", headers={"Location": location}, status=302)
            client = DatasetHubClient(hub.url, KEY, None)
            with pytest.raises(errors.HashsyncError):
                client.get_manifest("ds")
        assert elsewhere.seen == []  # neither the request nor the key went there


def _short_body(h: http.server.BaseHTTPRequestHandler) -> None:
    # Announces 1,000 bytes, sends 3 and hangs up.
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(b"[{}")
    h.wfile.flush()
    h.close_connection = True


@pytest.mark.parametrize("route", ["/manifest/", "/file/", "/datasets"])
def test_a_body_cut_short_of_its_content_length_is_a_hashsync_error(tmp_path, route):
    # urllib3's IncompleteRead (a ProtocolError) escaped as is: no HashsyncError, a traceback
    # from deep inside urllib3 for the CLI.
    routes = {"/manifest/": manifest_of([{**GOOD_ENTRY, "size": 1000}]), route: _short_body}
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.HashsyncError):
            if route == "/datasets":
                client.list_datasets()
            elif route == "/manifest/":
                client.get_manifest("ds")
            else:
                client.get_file_bytes("ds", "f.bin")


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000])
def test_an_unreadable_count_that_is_no_number_does_not_crash_the_client(tmp_path, value):
    # str.isdigit() is true for "²" and for 5,000 nines, int() refuses both: a ValueError.
    headers = {"X-Hashsync-Unreadable": value, "ETag": '"m1"'}
    body = json.dumps([GOOD_ENTRY]).encode()
    with hostile({"/manifest/": answer(body, headers=headers)}) as hub:
        client = DatasetHubClient(hub.url, KEY, None)
        try:
            entries = client.get_manifest("ds")
        except errors.HashsyncError:
            return
        assert [e["path"] for e in entries] == ["f.bin"]


def test_a_304_to_a_client_that_holds_no_manifest_is_not_an_empty_dataset(tmp_path):
    # The client asked without If-None-Match; the hub said "unchanged": an empty body was
    # read as "[]", kept on disk, and a sync from it would delete everything.
    with hostile({"/manifest/": answer(b"", headers={"ETag": '"m1"'}, status=304)}) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.IntegrityError):
            client.get_manifest("ds")
    assert not (tmp_path / "cache" / ".manifests" / "ds.json").exists()


def test_a_deeply_nested_bundle_header_is_an_integrity_error(tmp_path):
    entries = [{"path": f"f{i}.bin", "size": 3, "hash": GOOD_ENTRY["hash"]} for i in range(2)]
    body = b"[" * 30_000 + b"]" * 30_000 + b"\n"  # within the bundle's bound
    routes = {"/manifest/": manifest_of(entries), "/bundle/": answer(body)}
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.HashsyncError):
            list(client.stream("ds"))


@pytest.mark.parametrize("order", [("a", "a/b"), ("a/b", "a"), ("x/a", "x/a/b/c")])
def test_a_manifest_naming_a_path_as_file_and_directory_is_refused(tmp_path, order):
    # "a" and "a/b" cannot both be files: the download failed half-way with a raw
    # FileExistsError / IsADirectoryError, one of the two files written.
    entries = [{"path": p, "size": 3, "hash": GOOD_ENTRY["hash"]} for p in order]
    routes = {"/manifest/": manifest_of(entries), "/file/": answer(GOOD)}
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.IntegrityError, match="file and as a directory"):
            client.download_dataset("ds", progress=False)
    assert not (tmp_path / "cache" / "ds").exists()


# -- the server ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\nb.txt", "tab\there.txt", "back\\slash.txt", "del\x7f"])
def test_one_oddly_named_file_does_not_make_a_dataset_unusable(tmp_path, name):
    # The server listed every name; its own client refuses a manifest with a control
    # character or a backslash in a path: whoever could drop one file in a dataset
    # directory denied it to every hashsync client. Now such a file is left out and
    # counted as unreadable (a sync deletes nothing on its account), and never served.
    root = tmp_path / "datasets"
    write_tree(root / "ds", {"ok.txt": b"ok"})
    (root / "ds" / name).write_bytes(b"odd")
    with running_hub(root) as url:
        client = DatasetHubClient(url, KEY, tmp_path / "cache")
        assert [e["path"] for e in client.get_manifest("ds")] == ["ok.txt"]
        assert client.unreadable["ds"] == 1
        assert client.get_file("ds", "ok.txt").read_bytes() == b"ok"
        quoted = urllib.parse.quote(name)
        assert _get(url, f"/file/ds/{quoted}")[0] == 404
        # An unchanged rescan keeps its manifest (same ETag).
        assert (
            client.get_manifest("ds")
            and _get(url, "/manifest/ds")[2] == _get(url, "/manifest/ds")[2]
        )
        result = hashsync.sync(HubStorage(url, "ds", api_key=KEY), tmp_path / "mirror")
        assert result.transferred == ["ok.txt"]


def _get(url: str, path: str) -> tuple[int, bytes, str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("ETag") or ""
    finally:
        conn.close()


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000])
def test_a_content_length_that_is_no_number_is_an_integrity_error(value):
    # HubStorage.get_size took str.isdigit() for a number: int("²") is a ValueError.
    with hostile({"/file/": answer(b"", headers={"Content-Length": value})}) as hub:
        storage = HubStorage(hub.url, "ds", api_key=KEY)
        with pytest.raises(errors.IntegrityError):
            storage.get_size("f.bin")
