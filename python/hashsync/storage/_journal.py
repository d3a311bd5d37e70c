"""A local journal of the multipart uploads this host has in flight.

S3 keeps the parts of an upload that was never completed or aborted (and bills for them), and
lists them with no hint of who started them or from which file. A process killed mid-upload
cannot clean up after itself, so before it creates an upload it records one small JSON file
here; a later upload of the same key finds the record, sees that its writer is gone, and
either resumes that upload (sending only the parts the store does not already hold) or aborts
it. A live writer's record is left alone, so two processes never abort each other's uploads.

Records live in ``$HASHSYNC_CACHE_DIR/uploads/``. Where that directory cannot be written the
journal is off: uploads still work, and ``hashsync cleanup`` removes what a crash left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import hashsync
from hashsync.atomic import HOST, pid_alive, temporary_path

__all__ = ["UploadJournal", "journal"]


class UploadJournal:
    """Records of in-flight multipart uploads, one file per upload.

    Args:
        directory: Where the records live.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def _stem(endpoint: str, bucket: str, key: str) -> str:
        return hashlib.sha256(f"{endpoint}\0{bucket}\0{key}".encode()).hexdigest()[:40]

    def record(self, endpoint: str, bucket: str, key: str, info: dict[str, Any]) -> Path | None:
        """Write a record for an upload that was just created; None if the journal is off."""
        body = {
            **info,
            "endpoint": endpoint,
            "bucket": bucket,
            "key": key,
            "host": HOST,
            "pid": os.getpid(),
        }
        name = f"{self._stem(endpoint, bucket, key)}.{os.getpid()}-{secrets.token_hex(4)}.json"
        path = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(path)
            tmp.write_text(json.dumps(body))
            os.replace(tmp, path)
        except OSError:
            return None
        return path

    def abandoned(
        self, endpoint: str, bucket: str, key: str | None = None, *, prefix: str = ""
    ) -> list[tuple[Path, dict[str, Any]]]:
        """Records whose writer (a process of this host) no longer runs.

        Args:
            endpoint: The store's endpoint URL.
            bucket: The bucket.
            key: Only records of this full key; None for every key under ``prefix``.
            prefix: With ``key=None``, the full-key prefix to look under.
        """
        pattern = "*.json" if key is None else f"{self._stem(endpoint, bucket, key)}.*.json"
        try:
            candidates = sorted(self.directory.glob(pattern))
        except OSError:
            return []
        found = []
        for path in candidates:
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (info.get("endpoint"), info.get("bucket")) != (endpoint, bucket):
                continue
            name = info.get("key")
            if not isinstance(name, str) or (
                name != key if key is not None else not name.startswith(prefix)
            ):
                continue  # another key (or a hash collision of the file name)
            pid = info.get("pid")
            if info.get("host") == HOST and isinstance(pid, int) and not pid_alive(pid):
                found.append((path, info))
        return found

    @staticmethod
    def remove(path: Path | None) -> None:
        """Delete a record (the upload was completed or aborted)."""
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def journal() -> UploadJournal:
    """The journal in the default cache directory (read from the environment on each call)."""
    return UploadJournal(Path(hashsync.default_cache_dir()) / "uploads")
