"""Progress bars for the CLI (rich), shown only on a terminal, and terminal-safe text."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, TaskID

ProgressFn = Callable[[int, int], None]

# C0/C1 controls, DEL, bidi overrides, line separators, and the lone surrogates that stand
# for undecodable bytes in names.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def shown(text: str) -> str:
    r"""``text`` safe to print to a terminal: control characters and bad bytes escaped.

    A key may contain ANSI/OSC escape sequences or a carriage return that would rewrite the
    screen; they are printed as ``\x1b``, ``\r``, ... (``--json`` output stays exact).
    """

    def escape(m: re.Match[str]) -> str:
        c = ord(m.group())
        if 0xDC80 <= c <= 0xDCFF:  # surrogateescape of an undecodable byte
            return f"\\x{c - 0xDC00:02x}"
        if c > 0xFF:
            return f"\\u{c:04x}"
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(m.group(), f"\\x{c:02x}")

    return _UNSAFE.sub(escape, text)


def quiet(_done: int, _total: int) -> None:
    """The progress callback that shows nothing (what byte_progress yields off a terminal)."""
    return None


def byte_counter(bar: ProgressFn, total: int = 0) -> Callable[[int], None]:
    """A callback adding each call's byte count to a running total shown on ``bar``.

    Safe to call from several download threads at once.
    """
    done = 0
    lock = threading.Lock()

    def moved(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            bar(done, total)

    return moved


def _byte_columns(*extra: ProgressColumn) -> tuple[ProgressColumn, ...]:
    """Description, bar, bytes, rate, then ``extra`` columns, then the ETA."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        *extra,
        TimeRemainingColumn(),
    )


def _on_stderr() -> dict[str, Any]:
    """Options that keep a rich bar on stderr and leave stdout alone.

    rich draws on stdout by default, so a bar was lost when stdout was piped (``--json | jq``)
    although stderr was a terminal; and its stdout redirection would move printed output
    through the bar's console.
    """
    from rich.console import Console

    return {"console": Console(stderr=True), "redirect_stdout": False}


@contextmanager
def byte_progress(description: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """A ``progress(done, total)`` callback drawing a byte-level bar on stderr.

    The bar is drawn only when ``enabled`` and stderr is a terminal, so scripts and CI logs get
    no control characters.
    """
    if not (enabled and sys.stderr.isatty()):
        yield quiet
        return
    from rich.progress import Progress

    with Progress(*_byte_columns(), transient=True, **_on_stderr()) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


class SyncDisplay:
    """The live display of ``hashsync sync``: hashing, then bytes and files transferred.

    Draws on stderr only when it is a terminal. ``--verbose`` lines are printed above the bar
    (or plainly to stdout when there is no bar).
    """

    def __init__(
        self, *, enabled: bool, verbose: bool, dry_run: bool, lines_to_stderr: bool = False
    ) -> None:
        self.verbose = verbose
        self.lines_to_stderr = lines_to_stderr
        self.dry_run = dry_run
        self._enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._hash_task: TaskID | None = None
        self._copy_task: TaskID | None = None
        self._files_done = 0
        self._files_total = 0

    def __enter__(self) -> SyncDisplay:
        if self._enabled:
            from rich.progress import Progress, TextColumn

            self._progress = Progress(
                *_byte_columns(TextColumn("{task.fields[files]}")),
                transient=True,
                **_on_stderr(),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def hashing(self, done: int, total: int) -> None:
        """Progress of the listing/hashing phase."""
        if self._progress is None:
            return
        if self._hash_task is None:
            self._hash_task = self._progress.add_task("checking", total=total or None, files="")
        self._progress.update(self._hash_task, completed=done, total=total or None)

    def transferring(self, files_total: int) -> None:
        """Starts the transfer phase."""
        self._files_total = files_total
        if self._progress is not None:
            if self._hash_task is not None:
                self._progress.remove_task(self._hash_task)
            self._copy_task = self._progress.add_task(
                "syncing", total=None, files=f"0/{files_total} files"
            )

    def segments(self, done: int, total: int, moved: int) -> None:
        """Progress of a sharded sync: segments finished, and bytes they transferred."""
        if self._progress is None:
            return
        if self._copy_task is None:
            self._copy_task = self._progress.add_task("segments", total=None, files="")
        self._progress.update(
            self._copy_task, completed=moved, total=None, files=f"{done}/{total} segments"
        )

    def bytes(self, done: int, total: int) -> None:
        """Byte-level transfer progress."""
        if self._progress is not None and self._copy_task is not None:
            self._progress.update(
                self._copy_task,
                completed=done,
                total=total or None,
                files=f"{self._files_done}/{self._files_total} files",
            )

    def event(self, action: str, key: str, error: str | None) -> None:
        """One finished file."""
        if action != "delete":
            self._files_done += 1
        if error is not None:
            self.line(f"failed: {action} {shown(key)}: {shown(error)}", err=True)
        elif self.verbose:
            self.line(f"{action}: {shown(key)}")

    def line(self, text: str, *, err: bool = False) -> None:
        """Prints a line without breaking the bar."""
        err = err or self.lines_to_stderr
        if self._progress is not None and (err or sys.stdout.isatty()):
            # Above the bar, on the terminal the bar is drawn on.
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr if err else sys.stdout)
