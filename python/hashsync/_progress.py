"""Progress bars for the CLI (rich), shown only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]


def _quiet(_done: int, _total: int) -> None:
    return None


@contextmanager
def byte_progress(description: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """A ``progress(done, total)`` callback drawing a byte-level bar on stderr.

    The bar is drawn only when ``enabled`` and stderr is a terminal, so scripts and CI logs get
    no control characters.
    """
    if not (enabled and sys.stderr.isatty()):
        yield _quiet
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
