"""A Google Cloud Storage emulator on 127.0.0.1, to run GCS tests against a real server.

:class:`GCSEmulator` runs ``gcp-storage-emulator`` (``pip install gcp-storage-emulator``), an
in-memory imitation of the GCS JSON API, as a subprocess on a free port, with the lifecycle of
the S3 servers in :mod:`hashsync.testing.other_s3`::

    with GCSEmulator() as gcs:
        gcs.create_bucket("demo")
        storage = GCSStorage("demo", endpoint_url=gcs.endpoint_url)

What the emulator does not do (so tests of those paths cannot run against it): it ignores
preconditions (``ifGenerationMatch``), so hashsync's probe finds conditions not enforced; it
lists everything in one page; ranged downloads carry no ``x-goog-hash``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable

from hashsync.testing.other_s3 import HOST, ServerProcess, find_executable

__all__ = ["GCSEmulator", "find_gcs_emulator"]


def find_gcs_emulator() -> str:
    """Locate the ``gcp-storage-emulator`` script.

    Raises:
        S3ServerError: If it is not installed (``pip install gcp-storage-emulator``).
    """
    return find_executable("gcp-storage-emulator", "pip install gcp-storage-emulator")


class GCSEmulator(ServerProcess):
    """``gcp-storage-emulator start --in-memory`` on a free 127.0.0.1 port.

    It takes no credentials; clients reach it through ``STORAGE_EMULATOR_HOST``
    (:meth:`env`) or an explicit endpoint.
    """

    name = "gcs-emulator"
    own_env_prefixes = ("STORAGE_EMULATOR_HOST", "GOOGLE_", "PROJECT_NUMBER")

    def _find_binary(self) -> str:
        return find_gcs_emulator()

    def _command(self, binary: str, port: int) -> list[str]:
        return [binary, "start", "--host", HOST, "--port", str(port), "--in-memory"]

    def _child_env(self) -> dict[str, str]:
        env = super()._child_env()
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _ready_probe(self) -> Callable[[], object]:
        def probe() -> None:
            with urllib.request.urlopen(f"{self.endpoint_url}/", timeout=2) as answer:
                answer.read()

        return probe

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the value of ``STORAGE_EMULATOR_HOST`` for this emulator."""
        return f"{HOST}:{self.port}"

    def env(self, *, inherit: bool = False) -> dict[str, str]:
        """``{"STORAGE_EMULATOR_HOST": "127.0.0.1:PORT"}`` (with ``os.environ`` if ``inherit``)."""
        base = dict(os.environ) if inherit else {}
        base["STORAGE_EMULATOR_HOST"] = self.host
        return base

    def client(self, **kwargs: object) -> object:
        """Not an S3 server: use :class:`hashsync.storage.GCSStorage`."""
        raise NotImplementedError("the GCS emulator has no boto3 client")

    def create_bucket(self, name: str) -> str:
        """Create a bucket (``buckets.insert``), succeeding if it already exists."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
        return name

    def wipe(self) -> None:
        """Delete every object and bucket (the emulator's ``/wipe``)."""
        with urllib.request.urlopen(f"{self.endpoint_url}/wipe", timeout=10) as answer:
            answer.read()
