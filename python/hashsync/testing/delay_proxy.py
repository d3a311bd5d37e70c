"""A delay proxy: a server on 127.0.0.1 made to look like one across a network.

:class:`DelayProxy` runs ``delay-proxy`` (a small std-only Rust program in
``benches/delay-proxy``) in front of an upstream such as a :class:`~hashsync.testing.SeaweedFS`
server. It forwards TCP bytes unchanged (the Host header and SigV4 signatures pass untouched;
clients sign for the proxy's address) and delays every byte by ``delay_ms`` each way, so a
request/response on a kept-alive connection costs one round trip of ``2 * delay_ms`` and one
on a fresh connection two (the TCP handshake's round trip comes first). Data in flight is
pipelined, so a large transfer keeps its throughput and only gains latency. Each connection
gets its own threads, so hundreds of concurrent connections do not queue behind each other::

    with SeaweedFS() as s3, DelayProxy(s3.endpoint_url, delay_ms=10) as proxy:
        storage = S3Storage("bucket", endpoint_url=proxy.url, ...)  # a 20 ms round trip

The binary is found by :func:`find_delay_proxy`, which builds it with cargo in a source
checkout. The proxy runs in its own process group, is stopped by :meth:`DelayProxy.stop`, at
interpreter exit, and (on Linux) when the Python process that started it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Self

from hashsync.testing.seaweedfs import HOST, pdeathsig_preexec

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DelayProxy", "DelayProxyError", "find_delay_proxy"]

#: Environment variable naming a built ``delay-proxy`` binary to use instead of the checkout's.
ENV_VAR = "HASHSYNC_DELAY_PROXY"

# python/hashsync/testing/delay_proxy.py -> the repository root (in a source checkout).
_REPO = Path(__file__).resolve().parents[3]
_CRATE = _REPO / "benches" / "delay-proxy"
_TARGET_DIR = _CRATE / "target"
_BINARY = _TARGET_DIR / "release" / "delay-proxy"
_BUILD_COMMAND = "cargo build --release --manifest-path benches/delay-proxy/Cargo.toml"

_build_lock = threading.Lock()


class DelayProxyError(RuntimeError):
    """The delay proxy could not be found, built or started."""


def _is_fresh(binary: Path) -> bool:
    """Whether ``binary`` exists and is newer than the crate's manifest and sources."""
    try:
        built = binary.stat().st_mtime
    except OSError:
        return False
    sources = [_CRATE / "Cargo.toml", *(_CRATE / "src").rglob("*.rs")]
    return all(source.stat().st_mtime <= built for source in sources if source.exists())


def _find_cargo() -> str | None:
    """Locate cargo on ``PATH``, else where rustup puts it."""
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")
    candidate = home / "bin" / "cargo"
    return str(candidate) if os.access(candidate, os.X_OK) else None


def find_delay_proxy(*, build: bool = True) -> str:
    """Locate the ``delay-proxy`` binary, building it with cargo if needed.

    Looks at ``$HASHSYNC_DELAY_PROXY`` first, then at
    ``benches/delay-proxy/target/release/delay-proxy`` in the source checkout this module
    belongs to, which is used if it is newer than its sources and otherwise (re)built with
    ``cargo build --release``.

    Args:
        build: Whether to run cargo when the checkout's binary is missing or stale; if False,
            such a binary is an error.

    Returns:
        The path of an executable ``delay-proxy``.

    Raises:
        DelayProxyError: ``$HASHSYNC_DELAY_PROXY`` is not an executable, this module is not in
            a source checkout (an installed wheel has no ``benches/``), cargo is missing, or
            the build failed.
    """
    named = os.environ.get(ENV_VAR)
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise DelayProxyError(f"{ENV_VAR}={named!r} is not an executable file")
        return named
    manifest = _CRATE / "Cargo.toml"
    if not manifest.is_file():
        raise DelayProxyError(
            "the delay proxy is built from benches/delay-proxy of a hashsync source checkout, "
            f"and this hashsync ({_REPO}) is not one: in a checkout, run `{_BUILD_COMMAND}` "
            f"and set {ENV_VAR} to benches/delay-proxy/target/release/delay-proxy"
        )
    with _build_lock:
        if _is_fresh(_BINARY):
            return str(_BINARY)
        if not build:
            raise DelayProxyError(f"{_BINARY} is missing or stale: run `{_BUILD_COMMAND}`")
        cargo = _find_cargo()
        if cargo is None:
            raise DelayProxyError(
                "cargo is not on PATH, so the delay proxy cannot be built: install Rust "
                f"(https://rustup.rs), then run `{_BUILD_COMMAND}` in {_REPO}"
            )
        command = [
            cargo,
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            str(manifest),
            "--target-dir",
            str(_TARGET_DIR),
        ]
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise DelayProxyError(
                f"building the delay proxy failed ({' '.join(command)}):\n{done.stderr[-4000:]}"
            )
        if not _BINARY.is_file():
            raise DelayProxyError(f"cargo build succeeded but {_BINARY} is missing")
        # Cargo leaves an up-to-date binary's mtime alone; make the freshness check agree.
        _BINARY.touch()
        return str(_BINARY)


