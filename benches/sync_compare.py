"""Sync comparison harness: hashsync vs `aws s3 sync`, `s5cmd sync` and `rclone` on SeaweedFS.

The implementation lives in the package (``hashsync.testing.benchmark``) so that ``hashsync bench``
works from any install; this script is the same thing for people reading ``benches/``.
"""

import sys

from hashsync.testing.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
