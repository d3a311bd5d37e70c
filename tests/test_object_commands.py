"""hashsync ls / rm / cat / presign (issue 28 item 4), against SeaweedFS and the GCS emulator."""

from __future__ import annotations

import json
import urllib.request

import pytest

from proxy_helpers import rewriting_proxy
from sync_helpers import cli

pytestmark = pytest.mark.s3


@pytest.fixture
def filled(s3_server, s3_env, bucket):
    client = s3_server.client()
    for key, body in {
        "data/a.txt": b"alpha",
        "data/b #1?.txt": b"beta",
        "data/sub/c.bin": b"c" * 3000,
        "database/x": b"x",
        "top.txt": b"top",
    }.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


def test_ls_one_level_recursive_and_json(filled):
    got = cli("ls", f"s3://{filled}/data/")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].split() == ["PRE", "sub/"]
    assert [line.split(None, 3)[3] for line in lines[1:]] == ["a.txt", "b #1?.txt"]
    assert lines[1].split()[2] == "5"
    # A string prefix, as aws s3 ls: "data" shows both PRE data/ and PRE database/.
    got = cli("ls", f"s3://{filled}/data")
    assert got.stdout.split() == ["PRE", "data/", "PRE", "database/"]
    got = cli("ls", f"s3://{filled}/data/", "--recursive", "--json")
    rows = json.loads(got.stdout)
    assert [r["key"] for r in rows] == ["data/a.txt", "data/b #1?.txt", "data/sub/c.bin"]
    assert rows[2]["size"] == 3000 and rows[2]["modified"].endswith("+00:00")


def test_ls_nothing_and_a_missing_bucket_exit_1(filled):
    empty = cli("ls", f"s3://{filled}/nothing-here/")
    assert empty.returncode == 1 and empty.stdout == ""
    missing = cli("ls", "s3://no-such-bucket-anywhere/")
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = cli("ls", "http://example.com/x")
    assert bad.returncode == 1 and "s3://BUCKET" in bad.stderr


def test_cat_writes_the_verified_object(filled, s3_server):
    got = cli("cat", f"s3://{filled}/data/b #1?.txt")
    assert got.returncode == 0 and got.stdout == "beta"
    missing = cli("cat", f"s3://{filled}/data/none.txt")
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1

    def corrupt(path: str, body: bytes) -> bytes:
        return body.replace(b"alpha", b"alphA")

    with rewriting_proxy(s3_server.endpoint_url, corrupt) as url:
        bad = cli("cat", f"s3://{filled}/data/a.txt", "--endpoint-url", url)
    assert bad.returncode == 1 and bad.stdout == ""  # nothing unverified reaches stdout
    assert "match" in bad.stderr.lower() or "integrity" in bad.stderr.lower()


def test_rm_one_recursive_and_dryrun(filled, s3_server):
    client = s3_server.client()

    def keys():
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=filled).get("Contents", []))

    missing = cli("rm", f"s3://{filled}/data/none.txt")
    assert missing.returncode == 1 and "none.txt" in missing.stderr
    dry = cli("rm", f"s3://{filled}/data", "--recursive", "--dryrun")
    assert dry.returncode == 0 and dry.stdout.count("(dryrun) delete:") == 3
    assert len(keys()) == 5
    one = cli("rm", f"s3://{filled}/top.txt")
    assert one.returncode == 0 and "top.txt" not in keys()
    # "data" is a directory here: database/x stays (aws would take it as a string prefix).
    many = cli("rm", f"s3://{filled}/data", "--recursive", "--json")
    assert many.returncode == 0, many.stderr
    assert len(json.loads(many.stdout)["deleted"]) == 3
    assert keys() == ["database/x"]


def test_presign_gives_a_working_url(filled):
    got = cli("presign", f"s3://{filled}/data/a.txt", "--expires-in", "60")
    assert got.returncode == 0, got.stderr
    url = got.stdout.strip()
    assert "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"alpha"
    bad = cli("presign", f"s3://{filled}/data/a.txt", "--expires-in", "0")
    assert bad.returncode == 1 and "expires_in" in bad.stderr
    gs = cli("presign", "gs://bucket/key")
    assert gs.returncode == 1 and "not yet" in gs.stderr


