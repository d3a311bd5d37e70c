"""Whether a store really enforces conditional writes, found out once and remembered.

Some S3-compatible stores accept ``If-None-Match: *`` and ``If-Match`` and ignore them
(``rclone serve s3`` does, on every request). A create-only write there silently replaces
what another writer stored, and claim objects cannot help, since creating a claim is itself
a create-only write. :func:`probe_conditions` finds such a store out before the first
conditional write: it races two create-only writes of one new probe key (exactly one may
win), then checks that a create-only write of the existing key and an ``If-Match`` with a
wrong ETag are both refused. The answer is remembered per endpoint and bucket, in this process
and for 30 days on disk (``<cache dir>/conditional-writes.json``), so a store costs one probe
(four or five small requests) per machine and month.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import HashsyncError, PreconditionFailed

__all__ = ["forget", "memory_file", "probe_conditions", "recalled", "remember"]

REMEMBER_SECONDS = 30 * 24 * 3600

_known: dict[str, bool] = {}
_known_lock = threading.Lock()
_probe_locks: dict[str, threading.Lock] = {}


def memory_file() -> Path:
    """Where the answers are remembered across processes."""
    return Path(hashsync.default_cache_dir()) / "conditional-writes.json"


def _read_memory() -> dict[str, Any]:
    try:
        data = json.loads(memory_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(store: str, honoured: bool) -> None:
    """Record whether ``store`` (``"ENDPOINT|BUCKET"``) enforces conditions."""
    with _known_lock:
        _known[store] = honoured
        data = _read_memory()
        data[store] = {"honoured": honoured, "checked": time.time()}
        path = memory_file()
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)


def recalled(store: str) -> bool | None:
    """What was found out about ``store`` (in this process or, recently, on disk), or None."""
    with _known_lock:
        if store in _known:
            return _known[store]
    entry = _read_memory().get(store)
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("honoured"), bool)
        and isinstance(entry.get("checked"), int | float)
        and time.time() - entry["checked"] < REMEMBER_SECONDS
    ):
        with _known_lock:
            _known[store] = entry["honoured"]
        return bool(entry["honoured"])
    return None


def forget() -> None:
    """Forget this process's answers (the disk memory stays); a new process starts so."""
    with _known_lock:
        _known.clear()


def probe_conditions(
    store: str,
    write: Callable[[str, bytes, bool, str | None], object],
    delete: Callable[[str], object],
    probe_key: str,
) -> bool:
    """Whether the store behind ``write`` enforces create-only and if-match writes.

    Args:
        store: The store's identity (``"ENDPOINT|BUCKET"``), for the memory.
        write: ``write(key, data, create_only, if_hash)``: one conditional write, which must
            raise :class:`~hashsync.errors.PreconditionFailed` when the store refuses it.
        delete: Removes the probe key afterwards.
        probe_key: A key nobody else uses (a reserved directory, a random name).

    Raises:
        HashsyncError: The probe could not write (no access, store down); nothing is
            remembered.
    """
    known = recalled(store)
    if known is not None:
        return known
    with _known_lock:
        lock = _probe_locks.setdefault(store, threading.Lock())
    with lock:  # one probe per store in this process, however many threads ask
        known = recalled(store)
        if known is not None:
            return known
        honoured = _race(write, delete, probe_key)
        remember(store, honoured)
        return honoured


def _race(
    write: Callable[[str, bytes, bool, str | None], object],
    delete: Callable[[str], object],
    probe: str,
) -> bool:
    barrier = threading.Barrier(2)
    wins = [False, False]
    failures: list[BaseException] = []

    def racer(i: int) -> None:
        body = f"{i} {uuid.uuid4().hex}".encode()
        try:
            barrier.wait(timeout=30)
            write(probe, body, True, None)
            wins[i] = True
        except PreconditionFailed:
            pass
        except BaseException as e:  # noqa: BLE001 - reported below, on the calling thread
            failures.append(e)

    threads = [threading.Thread(target=racer, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if failures:
            raise failures[0]
        honoured = sum(wins) == 1
        if honoured:
            try:
                write(probe, b"again", True, None)
                honoured = False
            except PreconditionFailed:
                pass
        if honoured:
            try:
                write(probe, b"wrong", False, "0" * 32)
                honoured = False
            except PreconditionFailed:
                pass
    finally:
        with contextlib.suppress(HashsyncError, OSError):
            delete(probe)
    return honoured
