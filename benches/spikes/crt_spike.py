#!/usr/bin/env python3
"""Spike: awscrt's ``S3Client`` as hashsync's one transfer engine (issue 26, item 1).

A standalone script (the package never imports it). It drives ``awscrt.s3.S3Client`` directly
against a throwaway SeaweedFS and answers two questions:

1. **Speed.** Upload and download N small files (1-64 KiB, N=3000) and 2 big files (1 GiB,
   8 MiB parts), each object with CRC64NVME (``S3ChecksumConfig(CRC64NVME, HEADER)``) and
   hashsync's ``x-amz-meta-hashsync-crc64nvme``; every download lands in a temp name, is checked
   (size and CRC64NVME against the metadata) and renamed. Side by side with hashsync as it is
   (``hashsync.sync`` with ``S3Storage``) and s5cmd (default settings), tools alternating,
   median of ``--runs``; on loopback and, when ``hashsync.testing.delay_proxy`` exists, through
   the delay proxy at a 20 ms round trip.
2. **Fit.** Probes (a)-(i): conditional writes incl. multipart completion, predictable ETags,
   If-Match pinning of ranged GETs and an object changed mid-download, what the CRT sends for
   CRC64NVME, DEFAULT requests (ListObjectsV2, HeadObject, DeleteObjects, CopyObject) and their
   errors, botocore credentials through ``new_delegate``, import cost, the concurrency knobs,
   and stores that bend the rules (a store ignoring Range; ``rclone serve s3``).

Run it with the project's venv::

    .venv/bin/python benches/spikes/crt_spike.py              # ~10-11 min on 2 busy cores
    .venv/bin/python benches/spikes/crt_spike.py --quick      # ~2 min, smaller sets, 1 run
    .venv/bin/python benches/spikes/crt_spike.py --probes-only
    .venv/bin/python benches/spikes/crt_spike.py --json out.json

Findings and measured numbers are in ``benches/spikes/README.md``.
"""

# A throwaway measurement script: long report lines, and probe lambdas that run inside their loop.
# ruff: noqa: E501, B023

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import http.server
import io
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import awscrt
from awscrt.auth import AwsCredentials, AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.s3 import (
    S3ChecksumAlgorithm,
    S3ChecksumConfig,
    S3ChecksumLocation,
    S3Client,
    S3Request,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    create_default_s3_signing_config,
)

import hashsync
from hashsync.storage import S3Storage
from hashsync.testing import SeaweedFS
from hashsync.testing.seaweedfs import find_s5cmd

try:  # Being written alongside this spike; the 20 ms runs are skipped without it.
    from hashsync.testing.delay_proxy import DelayProxy
except ImportError:  # pragma: no cover
    DelayProxy = None  # type: ignore[assignment,misc]

KiB = 1 << 10
MiB = 1 << 20
PART = 8 * MiB
REGION = "us-east-1"
CRC_META = "x-amz-meta-hashsync-crc64nvme"
BUCKET = "crtspike"


# --------------------------------------------------------------------------------------------
# The engine under test: a thin layer over awscrt.s3.S3Client
# --------------------------------------------------------------------------------------------


def b64_of_hex(digest: str) -> str:
    return base64.b64encode(bytes.fromhex(digest)).decode()


def xml_code(body: bytes | None) -> str | None:
    if not body:
        return None
    m = re.search(rb"<Code>([^<]*)</Code>", body)
    return m.group(1).decode() if m else None


def describe(exc: BaseException | None) -> str:
    """One line for an error the CRT raised (its S3ResponseError fields, or the CRT error)."""
    if exc is None:
        return "ok"
    if isinstance(exc, S3ResponseError):
        return (
            f"S3ResponseError(status_code={exc.status_code}, operation_name={exc.operation_name!r}, "
            f"name={exc.name}, xml Code={xml_code(exc.body)!r}, body={'None' if exc.body is None else f'{len(exc.body)} bytes'})"
        )
    return f"{type(exc).__name__}({getattr(exc, 'name', '')}: {exc})"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _text(elem: ET.Element, name: str) -> str | None:
    found = _find(elem, name)
    return found[0].text if found else None


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes


