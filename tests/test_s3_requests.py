"""The request bodies and answers of S3's multipart, copy and delete operations (no server)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from http_helpers import Answer, Request, answering
from hypothesis import given
from hypothesis import strategies as st

from hashsync.errors import HashsyncError
from hashsync.storage._s3_ops import complete_body, copy_source, delete_body, fits_xml, xml_text
from hashsync.storage._s3list import _is_error_document

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@given(st.lists(st.text(min_size=1), min_size=1, max_size=5))
def test_a_delete_body_names_exactly_the_keys(keys):
    sendable = [k for k in keys if fits_xml(k)]
    if not sendable:
        return
    root = ET.fromstring(delete_body(sendable))
    assert [o.findtext(NS + "Key") for o in root.iter(NS + "Object")] == sendable
    assert root.findtext(NS + "Quiet") == "true"


def test_keys_xml_cannot_carry_are_recognised():
    assert not fits_xml("a\x01b") and not fits_xml("\x1f") and not fits_xml("\ufffe")
    assert fits_xml("tab\tnew\nline\rreturn <&> ü")
    # A carriage return survives only as a reference (a parser turns a literal one into \n).
    assert ET.fromstring("<k>" + xml_text("a\rb") + "</k>").text == "a\rb"


def test_complete_body_lists_parts_with_their_checksums():
    parts = [
        {"PartNumber": 1, "ETag": '"abc"', "ChecksumCRC64NVME": "AAAAAAAAAAA="},
        {"PartNumber": 2, "ETag": '"def"'},
    ]
    root = ET.fromstring(complete_body(parts))
    got = [
        (
            p.findtext(NS + "PartNumber"),
            p.findtext(NS + "ETag"),
            p.findtext(NS + "ChecksumCRC64NVME"),
        )
        for p in root.iter(NS + "Part")
    ]
    assert got == [("1", '"abc"', "AAAAAAAAAAA="), ("2", '"def"', None)]


def test_copy_source_is_percent_encoded_bucket_and_key():
    assert copy_source("b", "dir/a b+c?d#e%") == "b/dir/a%20b%2Bc%3Fd%23e%25"


def test_an_error_document_is_told_from_a_result():
    assert _is_error_document(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>X</Code></Error>'
    )
    assert _is_error_document(b"  <Error><Code>InternalError</Code></Error>")
    assert not _is_error_document(b"<CompleteMultipartUploadResult><ETag>x</ETag>")
    assert not _is_error_document(b"<DeleteResult><Error><Key>k</Key></Error></DeleteResult>")


def test_an_error_inside_a_200_answer_is_retried_then_reported():
    # S3 answers CompleteMultipartUpload and copies with 200 before the work is done and may
    # then write an <Error> document into that answer: InternalError is retried like a 500,
    # anything else is the request's error.
    from hashsync.storage._s3_settings import Credentials
    from hashsync.storage._s3list import ErrorAnswer, RawClient

    answers = [
        b"<Error><Code>InternalError</Code><Message>try again</Message></Error>",
        b"<CompleteMultipartUploadResult><ETag>&quot;e-2&quot;</ETag></CompleteMultipartUploadResult>",
        b'<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>',
    ]
    seen = []

    def answer(request: Request) -> Answer:
        seen.append(request.path)
        return 200, answers[min(len(seen), len(answers)) - 1], {}

    with answering(answer) as url:
        client = RawClient(
            url,
            "us-east-1",
            lambda: Credentials("k", "s"),
            "b",
            timeout=5.0,
            max_attempts=3,
        )
        status, _, body = client.call(
            "POST", "k", {"uploadId": "u"}, body=b"<x/>", error_in_ok=True
        )
        assert status == 200 and b"e-2" in body and len(seen) == 2
        with pytest.raises(ErrorAnswer) as refused:  # not taken for a success
            client.call("POST", "k", {"uploadId": "u"}, body=b"<x/>", error_in_ok=True)
        assert (refused.value.code, refused.value.message) == ("AccessDenied", "no")
        assert len(seen) == 3  # not retried: access is not a passing trouble
        assert seen[0] == "/b/k?uploadId=u"


def test_a_listing_outside_s3s_namespace_is_refused_not_read_as_empty():
    # Elements looked up in S3's namespace are not found in a document without it: read
    # anyway, such a listing would be empty, and a sync with --delete would act on that.
    from hashsync.storage import S3Storage

    body = (
        b"<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>a</Key><Size>1</Size><ETag>x</ETag>"
        b"<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents></ListBucketResult>"
    )

    with answering(lambda _request: (200, body, {})) as url:
        storage = S3Storage(
            "b",
            endpoint_url=url,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            max_attempts=1,
        )
        with pytest.raises(HashsyncError, match="root element"):
            list(storage.list())


def test_download_ranges_are_long_but_keep_every_stream_busy():
    from hashsync.storage._s3_reading import MAX_DOWNLOAD_RANGE, download_range_size

    mib = 1024**2
    # Small objects: one stream per part, as uploaded.
    assert download_range_size(20 * mib, 8 * mib, 8) == 8 * mib
    # Mid-size: spread over the streams, whole MiB.
    assert download_range_size(200 * mib, 8 * mib, 8) == 25 * mib
    assert download_range_size(200 * mib + 1, 8 * mib, 8) == 26 * mib
    # Big: capped, so a 1 GiB object is 16 requests, not 128.
    assert download_range_size(1024 * mib, 8 * mib, 8) == MAX_DOWNLOAD_RANGE
    # A part size above the cap wins (the caller asked for long requests).
    assert download_range_size(4096 * mib, 128 * mib, 8) == 128 * mib
    assert download_range_size(0, 8 * mib, 8) == 8 * mib
