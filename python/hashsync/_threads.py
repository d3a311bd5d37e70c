"""Running one function over many items on a few threads: the package's one thread map.

Every parallel loop of hashsync goes through :func:`run_on_threads` (parts of a multipart
transfer, batches of deletions, listing requests, downloads of many files), so Ctrl-C,
failures and cancellation behave the same everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["TRANSFERS", "run_on_threads"]

#: Files moved at once by default (sync, cache ``get_many``). Chosen for a network with real
#: latency, not loopback: at 20 ms round trip 16 left hashsync behind s5cmd, 64 put it at
#: ~0.55x s5cmd's time, 128 gained nothing more (issue 26); the requests themselves run
#: without the GIL (hashsync._native.S3Transport), so idle threads cost little.
TRANSFERS = 64

T = TypeVar("T")
R = TypeVar("R")


def run_on_threads(
    fn: Callable[[T], R], items: Iterable[T], workers: int, *, fail_fast: bool = False
) -> list[R]:
    """``[fn(i) for i in items]`` on ``workers`` threads that each take the next item when free.

    No future per item: with thousands of small files, creating futures and waking the caller
    on every completion cost as much GIL time as the downloads' own bookkeeping. A failed item
    does not stop the others (unless ``fail_fast``: then no further item is started); the
    first failure (in order) is raised once the running ones are done, with a note counting
    the rest. Ctrl-C stops handing out items, lets the running ones finish, and is re-raised,
    so no thread is still writing to a file the caller removes.
    """
    items = items if isinstance(items, list) else list(items)
    if len(items) <= 1 or workers <= 1:
        return _in_this_thread(fn, items, fail_fast=fail_fast)
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)
    todo = iter(range(len(items)))  # next() on a range iterator is atomic under the GIL
    stop = threading.Event()
    finished = threading.Event()
    running = [0]
    starting = [True]
    lock = threading.Lock()

    def settle() -> None:  # under lock
        if not running[0] and not starting[0]:
            finished.set()

    def work() -> None:
        try:
            for i in todo:
                if stop.is_set():
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                    errors[i] = exc
                    if fail_fast:
                        stop.set()
        finally:
            with lock:
                running[0] -= 1
                settle()

    # The wait is on an Event, not Thread.join: in Python 3.11 a Ctrl-C that interrupts
    # join() can mark a thread that is still running as stopped (gh-90882), and the caller
    # would return while downloads are still being written.
    try:
        try:
            for n in range(min(workers, len(items))):
                with lock:
                    running[0] += 1
                try:
                    threading.Thread(target=work, name=f"hashsync-worker-{n}", daemon=True).start()
                except BaseException:
                    with lock:
                        running[0] -= 1
                    raise
        finally:
            with lock:
                starting[0] = False
                settle()
        while not finished.wait(0.5):
            pass
    except BaseException:
        stop.set()
        finished.wait()
        raise
    failed = [e for e in errors if e is not None]
    if failed:
        if len(failed) > 1:
            failed[0].add_note(f"... and {len(failed) - 1} more failed")
        raise failed[0]
    return results  # type: ignore[return-value]


def _in_this_thread(fn: Callable[[T], R], items: list[T], *, fail_fast: bool) -> list[R]:
    """:func:`run_on_threads` without threads, for one item or one worker (same semantics)."""
    results: list[R] = []
    failed: list[Exception] = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            failed.append(exc)
            if fail_fast:
                break
    if failed:
        if len(failed) > 1:
            failed[0].add_note(f"... and {len(failed) - 1} more failed")
        raise failed[0]
    return results