class Crt:
    """What an awscrt-based S3 engine for hashsync would start from (path-style addressing).

    ``throughput_gbps`` is the knob that raises concurrency (the CRT opens
    ``throughput / 0.4 Gbps`` connections, 25 by default); ``max_conns`` only lowers it.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        provider: AwsCredentialsProvider | None = None,
        throughput_gbps: float | None = None,
        max_conns: int | None = None,
        memory_limit: int | None = None,
        part_size: int = PART,
        window: int = 1024,
    ) -> None:
        split = urllib.parse.urlsplit(endpoint)
        self.host = split.netloc
        if provider is None:
            provider = AwsCredentialsProvider.new_static(access_key, secret_key)
        signing = create_default_s3_signing_config(region=REGION, credential_provider=provider)
        self.part_size = part_size
        self.window = window
        self.client = S3Client(
            region=REGION,
            tls_mode=S3RequestTlsMode.DISABLED
            if split.scheme == "http"
            else S3RequestTlsMode.ENABLED,
            signing_config=signing,
            part_size=part_size,
            multipart_upload_threshold=part_size,
            throughput_target_gbps=throughput_gbps,
            max_active_connections_override=max_conns,
            memory_limit=memory_limit,
        )

    def close(self) -> None:
        """Release the client and wait for its threads and connections to shut down."""
        client = self.__dict__.pop("client", None)
        if client is not None:
            event = client.shutdown_event
            del client
            if not event.wait(10):
                print(
                    "    (warning: S3Client still alive 10 s after close: requests still referenced)",
                    flush=True,
                )

    # -- requests -----------------------------------------------------------------------------

    def http_request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        query: list[tuple[str, str | None]] | None = None,
        headers: list[tuple[str, str]] | tuple = (),
        body: bytes | None = None,
    ) -> HttpRequest:
        path = f"/{bucket}"
        if key:
            path += "/" + urllib.parse.quote(key, safe="/~")
        if query:
            path += "?" + "&".join(
                k if v is None else f"{k}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query
            )
        h = HttpHeaders([("Host", self.host), *headers])
        stream = None
        if body is not None:
            h.set("Content-Length", str(len(body)))
            stream = io.BytesIO(body)
        return HttpRequest(method, path, h, stream)

    def call(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: list[tuple[str, str | None]] | None = None,
        headers: list[tuple[str, str]] | tuple = (),
        body: bytes | None = None,
        request_type: int = S3RequestType.DEFAULT,
    ) -> Answer:
        """One signed request of the DEFAULT type (the CRT signs, retries, parses errors)."""
        got: dict[str, Any] = {"status": None, "headers": [], "chunks": []}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            got["status"], got["headers"] = status_code, headers

        def on_body(chunk: bytes, offset: int, **_: Any) -> None:
            got["chunks"].append(bytes(chunk))

        request = self.client.make_request(
            type=request_type,
            operation_name=operation,
            request=self.http_request(method, bucket, key, query, headers, body),
            on_headers=on_headers,
            on_body=on_body,
        )
        request.finished_future.result()
        return Answer(
            got["status"], {k.lower(): v for k, v in got["headers"]}, b"".join(got["chunks"])
        )

    def list(
        self, bucket: str, prefix: str, delimiter: str | None = None, max_keys: int | None = None
    ) -> tuple[dict[str, tuple[int, str]], list[str], int]:
        """ListObjectsV2, all pages: ({key: (size, etag)}, common prefixes, pages)."""
        objects: dict[str, tuple[int, str]] = {}
        prefixes: list[str] = []
        token = None
        pages = 0
        while True:
            query: list[tuple[str, str | None]] = [("list-type", "2"), ("prefix", prefix)]
            if delimiter:
                query.append(("delimiter", delimiter))
            if max_keys:
                query.append(("max-keys", str(max_keys)))
            if token:
                query.append(("continuation-token", token))
            root = ET.fromstring(self.call("ListObjectsV2", "GET", bucket, query=query).body)
            pages += 1
            for c in _find(root, "Contents"):
                objects[_text(c, "Key") or ""] = (
                    int(_text(c, "Size") or 0),
                    (_text(c, "ETag") or "").strip('"'),
                )
            prefixes += [_text(p, "Prefix") or "" for p in _find(root, "CommonPrefixes")]
            if _text(root, "IsTruncated") != "true":
                return objects, prefixes, pages
            token = _text(root, "NextContinuationToken")

    def head(self, bucket: str, key: str, headers: tuple = ()) -> Answer:
        return self.call("HeadObject", "HEAD", bucket, key, headers=headers)

    def delete_objects(self, bucket: str, keys: list[str], *, md5: bool = True) -> list[str]:
        """DeleteObjects in batches of 1,000; returns the keys the store refused."""
        refused: list[str] = []
        for i in range(0, len(keys), 1000):
            body = (
                "<Delete><Quiet>true</Quiet>"
                + "".join(
                    f"<Object><Key>{xml_escape(k)}</Key></Object>" for k in keys[i : i + 1000]
                )
                + "</Delete>"
            ).encode()
            headers = [("Content-Type", "application/xml")]
            if md5:
                headers.append(
                    ("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
                )
            answer = self.call(
                "DeleteObjects",
                "POST",
                bucket,
                query=[("delete", None)],
                headers=headers,
                body=body,
            )
            root = ET.fromstring(answer.body)
            refused += [_text(e, "Key") or "" for e in _find(root, "Error")]
        return refused

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        keys = list(self.list(bucket, prefix)[0])
        if keys:
            refused = self.delete_objects(bucket, keys)
            if refused:
                raise RuntimeError(f"DeleteObjects refused {len(refused)} keys, e.g. {refused[:3]}")

    def put_file(
        self,
        bucket: str,
        key: str,
        path: str | os.PathLike[str],
        *,
        crc: str | None = None,
        headers: list[tuple[str, str]] | tuple = (),
        checksum: bool = True,
        on_headers: Callable[..., None] | None = None,
        on_done: Callable[..., None] | None = None,
    ) -> S3Request:
        """PUT_OBJECT from a file: one PUT up to the part size, multipart above it."""
        h = [
            ("Content-Length", str(os.path.getsize(path))),
            ("Content-Type", "application/octet-stream"),
        ]
        if crc:
            h.append((CRC_META, crc))
        h += list(headers)
        config = (
            S3ChecksumConfig(
                algorithm=S3ChecksumAlgorithm.CRC64NVME, location=S3ChecksumLocation.HEADER
            )
            if checksum
            else None
        )
        return self.client.make_request(
            type=S3RequestType.PUT_OBJECT,
            request=self.http_request("PUT", bucket, key, headers=h),
            send_filepath=str(path),
            checksum_config=config,
            on_headers=on_headers,
            on_done=on_done,
        )

    def get_file(
        self,
        bucket: str,
        key: str,
        dest: str | os.PathLike[str],
        *,
        headers: list[tuple[str, str]] | tuple = (),
        checksum_config: S3ChecksumConfig | None = None,
        on_headers: Callable[..., None] | None = None,
        on_done: Callable[..., None] | None = None,
    ) -> S3Request:
        """GET_OBJECT into a file: ranged part GETs (the first one discovers the size)."""
        return self.client.make_request(
            type=S3RequestType.GET_OBJECT,
            request=self.http_request("GET", bucket, key, headers=headers),
            recv_filepath=str(dest),
            checksum_config=checksum_config,
            on_headers=on_headers,
            on_done=on_done,
        )


class TransferError(RuntimeError):
    pass


def crt_upload(crt: Crt, bucket: str, prefix: str, files: list[tuple[str, Path]]) -> None:
    """Upload a tree the way a CRT engine would: list the destination, then PUT through a window."""
    crt.list(bucket, prefix)  # a sync looks at the destination first
    slots = threading.BoundedSemaphore(crt.window)
    pending: list[S3Request] = []
    for rel, path in files:
        crc = hashsync.hash_file(path, "crc64nvme")
        slots.acquire()
        request = crt.put_file(bucket, prefix + rel, path, crc=crc)
        request.finished_future.add_done_callback(lambda _f: slots.release())
        pending.append(request)
    errors = []
    for (rel, _), request in zip(files, pending, strict=True):
        try:
            request.finished_future.result()
        except Exception as exc:  # noqa: BLE001 - collected and reported
            errors.append(f"{rel}: {describe(exc)}")
    if errors:
        raise TransferError(f"{len(errors)} uploads failed, e.g. {errors[:3]}")


def crt_download(crt: Crt, bucket: str, prefix: str, dest_dir: Path) -> int:
    """Download a prefix: list, GET_OBJECT each key to a temp name, verify, rename."""
    listing = crt.list(bucket, prefix)[0]
    slots = threading.BoundedSemaphore(crt.window)
    checks: queue.Queue[Any] = queue.Queue()
    errors: list[str] = []

    def verifier() -> None:
        while (item := checks.get()) is not None:
            future, tmp, dest, size, meta = item
            exc = future.exception()
            if exc is not None:
                errors.append(f"{dest.name}: {describe(exc)}")
                continue
            got_size = os.path.getsize(tmp)
            if got_size != size:
                errors.append(f"{dest.name}: size {got_size} != {size}")
                continue
            crc = hashsync.hash_file(tmp, "crc64nvme")
            if crc != meta.get("crc"):
                errors.append(f"{dest.name}: crc64nvme {crc} != {meta.get('crc')}")
                continue
            os.replace(tmp, dest)

    thread = threading.Thread(target=verifier, daemon=True)
    thread.start()
    made: set[Path] = set()
    pending: list[S3Request] = []
    for key, (size, _etag) in listing.items():
        dest = dest_dir / key[len(prefix) :]
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        tmp = dest.with_name(f".{dest.name}.crt-tmp")
        meta: dict[str, str] = {}

        def on_headers(status_code: int, headers: list, meta: dict = meta, **_: Any) -> None:
            for name, value in headers:
                if name.lower() == CRC_META:
                    meta["crc"] = value

        slots.acquire()
        request = crt.get_file(bucket, key, tmp, on_headers=on_headers)

        def done(
            f: Any, tmp: Path = tmp, dest: Path = dest, size: int = size, meta: dict = meta
        ) -> None:
            slots.release()
            checks.put((f, tmp, dest, size, meta))

        request.finished_future.add_done_callback(done)
        pending.append(request)
    for request in pending:
        with contextlib.suppress(Exception):
            request.finished_future.result()
    checks.put(None)
    thread.join()
    if errors:
        raise TransferError(f"{len(errors)} downloads failed, e.g. {errors[:3]}")
    return len(listing)


# --------------------------------------------------------------------------------------------
# Data sets, the other tools, verification
# --------------------------------------------------------------------------------------------


def make_small(root: Path, n: int, seed: int = 26) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"f{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(1 * KiB, 64 * KiB)))


def make_big(root: Path, mib: int, count: int = 2) -> None:
    root.mkdir(parents=True)
    for i in range(count):
        with open(root / f"big{i}.bin", "wb") as fh:
            for _ in range(mib):
                fh.write(os.urandom(MiB))


def tree_files(root: Path) -> list[tuple[str, Path]]:
    return sorted((p.name, p) for p in root.iterdir() if p.is_file())


def tree_digests(root: Path) -> dict[str, tuple[int, str]]:
    return {
        rel: (p.stat().st_size, hashsync.hash_file(p, "crc64nvme")) for rel, p in tree_files(root)
    }


@dataclass
class Env:
    server: SeaweedFS
    endpoint: str  # the server's, or the delay proxy's
    s5cmd: str
    label: str

    def storage(self, prefix: str) -> S3Storage:
        return S3Storage(
            BUCKET,
            prefix,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
            region_name=REGION,
        )

    def tool_env(self) -> dict[str, str]:
        env = self.server.env(inherit=True)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL"):
            env[name] = self.endpoint
        return env


#: CRT settings compared in the main table: name -> Crt keyword arguments.
CRT_SETTINGS: dict[str, dict[str, Any]] = {
    "crt": {},  # defaults: throughput target 10 Gbps -> 25 connections
    "crt-64": {"throughput_gbps": 25.6},  # 64 connections
    "crt-256": {"throughput_gbps": 102.4},  # 256 connections
}


def run_tool(tool: str, direction: str, env: Env, src: Path, prefix: str, dest: Path) -> None:
    if tool.startswith("crt"):
        crt = Crt(env.endpoint, env.server.access_key, env.server.secret_key, **CRT_SETTINGS[tool])
        try:
            if direction == "up":
                crt_upload(crt, BUCKET, prefix, tree_files(src))
            else:
                crt_download(crt, BUCKET, prefix, dest)
        finally:
            crt.close()
    elif tool == "hashsync":
        if direction == "up":
            hashsync.sync(str(src), env.storage(prefix))
        else:
            hashsync.sync(env.storage(prefix), str(dest))
    elif tool == "s5cmd":
        base = [env.s5cmd, "--endpoint-url", env.endpoint, "cp"]
        cmd = (
            [*base, f"{src}/*", f"s3://{BUCKET}/{prefix}"]
            if direction == "up"
            else [*base, f"s3://{BUCKET}/{prefix}*", f"{dest}/"]
        )
        subprocess.run(cmd, env=env.tool_env(), check=True, stdout=subprocess.DEVNULL)
    else:
        raise ValueError(tool)


def check_remote(crt: Crt, prefix: str, expected: dict[str, tuple[int, str]]) -> None:
    listing = crt.list(BUCKET, prefix)[0]
    got = {k[len(prefix) :]: size for k, (size, _) in listing.items()}
    want = {k: size for k, (size, _) in expected.items()}
    if got != want:
        missing = set(want) - set(got)
        raise TransferError(
            f"remote {prefix}: {len(got)} objects, {len(missing)} missing or sizes differ"
        )


def check_local(dest: Path, expected: dict[str, tuple[int, str]]) -> None:
    got = tree_digests(dest)
    if got != expected:
        bad = [k for k in expected if got.get(k) != expected[k]]
        raise TransferError(f"{dest}: {len(bad)} files wrong or missing (of {len(expected)})")


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    # (scenario, direction) -> tool -> list of seconds
    times: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    # the same for the client's CPU seconds (user+sys of this process and of s5cmd)
    cpu: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)

    def add(self, scenario: str, direction: str, tool: str, seconds: float, cpu: float) -> None:
        self.times.setdefault((scenario, direction), {}).setdefault(tool, []).append(seconds)
        self.cpu.setdefault((scenario, direction), {}).setdefault(tool, []).append(cpu)


def bench_scenario(
    env: Env,
    scenario: str,
    src: Path,
    tools: list[str],
    runs: int,
    work: Path,
    results: Results,
    admin: Crt,
    label: str | None = None,
) -> None:
    expected = tree_digests(src)
    label = label or env.label
    for run in range(runs):
        order = tools[run % len(tools) :] + tools[: run % len(tools)]  # rotate who goes first
        for tool in order:
            prefix = f"{scenario}/{label}/r{run}/{tool}/"
            dest = work / f"dl-{scenario}-{label}-{run}-{tool}"
            dest.mkdir()
            for direction in ("up", "down"):
                seconds, cpu, _ = measured(
                    0, lambda: run_tool(tool, direction, env, src, prefix, dest), False
                )
                results.add(f"{scenario} {label}", direction, tool, seconds, cpu)
                if direction == "up":
                    check_remote(admin, prefix, expected)
                print(
                    f"    {scenario:5} {label:8} run {run} {tool:9} {direction:4} {seconds:7.2f} s  CPU {cpu:6.2f} s",
                    flush=True,
                )
            check_local(dest, expected)
            shutil.rmtree(dest)
            admin.delete_prefix(BUCKET, prefix)


def table(
    results: Results, tools: list[str], n_small: int, big_mib: int, metric: str = "times"
) -> str:
    names = {
        "small": f"{n_small:,} files of 1-64 KiB",
        "big": f"2 files of {big_mib:,} MiB",
    }
    lines = [
        "| workload | "
        + " | ".join(tools)
        + " | "
        + " | ".join(f"{t}/s5cmd" for t in tools if t != "s5cmd")
        + " |",
        "|---|" + "---:|" * (2 * len(tools) - 1),
    ]
    for (scenario, direction), per_tool in getattr(results, metric).items():
        kind, label = scenario.split(" ", 1)
        med = {t: statistics.median(v) for t, v in per_tool.items()}
        cells = [f"{med[t]:.2f} s" if t in med else "-" for t in tools]
        base = med.get("s5cmd")
        ratios = [
            f"{med[t] / base:.2f}" if base and t in med else "-" for t in tools if t != "s5cmd"
        ]
        what = f"{names[kind]}, {'upload' if direction == 'up' else 'download'}, {label}"
        lines.append(f"| {what} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# A logging proxy for the probes (records each request's interesting headers)
# --------------------------------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_INTERESTING = re.compile(
    r"^(range|if-match|if-none-match|content-md5|content-range|x-amz-checksum.*|x-amz-sdk-checksum-algorithm"
    r"|x-amz-meta-.*|x-amz-mp-object-size|x-amz-copy-source|x-amz-checksum-mode|etag"
    r"|content-encoding|x-amz-trailer|x-amz-decoded-content-length|x-amz-content-sha256)$",
    re.I,
)


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    response: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    answer: bytes = b""

    def short(self) -> str:
        path = re.sub(r"uploadId=[^&]+", "uploadId=…", self.path)
        hdrs = ", ".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {path} [{hdrs}] -> {self.status}"


@contextlib.contextmanager
def logging_proxy(
    upstream: str,
    *,
    before: Callable[[str, str, dict[str, str]], None] | None = None,
    whole_object: Callable[[str], bytes] | None = None,
    range_as_200: bool = False,
) -> Iterator[tuple[str, list[Logged]]]:
    """A forwarding HTTP/1.1 proxy on 127.0.0.1 logging every request.

    ``before(method, path, headers)`` runs before a request is forwarded (a test's chance to
    change the object). Two ways to bend Range: ``whole_object(path)`` answers a ranged GET
    with 200 and the whole object (a store that ignores Range); ``range_as_200`` keeps the
    ranged body and Content-Range but says 200 instead of 206 (rclone serve s3).
    """
    target = urllib.parse.urlsplit(upstream)
    log: list[Logged] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            entry = Logged(
                self.command,
                self.path,
                {k.lower(): v for k, v in headers.items() if _INTERESTING.match(k)},
                body=body[:2000] if body and self.command == "POST" else b"",
            )
            with lock:
                log.append(entry)
            if before is not None:
                with lock:
                    before(self.command, self.path, headers)
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, out_headers = resp.status, resp.getheaders()
            if resp.status == 206 and whole_object is not None:
                data = whole_object(self.path)
                status = 200
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-range"]
            elif resp.status == 206 and range_as_200:
                status = 200
            entry.status = status
            entry.response = {k.lower(): v for k, v in out_headers if _INTERESTING.match(k)}
            if self.command == "POST":
                entry.answer = data[:1000]
            self.send_response(status)
            for k, v in out_headers:
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # The CRT drops connections on purpose (a cancelled or failed meta request).
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def connection_sampler(port: int) -> subprocess.Popen[str]:
    """A subprocess (no GIL shared with the tool) counting ESTABLISHED TCP connections to port."""
    code = f"""
