"""A file's modification time kept through a round trip, in the metadata rclone uses.

``aws s3 cp`` gives a downloaded file the object's Last-Modified, so a file uploaded and
downloaded again looks rewritten at upload time and make-style pipelines rebuild everything
(aws-cli#3069, s5cmd#532). hashsync stores the file's mtime with each upload and gives it
back on download, under the names rclone reads and writes, so the two tools agree:

* S3: ``x-amz-meta-mtime``, seconds since the epoch with nine decimals (``1733480000.123456789``);
* GCS: ``mtime`` in RFC 3339 with nanoseconds, plus gsutil's ``goog-reserved-file-mtime``
  (whole seconds).

An object without them (another tool's, a server-side copy of one) keeps the old rule: the
file gets the object's time.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MTIME_KEY", "gcs_mtime", "mtime_from", "s3_mtime", "stamp"]

MTIME_KEY = "mtime"
GSUTIL_KEY = "goog-reserved-file-mtime"
_NS = 1_000_000_000
# Years 1..9999 in nanoseconds around the epoch: anything outside is not a time.
_LIMIT = 253_402_300_799 * _NS
_SECONDS = re.compile(r"(-?\d{1,12})(?:\.(\d{1,9}))?")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def s3_mtime(mtime_ns: int) -> str:
    """The ``x-amz-meta-mtime`` value of a file's mtime (rclone's format)."""
    seconds, fraction = divmod(mtime_ns, _NS)
    return f"{seconds}.{fraction:09d}"


def gcs_mtime(mtime_ns: int) -> dict[str, str]:
    """The GCS metadata of a file's mtime: rclone's ``mtime`` and gsutil's whole seconds."""
    seconds, fraction = divmod(mtime_ns, _NS)
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"
    return {MTIME_KEY: text, GSUTIL_KEY: str(seconds)}


def _parse(value: str) -> int | None:
    value = value.strip()
    match = _SECONDS.fullmatch(value)
    if match:
        return int(match[1]) * _NS + int((match[2] or "").ljust(9, "0"))
    match = _RFC3339.fullmatch(value)
    if match:
        try:
            base = datetime.datetime.fromisoformat(match[1] + match[3].replace("Z", "+00:00"))
        except ValueError:
            return None
        seconds = int(base.timestamp())
        return seconds * _NS + int((match[2] or "").ljust(9, "0"))
    return None


def mtime_from(metadata: Mapping[str, str]) -> int | None:
    """The mtime (ns) an uploader recorded in ``metadata``, or None (none, or not a time)."""
    for name in (MTIME_KEY, GSUTIL_KEY):
        value = metadata.get(name)
        if value is None:
            continue
        found = _parse(value)
        if found is not None and -_LIMIT < found < _LIMIT:
            return found
    return None


def stamp(path: Path, metadata: Mapping[str, str], fallback_ns: int) -> None:
    """Give a downloaded file the recorded mtime, else ``fallback_ns`` (the object's time)."""
    found = mtime_from(metadata)
    ns = found if found is not None else fallback_ns
    os.utime(path, ns=(ns, ns))
