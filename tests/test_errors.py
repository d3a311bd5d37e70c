"""One error mapping: HTTP statuses and S3 codes, and the Rust core's I/O errors."""

from __future__ import annotations

import errno

import pytest

import hashsync
from hashsync import errors


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (404, "", errors.NotFound),
        (410, "", errors.NotFound),
        (400, "NoSuchKey", errors.NotFound),
        (401, "", errors.PermissionDenied),
        (403, "SignatureDoesNotMatch", errors.PermissionDenied),
        (412, "", errors.PreconditionFailed),
        (409, "ConditionalRequestConflict", errors.PreconditionFailed),
        (503, "SlowDown", errors.StorageUnavailable),
        (429, "", errors.StorageUnavailable),
        (500, "", errors.StorageUnavailable),
        (400, "InvalidBucketName", errors.InvalidArgument),
        (418, "", errors.HashsyncError),
        (None, "", errors.HashsyncError),
    ],
)
def test_error_for_status(status, code, kind):
    err = errors.error_for_status(status, "GET x: failed", code=code)
    assert type(err) is kind and str(err).endswith("GET x: failed")


def test_builtin_bases_still_catch():
    assert isinstance(errors.error_for_status(404, "m"), FileNotFoundError)
    assert isinstance(errors.error_for_status(403, "m"), PermissionError)
    assert isinstance(errors.error_for_status(503, "m"), ConnectionError)


def test_rust_io_errors_map_into_hashsync_errors(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(errors.NotADirectory) as info:
        hashsync.hash_file(tmp_path / "file" / "below")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(errors.FileSystemError) as info:
        hashsync.hash_file(tmp_path / ("n" * 300))
    assert info.value.errno == errno.ENAMETOOLONG and isinstance(info.value, OSError)
    with pytest.raises(errors.NotFound):
        hashsync.hash_file(tmp_path / "missing")
