"""A real hub server on a free 127.0.0.1 port, run by uvicorn in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

KEY = "test-key-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_hub(
    root: Path, *, keys: tuple[str, ...] = (KEY,), without: tuple[str, ...] = (), **options
) -> Iterator[str]:
    """Serve ``root`` with uvicorn until the block ends; yields the base URL.

    ``without`` names routes (paths such as ``"/bundle/{dataset}"``) to leave out: a hub of
    an older version, or the seed's.
    """
    import uvicorn

    from hashsync.hub.server import create_app

    app = create_app(root, api_keys=keys, **options)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in without]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the hub server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
