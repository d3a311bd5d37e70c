"""A sync never loses, tears or escapes: the adversarial cases, against SeaweedFS over HTTP."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hashsync
from hashsync import errors, sync
from hashsync.storage import S3Storage, SimpleLocalStorage
from refs import MIB
from sync_helpers import PART, cli, keys, s3, write_tree

SETPRIV = shutil.which("setpriv")
# Root reads everything; without these capabilities it obeys file modes like any user.
NO_READ_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
]


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


# -- 1. what the source scan could not read is never deleted ----------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segment-by-segment"])
def test_unreadable_source_entries_suppress_delete(tmp_path, segmented):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"secret/a.txt": b"a", "unread.txt": b"u", "ok.txt": b"o"})
    write_tree(dst, {"secret/a.txt": b"a", "unread.txt": b"u", "ok.txt": b"o", "extra": b"x"})
    (src / "secret").chmod(0o000)
    (src / "unread.txt").chmod(0o000)
    env = {**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "state")}
    if segmented:
        env["HASHSYNC_SEGMENTED_ABOVE"] = "1"
    os.chmod(tmp_path, 0o777)  # the state directory is created as a non-privileged root
    try:
        r = cli("sync", src, dst, "--delete", "--json", env=env, prefix=NO_READ_OVERRIDE)
    finally:
        (src / "secret").chmod(0o755)
        (src / "unread.txt").chmod(0o644)
    assert_no_traceback(r)
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    assert out["deleted"] == [] and out["delete_suppressed"]
    assert "could not be listed or hashed" in out["delete_suppressed_reason"]
    assert sorted(e["path"] for e in out["scan_errors"]) == ["secret", "unread.txt"]
    for name in ("secret/a.txt", "unread.txt", "extra"):
        assert (dst / name).exists(), name
    assert "deleted nothing" in r.stderr


def test_a_source_file_changing_while_hashed_suppresses_delete(tmp_path):
    # A file whose stat moves under the hasher is left out of the listing as a scan error;
    # its destination copy (and everything else) must survive --delete.
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"ok.txt": b"o"})
    (src / "busy.bin").write_bytes(os.urandom(64 * MIB))
    write_tree(dst, {"ok.txt": b"o", "busy.bin": b"old", "extra": b"x"})
    stop = threading.Event()

    def touch() -> None:
        ns = time.time_ns()
        while not stop.is_set():
            ns += 1_000
            os.utime(src / "busy.bin", ns=(ns, ns))

    toucher = threading.Thread(target=touch)
    toucher.start()
    try:
        result = sync(src, dst, delete=True)
    finally:
        stop.set()
        toucher.join()
    assert [p for p, _ in result.scan_errors] == ["busy.bin"], result.scan_errors
    assert "changed while being hashed" in result.scan_errors[0][1]
    assert result.delete_suppressed and result.deleted == []
    assert not result.ok
    assert (dst / "busy.bin").read_bytes() == b"old" and (dst / "extra").exists()


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_unreadable_destination_entry_is_not_overwritten(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"locked/a.txt": b"new", "b.txt": b"b"})
    write_tree(dst, {"locked/a.txt": b"old"})
    (dst / "locked").chmod(0o555 & ~0o444)  # searchable, not listable
    os.chmod(tmp_path, 0o777)
    env = {**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "state")}
    try:
        r = cli("sync", src, dst, "--json", env=env, prefix=NO_READ_OVERRIDE)
    finally:
        (dst / "locked").chmod(0o755)
    assert_no_traceback(r)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["transferred"] == ["b.txt"]
    assert [f["key"] for f in out["failed"]] == ["locked/a.txt"]
    assert "could not be read" in out["failed"][0]["reason"]
    assert (dst / "locked/a.txt").read_bytes() == b"old"


# -- 2. an upload of a file rewritten meanwhile never lands torn ------------------------------


@pytest.mark.s3
@pytest.mark.parametrize("to", ["s3", "local"])
@pytest.mark.parametrize("size", [4 * MIB, 24 * MIB], ids=["single-put", "multipart"])
def test_file_rewritten_during_upload_never_lands_torn(s3_server, bucket, tmp_path, size, to):
    src = tmp_path / "src"
    versions = [bytes([v]) * size for v in (1, 2)]  # two versions, each one byte repeated
    old = bytes([9]) * size
    write_tree(src, {"f.bin": old})
    remote = s3(s3_server, bucket) if to == "s3" else SimpleLocalStorage(tmp_path / "dst")
    assert sync(src, remote).transferred == ["f.bin"]
    (src / "f.bin").write_bytes(versions[0])
    stop = threading.Event()
    passes = [0]

    def rewrite() -> None:
        # In place, 1 MiB at a time, alternating versions for as long as the sync runs.
        fd = os.open(src / "f.bin", os.O_WRONLY)
        try:
            while not stop.is_set():
                data = versions[passes[0] % 2]
                for off in range(0, size, MIB):
                    os.pwrite(fd, data[off : off + MIB], off)
                passes[0] += 1
        finally:
            os.close(fd)

    writer = threading.Thread(target=rewrite)
    result = None
    try:
        result = sync(src, remote, on_plan=lambda plan: writer.start())
    finally:
        stop.set()
        writer.join()
    assert passes[0] >= 1
    if to == "s3":
        body = s3_server.client().get_object(Bucket=bucket, Key="f.bin")
        stored = body["Body"].read()
        assert body["Metadata"]["hashsync-crc64nvme"] == hashsync.hash_bytes(stored, "crc64nvme")
        uploads = s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert uploads == []
    else:
        stored = (tmp_path / "dst" / "f.bin").read_bytes()
        assert not [p for p in (tmp_path / "dst").iterdir() if "hashsync-tmp" in p.name]
    if result.failed:
        assert [k for k, _ in result.failed] == ["f.bin"]
        assert "changed while it was" in result.failed[0][1]
        assert stored == old, "a failed transfer replaced the destination"
    else:
        assert result.transferred == ["f.bin"]
        assert stored in versions, "the stored copy mixes two versions"


# -- 3. overlapping source and destination are refused -----------------------------------------


def test_overlapping_local_paths_are_refused(tmp_path):
    data = tmp_path / "data"
    write_tree(data, {"sub/f1": b"1", "f2": b"2"})
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(data / "sub", data, delete=True)
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(data, data / "backup")
    with pytest.raises(errors.InvalidArgument, match="same place"):
        sync(data, tmp_path / "data/")
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(tmp_path / "link" / "sub", data, delete=True)
    assert (data / "sub/f1").exists() and not (data / "backup").exists()
    # An exclude that keeps the nested part out of both sides makes it safe.
    result = sync(data, data / "backup", exclude="backup/*")
    assert sorted(result.transferred) == ["f2", "sub/f1"]
    again = sync(data, data / "backup", exclude="backup/*")
    assert again.transferred == [] and not (data / "backup/backup").exists()
    r = cli("sync", data / "sub", data, "--delete")
    assert r.returncode == 1 and "overlapping" in r.stderr
    assert_no_traceback(r)
    # Siblings that share a name prefix do not overlap.
    write_tree(tmp_path / "d", {"x": b"x"})
    assert sync(tmp_path / "d", tmp_path / "dd").transferred == ["x"]


@pytest.mark.s3
def test_overlapping_s3_prefixes_are_refused(s3_server, bucket, tmp_path):
    write_tree(tmp_path / "src", {"sub/f1": b"1", "f2": b"2"})
    sync(tmp_path / "src", s3(s3_server, bucket, "p9"))
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(s3(s3_server, bucket, "p9/sub"), s3(s3_server, bucket, "p9"), delete=True)
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(s3(s3_server, bucket, "p9"), s3(s3_server, bucket, "p9/copy"))
    with pytest.raises(errors.InvalidArgument, match="overlapping"):
        sync(s3(s3_server, bucket), s3(s3_server, bucket, "p9"))
    assert sorted(keys(s3(s3_server, bucket, "p9"))) == ["f2", "sub/f1"]
    # Same bucket, disjoint prefixes ("p9" and "p90") are fine.
    assert sorted(sync(s3(s3_server, bucket, "p9"), s3(s3_server, bucket, "p90")).transferred) == [
        "f2",
        "sub/f1",
    ]
    env = s3_server.env(inherit=True)
    r = cli("sync", f"s3://{bucket}/p9/sub", f"s3://{bucket}/p9", "--delete", env=env)
    assert r.returncode == 1 and "overlapping" in r.stderr


# -- 4. writes never follow a symlink out of the destination ------------------------------------


@pytest.mark.s3
def test_writes_never_follow_directory_symlinks(s3_server, bucket, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_tree(tmp_path / "src", {"sub/file": b"payload", "top": b"t"})
    remote = s3(s3_server, bucket)
    sync(tmp_path / "src", remote)
    for source in (remote, tmp_path / "src"):
        dst = tmp_path / f"dst-{type(source).__name__}"
        dst.mkdir()
        (dst / "sub").symlink_to(elsewhere)
        result = sync(source, dst)
        assert result.transferred == ["top"]
        assert [k for k, _ in result.failed] == ["sub/file"]
        assert "symbolic link" in result.failed[0][1]
        assert list(elsewhere.iterdir()) == []
    # A linked file at the key's path is not replaced either.
    dst = tmp_path / "dst-file-link"
    dst.mkdir()
    (elsewhere / "target").write_bytes(b"keep me")
    (dst / "top").symlink_to(elsewhere / "target")
    result = sync(tmp_path / "src", dst)
    assert "top" in [k for k, _ in result.failed]
    assert (dst / "top").is_symlink() and (elsewhere / "target").read_bytes() == b"keep me"
    with pytest.raises(errors.UnsafePath):
        SimpleLocalStorage(tmp_path / "dst-file-link").open("top", "wb")


# -- 7. no input ends in a traceback -----------------------------------------------------------


def test_hostile_cli_input_gets_clear_errors(tmp_path):
    write_tree(tmp_path / "src", {"f": b"x"})
    bad_sums = tmp_path / "bad.sum"
    bad_sums.write_bytes(b"0" * 64 + b"  \xff\xfe\n")
    cases = [
        (["sync", tmp_path / "src", "/dev/null/x"], "is a file"),
        (["sync", tmp_path / "src", "/proc/1/newdir"], "cannot create"),
        (
            ["hash", "-a", "etag", "--part-size", "99999999999999999999999", tmp_path / "src/f"],
            "too large",
        ),
        (["hash", "--check", bad_sums], "could not be read"),
        (["sync", tmp_path / "src", tmp_path / "o", "--workers", "abc"], "not a whole number"),
        (["sync", tmp_path / "src", tmp_path / "o", "--max-delete", "-1"], "at least 0"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert_no_traceback(r)
        assert r.returncode in (1, 2), (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not Path("/proc/1/newdir").exists()
    # --json prints a JSON error object for fatal errors too.
    r = cli("sync", tmp_path / "src", "/dev/null/x", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["type"] == "NotADirectory"
    r = cli("sync", tmp_path / "src", tmp_path / "o", "--workers", "abc", "--json")
    assert r.returncode == 1 and "not a whole number" in json.loads(r.stdout)["error"]["message"]


# -- 10. keys with control characters are escaped on terminals ----------------------------------


def test_bidi_and_line_separators_are_escaped():
    from hashsync._progress import shown

    assert shown("a\u202eb\u2028c\x1bd\udcff") == "a\\u202eb\\u2028c\\x1bd\\xff"


def test_control_characters_in_keys_are_escaped(tmp_path):
    nasty = "evil\x1b]0;owned\x07\x1b[2J\rname.txt"
    write_tree(tmp_path / "src", {nasty: b"x"})
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--dryrun")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    assert "evil\\x1b]0;owned\\x07\\x1b[2J\\rname.txt" in r.stdout
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "-v")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "copy: evil\\x1b" in r.stdout
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / nasty).write_bytes(b"y")
    r = cli("sync", tmp_path / "src2", tmp_path / "dst", "--json")
    assert json.loads(r.stdout)["transferred"] == [nasty]  # JSON stays exact
    r = cli("diff", tmp_path / "src", tmp_path / "dst")
    assert "\x1b" not in r.stdout and "evil\\x1b" in r.stdout
    # A failure line names the key too: escaped on the terminal, exact in JSON.
    (tmp_path / "src3").mkdir()
    (tmp_path / "src3" / nasty).write_bytes(b"z")
    (tmp_path / "dst3" / nasty).mkdir(parents=True)
    (tmp_path / "dst3" / nasty / "inside").write_bytes(b"keep")
    r = cli("sync", tmp_path / "src3", tmp_path / "dst3")
    assert r.returncode == 2, r.stderr
    assert "\x1b" not in r.stderr + r.stdout and "\r" not in r.stderr + r.stdout
    assert "evil\\x1b]0;owned" in r.stderr
    r = cli("sync", tmp_path / "src3", tmp_path / "dst3", "--json")
    assert [f["key"] for f in json.loads(r.stdout)["failed"]] == [nasty]
    assert (tmp_path / "dst3" / nasty / "inside").read_bytes() == b"keep"


# -- 11. listings the request did not ask for, and names like ours ------------------------------


@pytest.mark.s3
def test_remote_objects_named_like_temporaries_are_reported(s3_server, bucket, tmp_path):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="d/real.txt", Body=b"r")
    tmp_name = "d/.real.txt.hashsync-tmp-0a1b2c3d-42-deadbeef"
    client.put_object(Bucket=bucket, Key=tmp_name, Body=b"t")
    result = sync(s3(s3_server, bucket), tmp_path / "dl")
    assert result.transferred == ["d/real.txt"]
    assert [k for k, _ in result.skipped_keys] == [tmp_name]
    assert "temporary" in result.skipped_keys[0][1] and not result.ok
    # Excluded by the user: not reported.
    result = sync(s3(s3_server, bucket), tmp_path / "dl2", exclude="d/.*")
    assert result.skipped_keys == []


@pytest.mark.s3
def test_listing_outside_the_prefix_is_rejected(s3_server, bucket, tmp_path):
    from proxy_helpers import rewriting_proxy

    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="data/a.txt", Body=b"a")
    client.put_object(Bucket=bucket, Key="other/secret.txt", Body=b"s")

    def rewrite(path: str, body: bytes) -> bytes:
        # A misbehaving store: answers the listing of "data/" with a key outside it.
        return body.replace(b"<Key>data/a.txt</Key>", b"<Key>other/secret.txt</Key>")

    with rewriting_proxy(s3_server.endpoint_url, rewrite) as url:
        store = S3Storage(
            bucket,
            "data",
            endpoint_url=url,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            max_attempts=1,
        )
        with pytest.raises(errors.IntegrityError, match="outside the requested prefix"):
            list(store.list())
        with pytest.raises(errors.IntegrityError):
            sync(store, tmp_path / "dl", delete=True)
    assert not (tmp_path / "dl").exists()


@pytest.mark.s3
def test_hostile_keys_in_a_listing_never_escape_the_destination(s3_server, bucket, tmp_path):
    from proxy_helpers import rewriting_proxy

    client = s3_server.client()
    for name in ("a.txt", "b.txt", "c.txt"):
        client.put_object(Bucket=bucket, Key=f"data/{name}", Body=b"x")
    hostile = {
        b"data/a.txt": b"data/../../escape.txt",
        b"data/b.txt": b"data//etc/passwd",
    }

    def rewrite(path: str, body: bytes) -> bytes:
        for want, bad in hostile.items():
            body = body.replace(b"<Key>" + want + b"</Key>", b"<Key>" + bad + b"</Key>")
        return body

    with rewriting_proxy(s3_server.endpoint_url, rewrite) as url:
        store = S3Storage(
            bucket,
            "data",
            endpoint_url=url,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            max_attempts=1,
        )
        write_tree(tmp_path / "dl", {"keep.txt": b"k"})
        result = sync(store, tmp_path / "dl", delete=True)
    assert result.transferred == ["c.txt"]
    assert sorted(k for k, _ in result.failed) == ["../../escape.txt", "/etc/passwd"]
    assert result.delete_suppressed and (tmp_path / "dl/keep.txt").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


# -- 12. a destination appears only for a real source; empty sources and --max-delete -----------


@pytest.mark.s3
def test_missing_bucket_creates_no_destination(s3_server, tmp_path):
    env = s3_server.env(inherit=True)
    r = cli("sync", "s3://nosuchbucket-hs/p", tmp_path / "dl", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "dl").exists()


@pytest.mark.s3
def test_empty_source_with_delete_is_refused(s3_server, bucket, tmp_path):
    write_tree(tmp_path / "dst", {"a": b"1", "b/c": b"2"})
    env = s3_server.env(inherit=True)
    r = cli("sync", f"s3://{bucket}/typo", tmp_path / "dst", "--delete", env=env)
    assert r.returncode == 1 and "--allow-empty-source" in r.stderr
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.InvalidArgument, match="lists no files"):
        sync(tmp_path / "empty", tmp_path / "dst", delete=True)
    result = sync(tmp_path / "empty", tmp_path / "dst", delete=True, allow_empty_source=True)
    assert sorted(result.deleted) == ["a", "b/c"]


def test_max_delete_is_all_or_nothing(tmp_path):
    write_tree(tmp_path / "src", {"keep": b"k"})
    write_tree(tmp_path / "dst", {"keep": b"k", "x1": b"1", "x2": b"2", "x3": b"3"})
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, max_delete=2)
    assert result.deleted == [] and result.delete_suppressed
    assert "max_delete=2" in result.delete_suppressed_reason
    r = cli("sync", tmp_path / "src", tmp_path / "dst", "--delete", "--max-delete", "2", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["delete_suppressed"] and out["deleted"] == []
    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, max_delete=3)
    assert sorted(result.deleted) == ["x1", "x2", "x3"] and result.ok


# -- 6. multipart uploads of a killed run are resumed or aborted; cleanup for the rest ---------


@pytest.mark.s3
def test_sigkill_mid_multipart_then_rerun_resumes_and_leaves_no_uploads(
    s3_server, bucket, tmp_path
):
    from proxy_helpers import rewriting_proxy

    part = 8 * MIB  # the CLI's default part size
    data = random.Random(6).randbytes(9 * part + 123)
    write_tree(tmp_path / "src", {"big.bin": data, "small.bin": b"s"})
    client = s3_server.client()
    env = s3_server.env(inherit=True)
    env["HASHSYNC_CACHE_DIR"] = str(tmp_path / "state")
    log: list[tuple[str, str]] = []
    delay = [0.4]  # a slow link, so that the kill lands while parts are being sent
    proxy = rewriting_proxy(s3_server.endpoint_url, delay=delay, log=log)
    with proxy as url:
        cmd = [sys.executable, "-m", "hashsync", "sync", tmp_path / "src", f"s3://{bucket}/p"]
        proc = subprocess.Popen(
            [*map(str, cmd), "--endpoint-url", url, "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        parts_done = 0
        while time.monotonic() < deadline and parts_done < 2:
            for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                listed = client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                parts_done = len(listed.get("Parts", []))
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["Key"] for u in left] == ["p/big.bin"], "the kill did not land mid-upload"
        # An upload that no journal knows (another machine, another tool): left alone.
        foreign = client.create_multipart_upload(Bucket=bucket, Key="p/foreign.bin")["UploadId"]

        # The same endpoint again, at full speed.
        log.clear()
        delay[0] = 0.0
        r = subprocess.run(
            [*map(str, cmd), "--endpoint-url", url, "--no-progress", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr
    assert "big.bin" in json.loads(r.stdout)["transferred"]
    got = client.get_object(Bucket=bucket, Key="p/big.bin")["Body"].read()
    assert got == data
    # Resumed: the parts already on the server were not sent again (10 parts in all).
    sent = [path for method, path in log if method == "PUT" and "partNumber=" in path]
    assert len(sent) <= 10 - parts_done, sent
    assert not any(method == "POST" and path.endswith("?uploads") for method, path in log), (
        "a new upload was created instead of resuming"
    )
    remaining = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in remaining] == [foreign]
    assert not list((tmp_path / "state" / "uploads").glob("*.json"))

    # cleanup: young uploads are spared by default, --older-than 0 aborts them.
    r = cli("cleanup", f"s3://{bucket}/p", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["aborted"] == []
    r = cli("cleanup", f"s3://{bucket}/p", "--older-than", "0", "--dryrun", env=env)
    assert r.returncode == 0 and "(dryrun) abort: foreign.bin" in r.stdout
    assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    r = cli("cleanup", f"s3://{bucket}/p", "--older-than", "0", "--json", env=env)
    assert [u["key"] for u in json.loads(r.stdout)["aborted"]] == ["foreign.bin"]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    r = cli("cleanup", tmp_path, env=env)
    assert r.returncode == 1 and "not an s3://" in r.stderr


@pytest.mark.s3
def test_changed_file_does_not_resume_a_stale_upload(s3_server, bucket, tmp_path, monkeypatch):
    # A journal record from a dead process whose file has changed since: aborted, not resumed.
    from hashsync.storage._journal import journal

    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    client = s3_server.client()
    stale = client.create_multipart_upload(Bucket=bucket, Key="f.bin")["UploadId"]
    client.upload_part(Bucket=bucket, Key="f.bin", UploadId=stale, PartNumber=1, Body=b"x" * PART)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    store = s3(s3_server, bucket)
    path = journal().record(
        str(store.client.meta.endpoint_url),
        bucket,
        "f.bin",
        {"upload_id": stale, "identity": {"size": 1}},
    )
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "pid": int(dead)}))
    data = random.Random(8).randbytes(2 * PART + 1)
    write_tree(tmp_path / "src", {"f.bin": data})
    assert sync(tmp_path / "src", store).transferred == ["f.bin"]
    assert client.get_object(Bucket=bucket, Key="f.bin")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# -- 8. temporaries of killed runs are removed by any run that scans their directory -----------


def test_stale_temporaries_are_removed_by_a_scan(tmp_path):
    from hashsync.atomic import temporary_path

    write_tree(tmp_path / "src", {"deep/dir/a.bin": b"a", "top.txt": b"t"})
    assert sync(tmp_path / "src", tmp_path / "dst").ok
    # A killed process's temporary, in a directory the next run has nothing to write into.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    live = temporary_path(tmp_path / "dst/deep/dir/a.bin")  # this process: still running
    stale = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    stale.write_bytes(b"partial")
    live.write_bytes(b"in flight")
    listing = hashsync.scan(tmp_path / "dst")
    assert sorted(listing.paths()) == ["deep/dir/a.bin", "top.txt"]  # never listed as data
    assert sorted(listing.temporaries) == sorted(f"deep/dir/{p.name}" for p in (stale, live))
    result = sync(tmp_path / "src", tmp_path / "dst")
    assert result.ok and result.transferred == []
    assert not stale.exists(), "the killed run's temporary is still there"
    assert live.exists(), "a live writer's temporary was removed"


# -- found by an adversarial pass -----------------------------------------------------------


def test_overlap_exclude_cannot_be_undone_by_an_include(tmp_path):
    data = tmp_path / "data"
    write_tree(data, {"sub/precious.txt": b"p", "top.txt": b"t", "sub/deeper/x.txt": b"x"})
    # Filters that exclude the probes but include real files under the nested part.
    rules = [("exclude", "*"), ("include", "*.txt")]
    result = sync(data / "sub", data, delete=True, filters=[("exclude", "sub/*"), *rules])
    assert "sub/precious.txt" not in result.deleted
    assert (data / "sub/precious.txt").exists() and (data / "sub/deeper/x.txt").exists()
    # Whatever the filters include, the nested destination never feeds back into itself.
    for _ in range(2):
        sync(data, data / "backup", filters=rules)
    assert (data / "backup/sub/precious.txt").exists() and not (data / "backup/backup").exists()


def test_empty_path_arguments_are_refused(tmp_path, monkeypatch):
    write_tree(tmp_path / "cwd", {"a": b"1"})
    write_tree(tmp_path / "backup", {"b": b"2"})
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(errors.InvalidArgument, match="empty path"):
        sync("", tmp_path / "backup", delete=True)
    r = cli("sync", "", tmp_path / "backup", "--delete")
    assert r.returncode == 1 and "empty path" in r.stderr
    assert (tmp_path / "backup/b").exists()


def test_s3_urls_are_taken_literally():
    store = S3Storage.from_url(
        "s3://bkt/proj#2/100%25?v", endpoint_url="http://127.0.0.1:1", max_attempts=1
    )
    assert (store.bucket, store.prefix) == ("bkt", "proj#2/100%25?v/")


def test_source_entries_turned_into_symlinks_are_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"ROOT SECRET")
    write_tree(tmp_path / "src", {"report.txt": b"r", "sub/f.txt": b"f"})
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "f.txt").write_bytes(b"PRIVATE")

    def swap(plan) -> None:  # after the scan, before the transfers
        (tmp_path / "src/report.txt").unlink()
        (tmp_path / "src/report.txt").symlink_to(secret)
        shutil.rmtree(tmp_path / "src/sub")
        (tmp_path / "src/sub").symlink_to(tmp_path / "private")

    result = sync(tmp_path / "src", tmp_path / "dst", on_plan=swap)
    assert sorted(k for k, _ in result.failed) == ["report.txt", "sub/f.txt"]
    assert all("symbolic link" in why for _, why in result.failed)
    assert not (tmp_path / "dst/report.txt").exists() and not (tmp_path / "dst/sub").exists()


def test_delete_never_goes_through_a_symlink(tmp_path):
    write_tree(tmp_path / "src", {"keep": b"k"})
    write_tree(tmp_path / "dst", {"keep": b"k", "sub/victim": b"v"})
    outside = tmp_path / "outside"
    write_tree(outside, {"victim": b"mine"})

    def swap(plan) -> None:
        shutil.rmtree(tmp_path / "dst/sub")
        (tmp_path / "dst/sub").symlink_to(outside)

    result = sync(tmp_path / "src", tmp_path / "dst", delete=True, on_plan=swap)
    assert result.deleted == [] and [k for k, _ in result.failed] == ["sub/victim"]
    assert (outside / "victim").read_bytes() == b"mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_overlap_through_a_bind_mount_is_refused(tmp_path):
    write_tree(tmp_path / "data", {"sub/precious": b"p"})
    (tmp_path / "m").mkdir()
    mounted = subprocess.run(["mount", "--bind", str(tmp_path / "data"), str(tmp_path / "m")])
    if mounted.returncode != 0:
        pytest.skip("mount --bind is not allowed here")
    try:
        with pytest.raises(errors.InvalidArgument, match="same directory tree"):
            sync(tmp_path / "m" / "sub", tmp_path / "data", delete=True)
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    assert (tmp_path / "data/sub/precious").exists()


def test_dry_run_changes_nothing_not_even_temporaries(tmp_path):
    write_tree(tmp_path / "src", {"a": b"a"})
    write_tree(tmp_path / "dst", {})
    stale = tmp_path / "dst" / ".a.hashsync-tmp-0a1b2c3d-999999999-deadbeef"
    stale.write_bytes(b"partial")
    assert sync(tmp_path / "src", tmp_path / "dst", dry_run=True).transferred == ["a"]
    assert stale.exists()


def test_more_hostile_cli_input(tmp_path):
    write_tree(tmp_path / "src", {"f": b"x"})
    sums = tmp_path / "nul.sum"
    sums.write_bytes(b"0" * 64 + b"  a\x00b\n")
    cases = [
        (["cleanup", "s3://b/p", "--older-than", "99999999999d"], "too long"),
        (["hash", "--threads", "99999999999999999999", tmp_path / "src/f"], "at most"),
        (["hash", "--check", sums], "NUL byte"),
        (["sync", "http://[::1/x", tmp_path / "o"], "invalid URL"),
        (["cleanup", "http://user:SECRETPW@h/p"], "not an s3://"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert_no_traceback(r)
        assert "internal error" not in r.stderr, (args, r.stderr)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert "SECRETPW" not in r.stderr
    r = cli("hash", "--check", tmp_path / "missing.sum", "--json")
    assert r.returncode == 1 and "missing.sum" in json.loads(r.stdout)["error"]["message"]
    r = cli("cleanup", str(tmp_path), "--json")
    assert r.returncode == 1 and "not an s3://" in json.loads(r.stdout)["error"]["message"]


MMAP_WRITER = """
import mmap, os, sys
path, size, stop, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
mm = mmap.mmap(os.open(path, os.O_RDWR), size)
n = 0
while not os.path.exists(stop):
    n += 1
    block = bytes([65 + n % 26]) * 2**20
    for off in range(0, size, 2**20):
        mm[off : off + 2**20] = block[: size - off]
    if n % 8 == 0:  # atomically: a reader never sees a half-written count
        open(count + ".tmp", "w").write(str(n))
        os.replace(count + ".tmp", count)
