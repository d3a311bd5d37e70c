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