class DelayProxy:
    """Run ``delay-proxy`` on 127.0.0.1 in front of ``upstream_url``.

    Args:
        upstream_url: Where connections go, ``http://host:port`` (``https`` is forwarded as
            opaque bytes too); a path is kept in :attr:`url`.
        delay_ms: Delay added to every byte in each direction; a round trip gains twice this.
        queue_bytes: Bytes the proxy holds per direction of a connection before it stops
            reading, its window: one connection carries at most ``queue_bytes / delay``.
            ``None`` keeps the binary's default of 32 MiB (3.2 GB/s at a 10 ms delay).
        binary: The ``delay-proxy`` executable; found with :func:`find_delay_proxy` if None.
        startup_timeout: Seconds to wait for the proxy to report its address.

    Example:
        >>> with DelayProxy("http://127.0.0.1:8333", delay_ms=10) as proxy:  # doctest: +SKIP
        ...     run_tool(endpoint=proxy.url)  # every request now costs >= 20 ms
    """

    def __init__(
        self,
        upstream_url: str,
        delay_ms: float = 10.0,
        *,
        queue_bytes: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        target = urllib.parse.urlsplit(upstream_url)
        if target.scheme not in ("http", "https") or not target.hostname:
            raise ValueError(f"upstream_url must be http://host:port, not {upstream_url!r}")
        port = target.port or (443 if target.scheme == "https" else 80)
        if not (math.isfinite(delay_ms) and delay_ms >= 0):
            raise ValueError(f"delay_ms must be a non-negative number, not {delay_ms!r}")
        if queue_bytes is not None and queue_bytes <= 0:
            raise ValueError(f"queue_bytes must be positive, not {queue_bytes!r}")
        host = target.hostname
        #: The URL connections are forwarded to.
        self.upstream_url = upstream_url
        #: The one-way delay in milliseconds.
        self.delay_ms = float(delay_ms)
        self.queue_bytes = queue_bytes
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._split = target
        self._upstream = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        where = f" on port {self._port}" if self._port else ""
        return f"DelayProxy({self.upstream_url!r}, delay_ms={self.delay_ms:g}){where}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the proxy and wait until it listens; a no-op if it is running.

        Returns:
            This proxy, so ``proxy = DelayProxy(url).start()`` works.

        Raises:
            DelayProxyError: The binary could not be found or built, or the proxy did not
                report its address (its own error message, if any, is on stderr).
        """
        with self._lock:
            if self.is_running:
                return self
            self._terminate()
            binary = self._binary or find_delay_proxy()
            command = [
                binary,
                "--listen",
                f"{HOST}:0",
                "--upstream",
                self._upstream,
                "--delay-ms",
                repr(self.delay_ms),
            ]
            if self.queue_bytes is not None:
                command += ["--queue-bytes", str(self.queue_bytes)]
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    # Inherited: the proxy only writes there when something goes wrong.
                    stderr=None,
                    # Own process group: a Ctrl-C meant for the caller must not reach the proxy
                    # before the caller's teardown does, and stop() can kill the whole group.
                    start_new_session=True,
                    preexec_fn=pdeathsig_preexec(),
                )
            except OSError as exc:
                raise DelayProxyError(f"cannot run {binary}: {exc}") from exc
            _running.add(self)
            try:
                self._port = self._read_port(self._proc)
            except BaseException:
                self._terminate()
                raise
        return self

    def _read_port(self, proc: subprocess.Popen[bytes]) -> int:
        """Read the ``listening HOST:PORT`` line the proxy prints once bound."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        try:
            while b"\n" not in line:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DelayProxyError(
                        f"delay-proxy did not report its address within {self.startup_timeout:g} s"
                    )
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                more = os.read(fd, 4096)
                if not more:
                    code = proc.wait(timeout=5)
                    raise DelayProxyError(
                        f"delay-proxy exited with status {code} during startup (see its stderr)"
                    )
                line += more
        finally:
            # Nothing else comes on stdout.
            proc.stdout.close()
        first = line.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        word, _, address = first.partition(" ")
        port = address.rpartition(":")[2]
        if word != "listening" or not port.isdigit():
            raise DelayProxyError(f"unexpected first line from delay-proxy: {first!r}")
        return int(port)

    def stop(self) -> None:
        """Stop the proxy (SIGTERM to its process group, SIGKILL if it lingers).

        Open connections through it are cut. Safe to call more than once and on a proxy that
        was never started.
        """
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # Unreaped, the group leader's pid cannot be reused, so killpg cannot hit a stranger.
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        self._port = None
        _running.discard(self)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    # -- information -----------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the proxy process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the proxy while it runs, else ``None``."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def port(self) -> int:
        """The port the proxy listens on (on 127.0.0.1).

        Raises:
            DelayProxyError: The proxy is not running.
        """
        if self._port is None or not self.is_running:
            raise DelayProxyError("the delay proxy is not running: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``upstream_url`` with the proxy's address: same scheme, path and query.

        Raises:
            DelayProxyError: The proxy is not running.
        """
        return urllib.parse.urlunsplit(self._split._replace(netloc=f"{HOST}:{self.port}"))


# Strong references: a proxy nobody holds any more must still be stopped at exit.
_running: set[DelayProxy] = set()


def _stop_all_at_exit() -> None:
    for proxy in list(_running):
        # A forked child inherits this hook and the set; it must not stop its parent's proxies.
        if proxy._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                proxy.stop()


atexit.register(_stop_all_at_exit)