import signal, sys, time
seen, peak, stop, base = set(), 0, False, None
def quit(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, quit)
want = ':{port:04X}'
while not stop:
    now, ports = 0, set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == '01' and f[2].endswith(want):
                ports.add(f[1])
    if base is None:
        base = ports  # connections open before the run (other clients' idle pools) do not count
    ports -= base
    seen |= ports
    peak = max(peak, len(ports))
    time.sleep(0.05)
print(peak, len(seen), flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # let it take its baseline
    return proc


def sampled(proc: subprocess.Popen[str]) -> tuple[int, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    peak, seen = out.split()
    return int(peak), int(seen)


# --------------------------------------------------------------------------------------------
# Probes (a)-(i)
# --------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def write_random(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = min(left, 4 * MiB)
            fh.write(os.urandom(chunk))
            left -= chunk
    return path


def outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - the probes report errors
        return None, exc


def summarize_log(log: list[Logged], say: Report, indent: str = "      ") -> None:
    for entry in log:
        say(indent + entry.short())


def head_etag(crt: Crt, key: str) -> str | None:
    answer, exc = outcome(lambda: crt.head(BUCKET, key))
    return None if exc else answer.headers.get("etag", "").strip('"')


def unfinished_uploads(crt: Crt, prefix: str) -> int:
    body = crt.call(
        "ListMultipartUploads", "GET", BUCKET, query=[("prefix", prefix), ("uploads", None)]
    ).body
    return len(_find(ET.fromstring(body), "Upload"))


def probe_conditional(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (a) If-None-Match / If-Match on PUT_OBJECT, single-part and multipart")
    small = write_random(work / "a-small", 5000)
    big = write_random(work / "a-big", 20 * MiB + 12345)  # 3 parts of 8 MiB
    big2 = write_random(work / "a-big2", 20 * MiB + 12345)
    with logging_proxy(s3.endpoint_url) as (url, log):
        crt = Crt(url, **crt_kw)

        def put(key: str, path: Path, headers: list[tuple[str, str]]) -> str:
            log.clear()
            _, exc = outcome(
                lambda: crt.put_file(BUCKET, key, path, headers=headers).finished_future.result()
            )
            return describe(exc)

        for label, path in (("single-part (5,000 B)", small), ("multipart (20 MiB, 3 parts)", big)):
            key = f"a/{'single' if path is small else 'multi'}"
            say(f"- {label}, key {key}")
            say(
                f"  first PUT, If-None-Match: * on a new key: {put(key, path, [('If-None-Match', '*')])}"
            )
            etag = head_etag(crt, key)
            other = big2 if path is big else write_random(work / "a-small2", 5000)
            say(
                f"  second PUT (other bytes), If-None-Match: *: {put(key, other, [('If-None-Match', '*')])}"
            )
            summarize_log(log, say, "      request: ")
            after = head_etag(crt, key)
            say(
                f"  object unchanged after the refused PUT: {after == etag} (ETag {etag} -> {after})"
            )
            say(f"  unfinished multipart uploads left under a/: {unfinished_uploads(crt, 'a/')}")
            wrong = '"0123456789abcdef0123456789abcdef"'
            say(f"  If-Match: <wrong ETag>: {put(key, other, [('If-Match', wrong)])}")
            summarize_log(log, say, "      request: ")
            say(f"  unfinished multipart uploads left under a/: {unfinished_uploads(crt, 'a/')}")
            current = f'"{etag}"'
            say(f"  If-Match: <current ETag>: {put(key, other, [('If-Match', current)])}")
            summarize_log(log, say, "      request: ")
            say(f"  object replaced: {head_etag(crt, key) != etag}")


def probe_etag(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (b) multipart ETag == hashsync.etag(path, part_size=8 MiB)")
    crt = Crt(s3.endpoint_url, **crt_kw)
    for size in (PART - 1, PART, PART + 1, 20 * MiB + 7, 41 * MiB):
        path = write_random(work / f"b-{size}", size)
        key = f"b/{size}"
        crt.put_file(
            BUCKET, key, path, crc=hashsync.hash_file(path, "crc64nvme")
        ).finished_future.result()
        stored = head_etag(crt, key)
        mine = hashsync.etag(path, part_size=PART).strip('"')
        say(f"- {size:>10,} B: store ETag {stored}  hashsync.etag {mine}  equal: {stored == mine}")
    mine = hashsync.etag(work / f"b-{PART}", part_size=PART, threshold=PART + 1).strip('"')
    say(
        f"  (an object of exactly one part size: the CRT uploads it in one PUT (multipart only above "
        f"multipart_upload_threshold, default = part size); hashsync.etag(threshold=part+1) gives {mine})"
    )
    for threshold in (PART - 1, 5 * MiB):
        crt2 = Crt(s3.endpoint_url, **crt_kw)
        request = crt2.client.make_request(
            type=S3RequestType.PUT_OBJECT,
            request=crt2.http_request(
                "PUT", BUCKET, "b/t", headers=[("Content-Length", str(PART))]
            ),
            send_filepath=str(work / f"b-{PART}"),
            part_size=PART,
            multipart_upload_threshold=threshold,
        )
        _, exc = outcome(request.finished_future.result)
        say(
            f"  per-request multipart_upload_threshold={threshold:,} for the 8 MiB file: {describe(exc)}, ETag {head_etag(crt, 'b/t')}"
        )


def probe_ranged_get(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (c) GET_OBJECT of a large object: part GETs, If-Match pinning, change mid-download")
    path = write_random(work / "c-obj", 40 * MiB + 99)
    crc = hashsync.hash_file(path, "crc64nvme")
    direct = Crt(s3.endpoint_url, **crt_kw)
    direct.put_file(BUCKET, "c/obj", path, crc=crc).finished_future.result()
    with logging_proxy(s3.endpoint_url) as (url, log):
        crt = Crt(url, **crt_kw)
        dest = work / "c-dl"
        crt.get_file(BUCKET, "c/obj", dest).finished_future.result()
        ok = hashsync.hash_file(dest, "crc64nvme") == crc
        say(f"- plain download of 40 MiB in 8 MiB parts: intact {ok}; requests:")
        summarize_log(log, say)
        pinned = [e for e in log if e.method == "GET" and "if-match" in e.headers]
        say(
            f"  part GETs carrying If-Match: {len(pinned)} of {sum(e.method == 'GET' for e in log)}"
        )

        log.clear()
        dest2 = work / "c-dl2"
        dest2.write_bytes(b"previous content")
        crt.get_file(
            BUCKET,
            "c/small-missing",
            dest2,
        ).finished_future.exception()
        state_ = (
            "gone"
            if not dest2.exists()
            else (
                "unchanged"
                if dest2.read_bytes() == b"previous content"
                else f"now {dest2.stat().st_size} B"
            )
        )
        say(f"- GET_OBJECT (404) into an existing file holding 16 B: the file is {state_}")

    # The object is replaced when the second GET (the first pinned part) reaches the proxy.
    replacement = write_random(work / "c-obj2", 40 * MiB + 99)
    state = {"gets": 0}

    def before(method: str, path_: str, headers: dict[str, str]) -> None:
        if method == "GET" and path_.startswith(f"/{BUCKET}/c/obj"):
            state["gets"] += 1
            if state["gets"] == 2:
                direct.put_file(BUCKET, "c/obj", replacement).finished_future.result()

    with logging_proxy(s3.endpoint_url, before=before) as (url, log):
        crt = Crt(url, **crt_kw)
        dest3 = work / "c-dl3"
        _, exc = outcome(lambda: crt.get_file(BUCKET, "c/obj", dest3).finished_future.result())
        say(f"- object replaced after the first part: {describe(exc)}")
        say(
            f"  partial file left at recv_filepath: {dest3.exists()}"
            + (f" ({dest3.stat().st_size:,} B)" if dest3.exists() else "")
        )
        summarize_log(log[:4], say)

    boto = s3.client()

    def whole(path_: str) -> bytes:
        key = urllib.parse.unquote(path_.split("?")[0].split("/", 2)[2])
        return boto.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    want = hashsync.hash_file(replacement, "crc64nvme")
    for label, kw in (
        (
            "a store that ignores Range (200 + the whole object, no Content-Range)",
            {"whole_object": whole},
        ),
        (
            "a store that answers a range with 200 + Content-Range + the range (rclone serve s3)",
            {"range_as_200": True},
        ),
    ):
        say(f"- {label}:")
        with logging_proxy(s3.endpoint_url, **kw) as (url, log):
            crt = Crt(url, **crt_kw)
            dest4 = work / "c-dl4"
            with contextlib.suppress(FileNotFoundError):
                dest4.unlink()
            _, exc = outcome(lambda: crt.get_file(BUCKET, "c/obj", dest4).finished_future.result())
            size = dest4.stat().st_size if dest4.exists() else None
            intact = exc is None and hashsync.hash_file(dest4, "crc64nvme") == want
            say(
                f"  GET_OBJECT (40 MiB, 8 MiB parts): {describe(exc)}; file {size} B, intact: {intact}"
            )
            summarize_log(log[:3], say)
            answer, exc = outcome(
                lambda: crt.call(
                    "GetObject", "GET", BUCKET, "c/obj", headers=[("Range", "bytes=0-99")]
                )
            )
            what = (
                describe(exc)
                if exc
                else (
                    f"status {answer.status}, {len(answer.body):,} B, Content-Range {answer.headers.get('content-range')}"
                )
            )
            say(f"  a DEFAULT GetObject with Range bytes=0-99: {what}")

    say("- validate_response=True on a multipart object (is the whole object checked?):")
    got: dict[str, Any] = {}
    dest5 = work / "c-dl5"
    direct.get_file(
        BUCKET,
        "c/obj",
        dest5,
        checksum_config=S3ChecksumConfig(validate_response=True),
        on_done=lambda **kw: got.update(kw),
    ).finished_future.result()
    say(
        f"  did_validate_checksum={got.get('did_validate_checksum')} algorithm={got.get('checksum_validation_algorithm')}"
    )
    got.clear()
    direct.put_file(BUCKET, "c/one", work / "a-small").finished_future.result()
    direct.get_file(
        BUCKET,
        "c/one",
        work / "c-dl6",
        checksum_config=S3ChecksumConfig(validate_response=True),
        on_done=lambda **kw: got.update(kw),
    ).finished_future.result()
    say(
        f"  single-part object: did_validate_checksum={got.get('did_validate_checksum')} algorithm={got.get('checksum_validation_algorithm')}"
    )
    got.clear()
    _, exc = outcome(
        lambda: direct.get_file(
            BUCKET,
            "c/obj",
            work / "c-dl7",
            checksum_config=S3ChecksumConfig(
                expected_checksum=base64.b64encode(b"\0" * 8).decode(),
                expected_checksum_algorithm=S3ChecksumAlgorithm.CRC64NVME,
            ),
            on_done=lambda **kw: got.update(kw),
        ).finished_future.result()
    )
    say(f"  expected_checksum (wrong) on the multipart object: {describe(exc)}")
    got.clear()
    _, exc = outcome(
        lambda: direct.get_file(
            BUCKET,
            "c/obj",
            work / "c-dl8",
            checksum_config=S3ChecksumConfig(
                expected_checksum=b64_of_hex(hashsync.hash_file(replacement, "crc64nvme")),
                expected_checksum_algorithm=S3ChecksumAlgorithm.CRC64NVME,
            ),
            on_done=lambda **kw: got.update(kw),
        ).finished_future.result()
    )
    say(
        f"  expected_checksum (right): {describe(exc)} did_validate_checksum={got.get('did_validate_checksum')}"
    )


def probe_checksums(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (d) CRC64NVME on a multipart upload: what the CRT sends")
    path = write_random(work / "d-obj", 20 * MiB + 5)
    crc = hashsync.hash_file(path, "crc64nvme")
    say(f"- hashsync.hash_file crc64nvme {crc} = base64 {b64_of_hex(crc)}")
    with logging_proxy(s3.endpoint_url) as (url, log):
        crt = Crt(url, **crt_kw)
        for label, headers in (
            ("S3ChecksumConfig(CRC64NVME, HEADER) only", []),
            (
                "plus x-amz-checksum-crc64nvme: <full-object CRC> in the request",
                [("x-amz-checksum-crc64nvme", b64_of_hex(crc))],
            ),
            (
                "plus a WRONG full-object CRC",
                [("x-amz-checksum-crc64nvme", base64.b64encode(b"\1" * 8).decode())],
            ),
        ):
            log.clear()
            key = f"d/{len(headers)}-{label[:5]}"
            _, exc = outcome(
                lambda: crt.put_file(
                    BUCKET, key, path, crc=crc, headers=headers
                ).finished_future.result()
            )
            say(f"- {label}: {describe(exc)}")
            summarize_log(log, say)
            complete = [e for e in log if e.method == "POST" and "uploadId" in e.path]
            if complete:
                say(
                    f"      CompleteMultipartUpload body: {complete[0].body[:300].decode(errors='replace')}"
                )
            if exc is None:
                answer = crt.head(BUCKET, key, headers=(("x-amz-checksum-mode", "ENABLED"),))
                stored = {k: v for k, v in answer.headers.items() if k.startswith("x-amz-checksum")}
                say(f"      HEAD (x-amz-checksum-mode: ENABLED) reports: {stored}")


def probe_default(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (e) DEFAULT requests signed by the client, and what errors look like")
    crt = Crt(s3.endpoint_url, **crt_kw)
    tiny = write_random(work / "e-tiny", 10)
    keys = [f"e/list/{i // 100:02d}/k{i:04d}" for i in range(1100)]
    t0 = time.perf_counter()
    reqs = [crt.put_file(BUCKET, k, tiny) for k in keys]
    for r in reqs:
        r.finished_future.result()
    say(f"- 1,100 PUTs of 10 B: {time.perf_counter() - t0:.2f} s")
    objects, prefixes, pages = crt.list(BUCKET, "e/list/")
    say(f"- ListObjectsV2 e/list/: {len(objects)} keys in {pages} pages (continuation tokens work)")
    objects, prefixes, pages = crt.list(BUCKET, "e/list/", delimiter="/")
    say(
        f"- ListObjectsV2 delimiter=/: {len(objects)} keys, {len(prefixes)} common prefixes, e.g. {prefixes[:2]}"
    )
    answer = crt.head(BUCKET, keys[0])
    say(
        f"- HeadObject existing: status {answer.status}, content-length {answer.headers.get('content-length')}, etag {answer.headers.get('etag')}"
    )
    _, exc = outcome(lambda: crt.head(BUCKET, "e/missing"))
    say(f"- HeadObject missing: {describe(exc)}")
    _, exc = outcome(lambda: crt.call("GetObject", "GET", BUCKET, "e/missing"))
    say(f"- GetObject (DEFAULT) missing: {describe(exc)}")
    _, exc = outcome(
        lambda: crt.get_file(BUCKET, "e/missing", work / "e-x").finished_future.result()
    )
    say(f"- GET_OBJECT missing: {describe(exc)}")
    etag = crt.head(BUCKET, keys[0]).headers.get("etag", "")
    answer, exc = outcome(
        lambda: crt.call("GetObject", "GET", BUCKET, keys[0], headers=[("If-None-Match", etag)])
    )
    say(
        f"- GetObject If-None-Match: <etag> (304 expected): {describe(exc) if exc else 'status ' + str(answer.status)}"
    )
    answer, exc = outcome(
        lambda: crt.call("GetObject", "GET", BUCKET, keys[0], headers=[("Range", "bytes=2-5")])
    )
    what = (
        describe(exc)
        if exc
        else f"status {answer.status}, {len(answer.body)} B, content-range {answer.headers.get('content-range')}"
    )
    say(f"- GetObject Range bytes=2-5 (DEFAULT, body in memory): {what}")

    bad = Crt(s3.endpoint_url, s3.access_key, "wrong-secret")
    _, exc = outcome(lambda: bad.head(BUCKET, keys[0]))
    say(f"- HeadObject, wrong secret: {describe(exc)}")
    _, exc = outcome(lambda: bad.list(BUCKET, "e/"))
    say(f"- ListObjectsV2, wrong secret: {describe(exc)}")
    _, exc = outcome(lambda: bad.put_file(BUCKET, "e/x", tiny).finished_future.result())
    say(f"- PUT_OBJECT, wrong secret: {describe(exc)}")
    if isinstance(exc, S3ResponseError):
        say(
            f"  S3ResponseError fields: code={exc.code} name={exc.name} message={exc.message!r} "
            f"status_code={exc.status_code} operation_name={exc.operation_name} headers={len(exc.headers)} body={exc.body[:120]!r}"
        )

    t0 = time.perf_counter()
    refused = crt.delete_objects(BUCKET, keys)
    left = len(crt.list(BUCKET, "e/list/")[0])
    say(
        f"- DeleteObjects (POST ?delete, Content-MD5) of 1,100 keys in 2 batches: refused {len(refused)}, left {left}, {time.perf_counter() - t0:.2f} s"
    )
    crt.put_file(BUCKET, "e/nomd5", tiny).finished_future.result()
    _, exc = outcome(lambda: crt.delete_objects(BUCKET, ["e/nomd5"], md5=False))
    say(f"- DeleteObjects without Content-MD5: {describe(exc)}")

    say(
        "- keys that object_store refuses, through PUT_OBJECT / ListObjectsV2 / GET_OBJECT / DeleteObjects:"
    )
    with logging_proxy(s3.endpoint_url) as (url, log):
        Crt(url, **crt_kw).put_file(BUCKET, "e/odd/../dotdot", tiny).finished_future.exception()
        say(
            f"  the request line the CRT sends for 'e/odd/../dotdot': {log[0].method} {log[0].path}"
        )
    for key in (
        "e/odd/a b+c%20d",
        "e/odd/x//y",
        "e/odd/./dot",
        "e/odd/../dotdot",
        "e/odd/ünï©ødé",
        "e/odd/q?x=1&y#z",
    ):
        _, exc = outcome(lambda: crt.put_file(BUCKET, key, tiny).finished_future.result())
        listed = key in crt.list(BUCKET, "e/odd/")[0]
        dest = work / "e-odd"
        _, exc2 = outcome(lambda: crt.get_file(BUCKET, key, dest).finished_future.result())
        same = exc2 is None and dest.read_bytes() == tiny.read_bytes()
        say(
            f"  {key!r}: put {describe(exc)}; listed back {listed}; get {'ok' if same else describe(exc2)}"
        )
    leftover = list(crt.list(BUCKET, "e/odd/")[0])
    crt.delete_objects(BUCKET, leftover)
    say(
        f"  listed under e/odd/: {leftover}; after DeleteObjects: {list(crt.list(BUCKET, 'e/odd/')[0])}"
    )

    say("- server-side copy:")
    src = write_random(work / "e-copysrc", 20 * MiB)
    crt.put_file(
        BUCKET, "e/copy-src", src, crc=hashsync.hash_file(src, "crc64nvme")
    ).finished_future.result()
    answer, exc = outcome(
        lambda: crt.call(
            "CopyObject",
            "PUT",
            BUCKET,
            "e/copy-dst",
            headers=[("x-amz-copy-source", f"/{BUCKET}/e/copy-src")],
        )
    )
    what = (
        describe(exc)
        if exc
        else f"status {answer.status}, ETag in body {re.findall(rb'<ETag>([^<]*)', answer.body)}, HEAD ETag {head_etag(crt, 'e/copy-dst')}"
    )
    say(f"  CopyObject as a DEFAULT request: {what}")
    for source in (f"/{BUCKET}/e/copy-src", f"{BUCKET}/e/copy-src"):
        answer, exc = outcome(
            lambda: crt.call(
                "CopyObject",
                "PUT",
                BUCKET,
                "e/copy-dst3",
                headers=[("x-amz-copy-source", source)],
                request_type=3,
            )
        )
        what = (
            describe(exc)
            if exc
            else f"status {answer.status}, HEAD ETag {head_etag(crt, 'e/copy-dst3')}"
        )
        say(
            f"  type=3 (C's COPY_OBJECT meta request, not in the Python enum), copy-source {source!r}: {what}"
        )


def probe_credentials(s3: SeaweedFS, crt_kw: dict, work: Path, say: Report) -> None:
    say("\n## (f) credentials from botocore through AwsCredentialsProvider.new_delegate")
    import botocore.session

    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_PROFILE",
        )
    }
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        session = botocore.session.Session()
        resolved = session.get_credentials()
        calls = {"n": 0}

        def delegate() -> AwsCredentials:  # what s3transfer.crt.BotocoreCRTCredentialsWrapper does
            calls["n"] += 1
            frozen = resolved.get_frozen_credentials()
            return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

        crt = Crt(s3.endpoint_url, provider=AwsCredentialsProvider.new_delegate(delegate), **crt_kw)
        tiny = write_random(work / "f-tiny", 100)
        reqs = [crt.put_file(BUCKET, f"f/k{i}", tiny) for i in range(200)]
        errors = [describe(e) for r in reqs if (e := r.finished_future.exception())]
        big = write_random(work / "f-big", 20 * MiB)
        before = calls["n"]
        crt.put_file(BUCKET, "f/big", big).finished_future.result()
        say(
            f"- botocore method {resolved.method!r}; 200 PUTs: {len(errors)} errors; the delegate was called "
            f"{before} times (once per signed request), a 3-part upload {calls['n'] - before} more"
        )
        chain = Crt(s3.endpoint_url, provider=AwsCredentialsProvider.new_default_chain(), **crt_kw)
        _, exc = outcome(lambda: chain.list(BUCKET, "f/"))
        say(
            f"- AwsCredentialsProvider.new_default_chain() (CRT's own env/profile/ECS/IMDS chain), env keys: {describe(exc)}"
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def probe_imports(say: Report) -> None:
    say("\n## (g) import cost (fastest of 7 fresh interpreters; the machine is shared)")

    def wall(code: str) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t0)
        return min(times)

    base = wall("pass")
    for code in (
        "import awscrt.s3",
        "import botocore.session",
        "import boto3",
        "import hashsync",
        "import hashsync.storage.s3",
    ):
        say(
            f"- `{code}`: +{(wall(code) - base) * 1000:.0f} ms over a bare interpreter ({base * 1000:.0f} ms)"
        )
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import awscrt.s3"],
        capture_output=True,
        text=True,
    ).stderr
    rows = [
        line.split("|")
        for line in out.splitlines()
        if "|" in line and "import time:" in line and "self" not in line
    ]
    top = sorted(((int(r[0].split(":")[1]), r[2].strip()) for r in rows), reverse=True)[:4]
    cumulative = {r[2].strip(): int(r[1]) for r in rows}
    say(
        f"- -X importtime: awscrt.s3 cumulative {cumulative.get('awscrt.s3', 0) / 1000:.1f} ms; largest self times: "
        + ", ".join(f"{name} {us / 1000:.1f} ms" for us, name in top)
    )


def measured(
    port: int, fn: Callable[[], Any], sample: bool = True
) -> tuple[float, float, tuple[int, int] | None]:
    """Run fn: (wall seconds, client CPU seconds, (peak, opened) connections to port or None).

    Client CPU is this process's (all threads: the CRT's event loops, hashsync's workers) plus
    that of children reaped meanwhile (s5cmd).
    """
    import resource

    sampler = connection_sampler(port) if sample else None
    r0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(
        b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1, strict=True)
    )
    return seconds, cpu, sampled(sampler) if sampler else None


_CRT_LIST_SNIPPET = """
import os, sys, time
import awscrt.s3 as s3
from awscrt.auth import AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
import hashsync
endpoint, bucket, prefix, tree = sys.argv[1:5]
host = endpoint.split("//", 1)[1]
signing = s3.create_default_s3_signing_config(
    region="us-east-1",
    credential_provider=AwsCredentialsProvider.new_static(os.environ["KEY"], os.environ["SECRET"]))
client = s3.S3Client(region="us-east-1", tls_mode=s3.S3RequestTlsMode.DISABLED, signing_config=signing)
body = []
req = client.make_request(
    type=s3.S3RequestType.DEFAULT, operation_name="ListObjectsV2",
    request=HttpRequest("GET", f"/{bucket}?list-type=2&prefix={prefix.replace('/', '%2F')}", HttpHeaders([("Host", host)])),
    on_body=lambda chunk, offset, **_: body.append(bytes(chunk)))
req.finished_future.result()
local = [(e.name, e.stat().st_size) for e in os.scandir(tree)]
assert b"".join(body).count(b"<Key>") == len(local), (len(local), b"".join(body)[:200])
"""


def probe_noop(s3: SeaweedFS, small: Path, work: Path, say: Report) -> None:
    say("\n## (l) start-up: a no-op sync of a 200-file tree in a fresh interpreter (fastest of 7)")
    tree = work / "l-tree"
    tree.mkdir()
    for rel, path in tree_files(small)[:200]:
        shutil.copy(path, tree / rel)
    env = Env(s3, s3.endpoint_url, "", "loopback")
    hashsync.sync(str(tree), env.storage("l/tree"))
    child_env = {**s3.env(inherit=True), "KEY": s3.access_key, "SECRET": s3.secret_key}
    hs = (
        "import hashsync; from hashsync.storage import S3Storage; import sys; "
        f"r = hashsync.sync(sys.argv[1], S3Storage('{BUCKET}', 'l/tree', endpoint_url='{s3.endpoint_url}', "
        f"aws_access_key_id='{s3.access_key}', aws_secret_access_key='{s3.secret_key}', region_name='us-east-1'))"
    )

    def wall(args: list[str]) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, env=child_env)
            times.append(time.perf_counter() - t0)
        return min(times)

    bare = wall(["-c", "import hashsync"])
    today = wall(["-c", hs, str(tree)])
    crt = wall(["-c", _CRT_LIST_SNIPPET, s3.endpoint_url, BUCKET, "l/tree/", str(tree)])
    say(f"- `import hashsync` alone: {bare:.3f} s")
    say(f"- hashsync.sync no-op today: {today:.3f} s")
    say(
        f"- floor of a CRT engine: import awscrt.s3 + hashsync, S3Client, one ListObjectsV2, scandir: {crt:.3f} s"
    )
    Crt(s3.endpoint_url, s3.access_key, s3.secret_key).delete_prefix(BUCKET, "l/")


def probe_knobs(env_list: list[Env], src: Path, work: Path, say: Report, runs: int) -> None:
    say("\n## (h) concurrency knobs: small-file upload/download, TCP connections, client CPU")
    settings: list[tuple[str, dict[str, Any]]] = [
        ("default (throughput_target_gbps 10)", {}),
        ("max_active_connections_override=256", {"max_conns": 256}),
        ("throughput_target_gbps=25.6 (64 conns)", {"throughput_gbps": 25.6}),
        ("throughput_target_gbps=102.4 (256 conns)", {"throughput_gbps": 102.4}),
        (
            "throughput 102.4 + memory_limit=256 MiB",
            {"throughput_gbps": 102.4, "memory_limit": 256 * MiB},
        ),
        ("throughput 102.4, window of 64 requests", {"throughput_gbps": 102.4, "window": 64}),
    ]
    files = tree_files(src)
    for env in env_list:
        port = urllib.parse.urlsplit(env.endpoint).port
        say(
            f"- {env.label}, {len(files)} files (median of {runs} for the CRT settings; connections "
            "sampled every 50 ms in the first run; CPU = client user+sys)"
        )
        say(
            "  | setting | upload s | download s | peak / opened conns up | peak / opened conns down | CPU s up | CPU s down |"
        )
        say("  |---|---:|---:|---:|---:|---:|---:|")

        def row(label: str, up: list, down: list) -> None:
            (_, u_cpu, u_conn), (_, d_cpu, d_conn) = up[0], down[0]
            say(
                f"  | {label} | {statistics.median(x[0] for x in up):.2f} | "
                f"{statistics.median(x[0] for x in down):.2f} | {u_conn[0]} / {u_conn[1]} | "
                f"{d_conn[0]} / {d_conn[1]} | {u_cpu:.2f} | {d_cpu:.2f} |"
            )

        for label, kw in settings:
            up, down = [], []
            for run in range(runs):
                prefix = f"h/{env.label}/{run}/"
                dest = work / f"h-{run}"
                dest.mkdir()
                crt = Crt(env.endpoint, env.server.access_key, env.server.secret_key, **kw)
                up.append(measured(port, lambda: crt_upload(crt, BUCKET, prefix, files), run == 0))
                crt.close()
                crt = Crt(env.endpoint, env.server.access_key, env.server.secret_key, **kw)
                down.append(
                    measured(port, lambda: crt_download(crt, BUCKET, prefix, dest), run == 0)
                )
                crt.delete_prefix(BUCKET, prefix)
                crt.close()
                shutil.rmtree(dest)
            row(label, up, down)
        for tool in ("hashsync", "s5cmd"):
            dest = work / "h-tool"
            dest.mkdir()
            prefix = f"h/{env.label}/{tool}/"
            up = [measured(port, lambda: run_tool(tool, "up", env, src, prefix, dest))]
            down = [measured(port, lambda: run_tool(tool, "down", env, src, prefix, dest))]
            shutil.rmtree(dest)
            Crt(env.endpoint, env.server.access_key, env.server.secret_key).delete_prefix(
                BUCKET, prefix
            )
            row(f"{tool} (one run)", up, down)


def probe_big(env: Env, big: Path, work: Path, say: Report) -> None:
    say("\n## (j) big files: where the time goes (one run each, loopback, CPU = client user+sys)")
    port = urllib.parse.urlsplit(env.endpoint).port
    files = tree_files(big)
    kw = {"access_key": env.server.access_key, "secret_key": env.server.secret_key}
    crcs = {rel: hashsync.hash_file(p, "crc64nvme") for rel, p in files}

    def upload(headers_for: Callable[[str], list], checksum: bool) -> Callable[[], None]:
        def go() -> None:
            crt = Crt(env.endpoint, **kw)
            reqs = [
                crt.put_file(
                    BUCKET,
                    f"j/{rel}",
                    p,
                    crc=crcs[rel],
                    headers=headers_for(rel),
                    checksum=checksum,
                )
                for rel, p in files
            ]
            for r in reqs:
                r.finished_future.result()
            del reqs, r  # the client shuts down only when no request refers to it
            crt.close()

        return go

    for label, fn in (
        ("PUT_OBJECT, no checksum", upload(lambda rel: [], False)),
        (
            "PUT_OBJECT, CRC64NVME computed by the CRT per part (HEADER)",
            upload(lambda rel: [], True),
        ),
        (
            "PUT_OBJECT, full-object CRC64NVME given (x-amz-checksum-crc64nvme)",
            upload(lambda rel: [("x-amz-checksum-crc64nvme", b64_of_hex(crcs[rel]))], True),
        ),
    ):
        seconds, cpu, _ = measured(port, fn, sample=False)
        say(
            f"- upload 2 x {files[0][1].stat().st_size // MiB} MiB, {label}: {seconds:.2f} s, CPU {cpu:.2f} s"
        )

    def download(config: S3ChecksumConfig | None, verify: bool) -> Callable[[], None]:
        def go() -> None:
            crt = Crt(env.endpoint, **kw)
            got: dict[str, dict] = {}
            reqs = []
            for rel, _ in files:
                got[rel] = {}
                reqs.append(
                    crt.get_file(
                        BUCKET,
                        f"j/{rel}",
                        work / f"j-{rel}",
                        checksum_config=config,
                        on_done=lambda rel=rel, **k: got[rel].update(k),
                    )
                )
            for r in reqs:
                r.finished_future.result()
            del reqs, r  # the client shuts down only when no request refers to it
            crt.close()
            if verify:
                for rel, _ in files:
                    assert hashsync.hash_file(work / f"j-{rel}", "crc64nvme") == crcs[rel]
            if config is not None:
                assert all(g.get("did_validate_checksum") for g in got.values()), got

        return go

    for label, fn in (
        ("GET_OBJECT, no verification", download(None, False)),
        ("GET_OBJECT, then hashsync.hash_file", download(None, True)),
        (
            "GET_OBJECT, validate_response=True (the CRT checks the full-object CRC64NVME)",
            download(S3ChecksumConfig(validate_response=True), False),
        ),
    ):
        seconds, cpu, _ = measured(port, fn, sample=False)
        say(f"- download, {label}: {seconds:.2f} s, CPU {cpu:.2f} s")
    for rel, _ in files:
        (work / f"j-{rel}").unlink(missing_ok=True)
    Crt(env.endpoint, **kw).delete_prefix(BUCKET, "j/")


def probe_network(s3: SeaweedFS, crt_kw: dict, say: Report) -> None:
    say("\n## (k) network settings: HTTP(S)_PROXY, CA bundle")
    with logging_proxy(s3.endpoint_url) as (url, log):
        saved = {
            k: os.environ.get(k)
            for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "NO_PROXY", "no_proxy")
        }
        for k in saved:
            os.environ.pop(k, None)
        try:
            seen = []
            for env_vars in (
                {},
                {"HTTP_PROXY": url},
                {"http_proxy": url},
                {"http_proxy": url, "NO_PROXY": "127.0.0.1"},
            ):
                for k in saved:
                    os.environ.pop(k, None)
                os.environ.update(env_vars)
                before = len(log)
                crt = Crt(s3.endpoint_url, **crt_kw)
                _, exc = outcome(lambda: crt.list(BUCKET, "x/"))
                crt.close()
                seen.append(
                    f"{env_vars or 'no proxy variables'}: {describe(exc)}, "
                    f"{len(log) - before} request(s) through the proxy"
                    + (f" ({log[-1].method} {log[-1].path})" if len(log) > before else "")
                )
            say(
                "- the CRT reads the proxy environment variables itself (S3Client has no proxy parameter):"
            )
            for line in seen:
                say(f"  {line}")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    import certifi
    from awscrt.io import ClientTlsContext, TlsContextOptions

    options = TlsContextOptions()
    options.override_default_trust_store_from_path(ca_filepath=certifi.where())
    S3Client(
        region=REGION, tls_connection_options=ClientTlsContext(options).new_connection_options()
    )
    say(
        "- a CA bundle (AWS_CA_BUNDLE): TlsContextOptions().override_default_trust_store_from_path(ca_filepath=...) "
        "-> S3Client(tls_connection_options=...): builds (not exercised over TLS here)"
    )


def probe_other_stores(crt_kw_fn: Callable[[Any], dict], work: Path, say: Report) -> None:
    say("\n## (i) stores that bend the rules: rclone serve s3 (and moto)")
    try:
        from hashsync.testing.other_s3 import MotoServer, RcloneS3Server
    except ImportError as exc:
        say(f"- skipped: {exc}")
        return
    big = write_random(work / "i-big", 20 * MiB + 3)
    crc = hashsync.hash_file(big, "crc64nvme")
    small = write_random(work / "i-small", 3000)
    for name, cls in (("rclone serve s3", RcloneS3Server), ("moto_server", MotoServer)):
        try:
            server = cls().start()
        except Exception as exc:  # noqa: BLE001
            say(f"- {name}: could not start ({exc})")
            continue
        try:
            server.create_bucket(BUCKET)
            with logging_proxy(server.endpoint_url) as (url, log):
                crt = Crt(url, **crt_kw_fn(server))
                _, exc = outcome(
                    lambda: crt.put_file(BUCKET, "i/big", big, crc=crc).finished_future.result()
                )
                say(f"- {name}: multipart PUT_OBJECT of 20 MiB with CRC64NVME: {describe(exc)}")
                if exc:
                    summarize_log(log[-3:], say)
                    if log and log[-1].answer:
                        say(f"      its answer: {log[-1].answer[:400]!r}")
                log.clear()
                dest = work / "i-dl"
                _, exc = outcome(
                    lambda: crt.get_file(BUCKET, "i/big", dest).finished_future.result()
                )
                intact = exc is None and hashsync.hash_file(dest, "crc64nvme") == crc
                say(
                    f"  GET_OBJECT in 8 MiB parts: {describe(exc)}, intact {intact}; statuses "
                    f"{[(e.status, e.response.get('content-range')) for e in log if e.method == 'GET'][:3]}"
                )
                mine = hashsync.etag(big, part_size=PART).strip('"')
                say(
                    f"  multipart ETag {head_etag(crt, 'i/big')} == hashsync.etag {mine}: {head_etag(crt, 'i/big') == mine}"
                )
                crt.put_file(BUCKET, "i/small", small).finished_future.result()
                _, exc = outcome(
                    lambda: crt.put_file(
                        BUCKET, "i/small", small, headers=[("If-None-Match", "*")]
                    ).finished_future.result()
                )
                say(f"  single PUT If-None-Match: * on an existing key: {describe(exc)}")
                _, exc = outcome(
                    lambda: crt.put_file(
                        BUCKET, "i/big", big, headers=[("If-None-Match", "*")]
                    ).finished_future.result()
                )
                say(f"  multipart PUT If-None-Match: * on an existing key: {describe(exc)}")
        finally:
            server.stop()


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="small files (default 3000)")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of each of the 2 big files")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool (median)")
    ap.add_argument("--rtt-ms", type=float, default=20.0, help="round trip through the delay proxy")
    ap.add_argument("--tools", default="crt,crt-256,hashsync,s5cmd", help="tools in the main table")
    ap.add_argument("--big-tools", default="crt,hashsync,s5cmd", help="tools for the big files")
    ap.add_argument("--quick", action="store_true", help="300 small files, 2 x 64 MiB, 1 run")
    ap.add_argument("--probes-only", action="store_true")
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--no-rtt", action="store_true")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--knob-runs", type=int, default=1, help="runs per setting in probe (h)")
    ap.add_argument(
        "--knobs-everywhere",
        dest="knobs_rtt_only",
        action="store_false",
        help="probe (h) on loopback too (default: only through the delay proxy)",
    )
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--workdir", help="where to put data (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.big_mib, args.runs = 300, 64, 1
    tools = args.tools.split(",")
    for name in (t for t in tools if t.startswith("crt-")):
        if name not in CRT_SETTINGS:
            CRT_SETTINGS[name] = {"throughput_gbps": int(name.split("-")[1]) * 0.4}

    started = time.perf_counter()
    say = Report()
    say(
        f"# awscrt S3Client spike: awscrt {awscrt.__version__ if hasattr(awscrt, '__version__') else '?'}, "
        f"hashsync {getattr(hashsync, '__version__', '?')}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; SeaweedFS on 127.0.0.1"
    )
    with tempfile.TemporaryDirectory(prefix="crtspike-", dir=args.workdir) as tmp:
        work = Path(tmp)
        small, big = work / "small", work / "big"
        t0 = time.perf_counter()
        make_small(small, args.n)
        if not args.no_big:
            make_big(big, args.big_mib)
        say(f"(data sets written in {time.perf_counter() - t0:.1f} s)")
        with SeaweedFS(work / "weed") as s3:
            s3.create_bucket(BUCKET)
            crt_kw = {"access_key": s3.access_key, "secret_key": s3.secret_key}
            loop = Env(s3, s3.endpoint_url, find_s5cmd(), "loopback")
            admin = Crt(s3.endpoint_url, **crt_kw)
            proxy_ctx: Any = contextlib.nullcontext(None)
            if DelayProxy is not None and not args.no_rtt:
                proxy_ctx = DelayProxy(s3.endpoint_url, delay_ms=args.rtt_ms / 2)
            elif not args.no_rtt:
                say("(hashsync.testing.delay_proxy not available: the 20 ms runs are skipped)")
            with proxy_ctx as proxy:
                envs = [loop]
                if proxy is not None:
                    envs.append(Env(s3, proxy.url, loop.s5cmd, f"{args.rtt_ms:g}ms-RTT"))
                results = Results()
                if not args.probes_only:
                    say(
                        f"\n## benchmark: {', '.join(tools)}; median of {args.runs}, tools alternating"
                    )
                    warm = Results()  # one untimed round: server caches, lazy imports, page cache
                    bench_scenario(
                        loop, "small", small, tools, 1, work, warm, admin, label="warm-up"
                    )
                    for env in envs:
                        bench_scenario(env, "small", small, tools, args.runs, work, results, admin)
                    if not args.no_big:
                        big_tools = [t for t in tools if t in args.big_tools.split(",")]
                        bench_scenario(loop, "big", big, big_tools, args.runs, work, results, admin)
                    say("\nWall seconds, median (ratio to s5cmd's median):\n")
                    say(table(results, tools, args.n, args.big_mib))
                    say(
                        "\nClient CPU seconds (user+sys; the CRT's threads, hashsync's workers, s5cmd), median:\n"
                    )
                    say(table(results, tools, args.n, args.big_mib, "cpu"))
                    say(
                        "\nAll runs (wall s): "
                        + "; ".join(
                            f"{s} {d} {t}: " + "/".join(f"{x:.2f}" for x in v)
                            for (s, d), per in results.times.items()
                            for t, v in per.items()
                        )
                    )
                if not args.no_probes:
                    probe_work = work / "probes"
                    probe_work.mkdir()
                    probe_conditional(s3, crt_kw, probe_work, say)
                    probe_etag(s3, crt_kw, probe_work, say)
                    probe_ranged_get(s3, crt_kw, probe_work, say)
                    probe_checksums(s3, crt_kw, probe_work, say)
                    probe_default(s3, crt_kw, probe_work, say)
                    probe_credentials(s3, crt_kw, probe_work, say)
                    probe_imports(say)
                    probe_noop(s3, small, probe_work, say)
                    # the knobs matter where latency does: the delay proxy when there is one
                    probe_knobs(
                        envs[-1:] if args.knobs_rtt_only else envs,
                        small,
                        probe_work,
                        say,
                        args.knob_runs,
                    )
                    if not args.no_big:
                        probe_big(loop, big, probe_work, say)
                    probe_network(s3, crt_kw, say)
                    probe_other_stores(
                        lambda srv: {"access_key": srv.access_key, "secret_key": srv.secret_key},
                        probe_work,
                        say,
                    )
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "times": {f"{s} {d}": v for (s, d), v in results.times.items()},
                    "cpu": {f"{s} {d}": v for (s, d), v in results.cpu.items()},
                    "report": say.lines,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