def test_ls_and_cat_on_gcs(gcs_env, gcs_bucket):
    from hashsync.storage.gcs import GCSStorage

    storage = GCSStorage(gcs_bucket, conditional_writes="best-effort")
    storage.write_bytes("d/one.txt", b"1")
    storage.write_bytes("d/deep/two.txt", b"22")
    got = cli("ls", f"gs://{gcs_bucket}/d/")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split()[:2] == ["PRE", "deep/"] and got.stdout.rstrip().endswith("one.txt")
    assert cli("cat", f"gs://{gcs_bucket}/d/deep/two.txt").stdout == "22"


def test_cp_up_down_renamed_and_between_buckets(s3_server, s3_env, bucket, tmp_path):
    big = tmp_path / "model.ckpt"
    big.write_bytes(bytes(range(256)) * 30_000)  # 7.3 MiB: a multipart upload
    client = s3_server.client()

    up = cli("cp", big, f"s3://{bucket}/ckpt/", "--json", "--content-type", "application/x-ckpt")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["action"] == "upload"
    head = client.head_object(Bucket=bucket, Key="ckpt/model.ckpt")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ContentType"] == "application/x-ckpt"

    renamed = cli("cp", big, f"s3://{bucket}/ckpt/renamed.ckpt")
    assert renamed.returncode == 0, renamed.stderr
    assert client.head_object(Bucket=bucket, Key="ckpt/renamed.ckpt")["ContentLength"] > 0

    down = cli("cp", f"s3://{bucket}/ckpt/renamed.ckpt", tmp_path / "back.ckpt")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.ckpt").read_bytes() == big.read_bytes()
    (tmp_path / "dir").mkdir()
    into = cli("cp", f"s3://{bucket}/ckpt/model.ckpt", tmp_path / "dir")
    assert into.returncode == 0 and (tmp_path / "dir" / "model.ckpt").exists()

    other = s3_server.create_bucket(f"{bucket}-other")
    across = cli("cp", f"s3://{bucket}/ckpt/model.ckpt", f"s3://{other}/copy/m.ckpt")
    assert across.returncode == 0, across.stderr
    assert client.head_object(Bucket=other, Key="copy/m.ckpt")["ContentLength"] == len(
        big.read_bytes()
    )

    missing = cli("cp", f"s3://{bucket}/ckpt/none", tmp_path / "none")
    assert missing.returncode == 1 and not (tmp_path / "none").exists()
    assert len(missing.stderr.strip().splitlines()) == 1
    nofile = cli("cp", tmp_path / "no-such-file", f"s3://{bucket}/x")
    assert nofile.returncode == 1 and "no such" in nofile.stderr


def test_cp_recursive_is_a_sync_without_delete(s3_server, s3_env, bucket, tmp_path):
    src = tmp_path / "tree"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.txt").write_text("x")
    (src / "y.txt").write_text("y")
    s3_server.client().put_object(Bucket=bucket, Key="t/keep.txt", Body=b"k")
    done = cli("cp", src, f"s3://{bucket}/t", "--recursive", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["transferred"]) == ["a/x.txt", "y.txt"]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "t/keep.txt" in keys  # nothing deleted


@pytest.mark.parametrize("command", ["cat", "rm", "cp"])
def test_missing_buckets_and_bad_urls_are_one_line(s3_env, tmp_path, command):
    extra = [tmp_path / "out"] if command == "cp" else []
    for url, words in (
        ("s3://no-such-bucket-here/k", ("not found", "nosuchbucket", "no such")),
        ("ftp://host/k", ("s3://", "cp takes")),
        ("s3:///k", ("s3://bucket", "cp takes", "names no")),
    ):
        got = cli(command, url, *extra)
        assert got.returncode == 1, (url, got.stderr)
        assert got.stdout == ""
        assert len(got.stderr.strip().splitlines()) == 1, got.stderr
        assert any(w in got.stderr.lower() for w in (w.lower() for w in words)), got.stderr
    assert not (tmp_path / "out").exists()


def test_cp_shows_progress_on_a_terminal(s3_server, s3_env, bucket, tmp_path):
    from sync_helpers import stderr_on_a_terminal

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(12 * 1024**2))
    drawn, _ = stderr_on_a_terminal(["cp", str(big), f"s3://{bucket}/big.bin"])
    assert "copying" in drawn


def test_help_lists_the_commands():
    got = cli("--help")
    assert got.returncode == 0
    for command in ("sync", "diff", "ls", "cp", "rm", "cat", "presign"):
        assert f"    {command} " in got.stdout
