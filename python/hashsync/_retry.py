"""The one retry policy: how long to wait before trying a request again.

S3 (every request, and resumed downloads), HTTP and the dataset hub (client and
storage) all wait the same way before a retry: exponential backoff from :data:`BASE_DELAY`,
capped at :data:`MAX_DELAY`, with "full jitter" (a random share of the step), so that many
threads that failed together do not retry together. botocore's own retries (its "standard"
mode) follow the same shape.
"""

from __future__ import annotations

import random
import time

__all__ = ["BASE_DELAY", "MAX_DELAY", "backoff", "wait_before_retry"]

#: The first wait, in seconds; each further retry doubles it.
BASE_DELAY = 0.1
#: No wait is longer than this many seconds.
MAX_DELAY = 2.0


def backoff(retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Full jitter: a uniform share of ``min(BASE_DELAY * 2**(retry - 1), MAX_DELAY)``, never
    less than a tenth of it.
    """
    step = min(BASE_DELAY * 2 ** max(retry - 1, 0), MAX_DELAY)
    return step * random.uniform(0.1, 1.0)  # noqa: S311 - spreading retries, not secrecy


def wait_before_retry(retry: int) -> None:
    """Sleep :func:`backoff` ``(retry)`` seconds."""
    time.sleep(backoff(retry))
