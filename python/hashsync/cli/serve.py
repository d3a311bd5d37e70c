"""``hashsync serve ROOT``: run the dataset hub server (the ``hub`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hashsync import errors
from hashsync.cli._common import EXIT_FAILURE, EXIT_OK, count_arg, err

DEFAULT_PORT = 8000


def register(sub: Any) -> None:
    """Add the ``serve`` command to the subcommands."""
    p = sub.add_parser(
        "serve",
        help="serve the subdirectories of ROOT as datasets (the dataset hub)",
        description=(
            "Serve every subdirectory of ROOT as a dataset: GET /datasets, /manifest/DATASET "
            "(sha256 of every file), /file/DATASET/PATH (Range, ETag), /health, /docs. "
            "Clients authenticate with 'Authorization: Bearer KEY'. Settings also come from "
            "the environment or a .env file in the current directory: HASHSYNC_HUB_API_KEY "
            "(several keys comma-separated; or DSX_API_KEY), HASHSYNC_HUB_ROOT (or "
            "DSX_DATASET_PATH), HASHSYNC_HUB_PORT (or DSX_PORT), HASHSYNC_HUB_DOTFILES=1. "
            "Hidden files and directories (.env, .git/) are not served unless --dotfiles. "
            "Beyond a LAN, run it behind a reverse proxy (TLS, connection limits). Needs: pip "
            "install 'hashsync[hub]'."
        ),
    )
    p.add_argument("root", nargs="?", metavar="ROOT", help="the directory of datasets")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=lambda t: count_arg(t, 1, 65535), default=None, help="port (default 8000)"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys (binds 127.0.0.1 only, with a warning)",
    )
    p.add_argument(
        "--dotfiles",
        action="store_true",
        default=None,
        help="also serve hidden files and directories (.env, .git/ ...), left out by default",
    )
    p.add_argument(
        "--header-timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds a client may take to send a request's headers (default 10)",
    )
    p.add_argument(
        "--max-connections",
        type=lambda t: count_arg(t, 2, 1_000_000),
        default=None,
        metavar="N",
        help="open connections kept before the longest-idle one is closed (default: a third "
        "of the descriptor limit, at most 4096)",
    )
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("give a number of seconds from 0 to 3600")
    return value


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (``#`` comments, optional quotes, ``export``)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return values
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def settings(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """Root, keys, host and port: arguments > environment > ``.env`` > defaults.

    Raises:
        InvalidArgument: No root, no key without ``--no-auth``, a bad port, or ``--no-auth``
            with a host that is not a loopback address.
    """
    env = {**read_dotenv(Path(".env")), **environ}

    def first(*names: str) -> str | None:
        return next((env[n] for n in names if env.get(n, "").strip()), None)

    root = args.root or first("HASHSYNC_HUB_ROOT", "DSX_DATASET_PATH")
    if not root:
        raise errors.InvalidArgument("no dataset root: give ROOT or set HASHSYNC_HUB_ROOT")
    keys = [k.strip() for k in (first("HASHSYNC_HUB_API_KEY", "DSX_API_KEY") or "").split(",")]
    keys = [k for k in keys if k]
    port_text = first("HASHSYNC_HUB_PORT", "DSX_PORT")
    try:
        port = args.port or (int(port_text) if port_text else DEFAULT_PORT)
    except ValueError:
        raise errors.InvalidArgument(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise errors.InvalidArgument(f"port {port} is out of range")
    host = args.host or "127.0.0.1"
    dotfiles = getattr(args, "dotfiles", None)
    if dotfiles is None:
        dotfiles = (first("HASHSYNC_HUB_DOTFILES") or "").strip().lower() in ("1", "true", "yes")
    if args.no_auth:
        keys = []
        if not _is_loopback(host):
            raise errors.InvalidArgument(
                f"--no-auth serves only on 127.0.0.1, not {host}: set HASHSYNC_HUB_API_KEY"
            )
    elif not keys:
        raise errors.InvalidArgument(
            "no API key: set HASHSYNC_HUB_API_KEY (or DSX_API_KEY), or pass --no-auth to "
            "serve on 127.0.0.1 without one"
        )
    return {
        "root": root,
        "keys": keys,
        "host": host,
        "port": port,
        "no_auth": args.no_auth,
        "dotfiles": dotfiles,
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until interrupted."""
    conf = settings(args, dict(os.environ))
    try:
        import uvicorn
    except ImportError:
        raise errors.missing_extra("hashsync serve", "hub") from None
    from hashsync.hub.server import (
        HEADER_TIMEOUT,
        create_app,
        raise_descriptor_limit,
        uvicorn_config,
    )

    app = create_app(
        conf["root"], api_keys=conf["keys"], no_auth=conf["no_auth"], dotfiles=conf["dotfiles"]
    )
    raise_descriptor_limit()
    config = uvicorn_config(
        app,
        host=conf["host"],
        port=conf["port"],
        header_timeout=args.header_timeout or HEADER_TIMEOUT,
        max_connections=args.max_connections,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if conf["no_auth"]:
        err("warning: serving without authentication, on 127.0.0.1 only")
    print(
        f"serving {len(conf['keys']) or 'no'} key(s), datasets in {Path(conf['root']).absolute()} "
        f"at http://{conf['host']}:{conf['port']} (docs at /docs)",
        file=sys.stderr,
    )
    try:
        uvicorn.Server(config).run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        if exc.code:
            err(f"cannot serve on {conf['host']}:{conf['port']} (is the port in use?)")
            return EXIT_FAILURE
    return EXIT_OK
