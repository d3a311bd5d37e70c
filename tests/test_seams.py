"""Structural checks of the package: one way in for each concern (issue 25)."""

from __future__ import annotations

import re
from pathlib import Path

from hashsync._retry import BASE_DELAY, MAX_DELAY, backoff

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "hashsync"


def test_backoff_grows_is_capped_and_jittered():
    for retry in range(1, 12):
        waits = [backoff(retry) for _ in range(200)]
        step = min(BASE_DELAY * 2 ** (retry - 1), MAX_DELAY)
        assert all(step * 0.1 <= w <= step for w in waits), retry
        assert len(set(waits)) > 1  # jittered: threads that failed together spread out
    assert max(backoff(30) for _ in range(100)) <= MAX_DELAY


def test_one_retry_policy():
    # Any exponential backoff written out by hand outside the policy module.
    handmade = re.compile(
        r"[0-9]*\.[0-9]+\s*\*\s*2\s*\*\*|\bbackoff_factor\s*=\s*[0-9]|sleep\(min\("
    )
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_retry.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if handmade.search(line)
    ]
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    """Module -> the hashsync modules it imports, at any level (``TYPE_CHECKING`` ones aside).

    The package root ``hashsync`` is left out: it is the facade that re-exports the public
    names (and the Rust functions), not a layer.
    """
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target if target and target != "hashsync" else None

    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_sync_layers_import_only_downwards():
    graph = _import_graph()
    layers = ["result", "rules", "folded", "single", "segmented", "on_dask", "api"]
    for i, layer in enumerate(layers):
        above = {f"hashsync.syncing.{m}" for m in layers[i + 1 :]}
        assert not graph[f"hashsync.syncing.{layer}"] & above, layer


def test_no_import_cycles():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def _private_imports() -> list[str]:
    """``from M import _name`` of a name (not a submodule) that M keeps private."""
    import ast

    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                # Private modules (hashsync.cache._settings) are the package's own business.
                if (PACKAGE.parent / node.module.replace(".", "/") / f"{name}.py").exists():
                    continue
                found.append(f"{path.relative_to(PACKAGE)}: {node.module}.{name}")
    return sorted(found)


def test_no_module_imports_another_modules_private_names():
    assert _private_imports() == []


def test_downloads_go_through_the_public_sink_protocol():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "._receive(" in line or "_check_destination" in line
    ]
    assert offenders == []


def test_the_thread_map_keeps_order_and_fails_fast_when_asked():
    import threading
    import time

    from hashsync._threads import run_on_threads

    assert run_on_threads(lambda x: x * 2, range(50), 8) == [x * 2 for x in range(50)]
    assert run_on_threads(lambda x: x, [7], 8) == [7]  # no thread for one item

    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        if x == 0:
            raise ValueError("first")
        time.sleep(0.01)
        return x

    try:
        run_on_threads(work, range(200), 4, fail_fast=True)
    except ValueError as exc:
        assert str(exc) == "first"
    assert len(started) < 50  # nothing new started after the failure
    started.clear()
    try:
        run_on_threads(work, range(40), 4)
    except ValueError:
        pass
    assert sorted(started) == list(range(40))  # without fail_fast every item runs


GENERIC = ["syncing", "cache", "treecache", "_settle.py"]
CONCRETE = (
    "S3Storage|HTTPStorage|HubStorage|SimpleLocalStorage|TemporaryLocalStorage|"
    "PartitioningLocalStorage|ReadOnlyFilesystemStorage"
)


def test_generic_code_asks_storages_instead_of_probing_them():
    probe = re.compile(
        rf"isinstance\([^)]*\b({CONCRETE})\b"
        r"|(hasattr|getattr)\(\s*(self\.)?(storage|src|dst|remote|remote_storage|local_storage"
        r"|source|destination|writable|tier)\s*,"
        r"|inspect\.signature|\.client\.meta\."
    )
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for part in GENERIC
        for path in sorted((PACKAGE / part).rglob("*.py") if "." not in part else [PACKAGE / part])
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if probe.search(line)
    ]
    assert offenders == []


def test_a_read_only_filesystem_is_no_remote_for_a_synchronized_cache(tmp_path):
    import pytest

    from hashsync.cache import SynchronizedRemoteAndLocalCache
    from hashsync.errors import InvalidArgument
    from hashsync.storage import ReadOnlyFilesystemStorage

    (tmp_path / "ro").mkdir()
    # It defines copy_from only to refuse it: a probe for the method let it through.
    with pytest.raises(InvalidArgument, match="read-only"):
        SynchronizedRemoteAndLocalCache(ReadOnlyFilesystemStorage(tmp_path / "ro"), tmp_path / "c")


def test_no_finalizer_does_io_in_the_transfer_path():
    # A __del__ that closes sockets deadlocked a Dask worker (CI): Dask's profiler calls
    # sys._current_frames(), which on CPython 3.11 holds the runtime's thread-list lock while it
    # allocates; the collection that allocation started ran _Connections.__del__, whose socket
    # close released the GIL, and a thread being started took the GIL and waited for the lock.
    # Pooled connections are closed by close() or by the sockets' own finalizers (which keep
    # the GIL). AtomicFile's __del__ only discards a file dropped without close().
    import ast

    allowed = {("atomic.py", "AtomicFile")}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(f, ast.FunctionDef) and f.name == "__del__" for f in node.body
            ):
                found.add((str(path.relative_to(PACKAGE)), node.name))
    assert found <= allowed