"""


@pytest.mark.s3
def test_multipart_upload_through_a_shared_mmap_writer_is_never_torn(s3_server, bucket, tmp_path):
    # Writes to already-dirty mmap pages move no timestamp, so only the CRC of the bytes
    # actually sent, checked against the announced one, can tell.
    size = 4 * PART + 123
    src = tmp_path / "src"
    write_tree(src, {"db.bin": b"Z" * size})
    remote = s3(s3_server, bucket)
    first = sync(src, remote)
    assert first.transferred == ["db.bin"], first.failed
    (src / "db.bin").write_bytes(b"A" * size)
    stop, count = tmp_path / "stop", tmp_path / "count"
    writer = subprocess.Popen(
        [sys.executable, "-c", MMAP_WRITER, str(src / "db.bin"), str(size), str(stop), str(count)]
    )
    try:
        time.sleep(1.0)  # every page dirtied once: from here on no timestamp moves
        before = int(count.read_text() or 0) if count.exists() else 0
        result = sync(src, remote)
        after = int(count.read_text() or 0) if count.exists() else 0
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert after > before, "the writer did not run during the sync"
    obj = s3_server.client().get_object(Bucket=bucket, Key="db.bin")
    stored = obj["Body"].read()
    assert obj["Metadata"]["hashsync-crc64nvme"] == hashsync.hash_bytes(stored, "crc64nvme")
    if result.failed:
        assert stored == b"Z" * size, "a failed upload replaced the object"
    else:
        assert len(set(stored)) == 1, "the stored object mixes versions"
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
