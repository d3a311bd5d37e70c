"""Named caches from a YAML config file, and :func:`get_cache`.

The file (``$HASHSYNC_CONFIG``, default ``$XDG_CONFIG_HOME/hashsync/config.yaml``)::

    default: datasets            # the cache get_cache() returns
    caches:
      datasets:
        type: copy-to-local      # copy-to-local | synchronized | local | local-read-only
        storages: [/mnt/share/datasets, s3://bucket/datasets]   # tiers, first wins
        directory: /scratch/hashsync/datasets   # default: $HASHSYNC_CACHE_DIR/caches/<name>
        max_size: 200GiB
        num_workers: 16
        prefer: first            # or newest
        max_age: 10m             # how long a served entry may go unchecked
      results:
        type: synchronized
        remote: s3://bucket/results

Settings given as arguments win over the environment, which wins over this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hashsync.cache import _settings
from hashsync.cache._api import Cache
from hashsync.cache._local import LocalCache
from hashsync.cache._readonly import LocalReadOnlyCache
from hashsync.cache._tiers import CopyToLocalCache, SynchronizedRemoteAndLocalCache
from hashsync.errors import InvalidArgument, MissingDependency, NotFound

__all__ = ["ConfigError", "config_path", "configured_names", "get_cache", "load_config"]

_TYPES = ("copy-to-local", "synchronized", "local", "local-read-only")
_KEYS = {
    "type",
    "storages",
    "storage",
    "remote",
    "directory",
    "max_size",
    "max_size_bytes",
    "num_workers",
    "prefer",
    "max_age",
    "shared",
    "endpoint_url",
}

# What each setting may be (YAML gives ints, strings, lists, booleans).
_KINDS: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "storages": (str, list),
    "storage": (str,),
    "remote": (str,),
    "directory": (str,),
    "max_size": (int, str),
    "max_size_bytes": (int, str),
    "num_workers": (int, str),
    "prefer": (str,),
    "max_age": (int, float, str),
    "shared": (bool,),
    "endpoint_url": (str,),
}


class ConfigError(InvalidArgument):
    """The config file is not valid YAML or names an unknown setting; says file, line and key."""


def config_path() -> Path:
    """``$HASHSYNC_CONFIG``, else ``$XDG_CONFIG_HOME/hashsync/config.yaml``.

    Without either: ``~/Library/Application Support/hashsync/config.yaml`` on macOS (where
    macOS programs keep settings), ``~/.config/hashsync/config.yaml`` elsewhere.
    """
    explicit = os.environ.get("HASHSYNC_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "hashsync" / "config.yaml"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "hashsync" / "config.yaml"
    return Path.home() / ".config" / "hashsync" / "config.yaml"


def load_config(path: Path | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Read and check the config file.

    Returns:
        The parsed mapping (empty if the file does not exist), and the line of each cache
        name and setting (``"caches.NAME.KEY"`` -> line) for error messages.

    Raises:
        ConfigError: Bad YAML or an unknown key; the message names the file, line and key.
        MissingDependency: PyYAML is not installed.
    """
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, {}
    try:
        import yaml
    except ImportError:  # pragma: no cover - a core dependency
        raise MissingDependency("reading the cache config file needs PyYAML") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[str, int] = {}
    _lines(node, "", lines)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping with 'caches' and 'default'")
    for key in data:
        if key not in ("caches", "default"):
            raise ConfigError(
                f"{path}:{lines.get(str(key), 1)}: unknown key {key!r} "
                "(expected 'caches' and 'default')"
            )
    caches = data.get("caches") or {}
    if not isinstance(caches, dict):
        raise ConfigError(f"{path}:{lines.get('caches', 1)}: 'caches' must be a mapping")
    for name, settings in caches.items():
        here = f"caches.{name}"
        if not isinstance(name, str) or not _plain_name(name):
            # The name becomes a directory under the caches directory.
            raise ConfigError(
                f"{path}:{lines.get(here, 1)}: cache name {name!r} must be a plain name "
                "(no '/', not hidden)"
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}:{lines.get(here, 1)}: cache {name!r} must be a mapping")
        for key, value in settings.items():
            if key not in _KEYS:
                raise ConfigError(
                    f"{path}:{lines.get(f'{here}.{key}', 1)}: cache {name!r}: unknown key "
                    f"{key!r} (one of {', '.join(sorted(_KEYS))})"
                )
            kinds = _KINDS[key]
            wrong = not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))
            if key == "storages" and isinstance(value, list):
                wrong = not all(isinstance(v, str) for v in value)
            if wrong:
                expected = " or ".join({str: "text", int: "a number", float: "a number",
                                        list: "a list of URLs", bool: "true or false"}[k]
                                       for k in kinds)  # fmt: skip
                raise ConfigError(
                    f"{path}:{lines.get(f'{here}.{key}', 1)}: cache {name!r}: {key}: expected "
                    f"{expected}, got {value!r}"
                )
        kind = settings.get("type", "copy-to-local")
        if kind not in _TYPES:
            raise ConfigError(
                f"{path}:{lines.get(f'{here}.type', 1)}: cache {name!r}: type {kind!r} is not "
                f"one of {', '.join(_TYPES)}"
            )
    default = data.get("default")
    if default is not None and (not isinstance(default, str) or default not in caches):
        raise ConfigError(
            f"{path}:{lines.get('default', 1)}: default {default!r} is not a configured cache"
        )
    return data, lines


def _plain_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def _lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            name = f"{prefix}{key_node.value}"
            out[name] = key_node.start_mark.line + 1
            _lines(value_node, name + ".", out)


def configured_names() -> list[str]:
    """The caches the config file names (without the built-in ``default`` and ``urls``)."""
    data, _ = load_config()
    return list((data.get("caches") or {}).keys())


def get_cache(name: str | None = None) -> Cache:
    """The cache called ``name`` in the config file; None gives the default cache.

    Without a config file (or without a ``default`` in it) the default cache is a
    :class:`LocalCache` in ``$HASHSYNC_CACHE_DIR/caches/default``; ``"urls"`` is the cache
    :func:`hashsync.cache.local_path` downloads URLs into.

    Raises:
        NotFound: No cache has this name.
        ConfigError: The config file is invalid (file, line and key in the message).
    """
    path = config_path()
    data, lines = load_config(path)
    caches = data.get("caches") or {}
    if name is None:
        name = data.get("default") or "default"
    if name not in caches:
        if name == "default":
            return LocalCache(_settings.caches_dir() / "default")
        if name == "urls":
            from hashsync.cache._urls import url_cache

            return url_cache()
        raise NotFound(
            2,
            f"no cache named {name!r} (configured in {path}: "
            f"{', '.join(caches) or 'none'}; built in: default, urls)",
        )
    return _build(name, caches[name], path, lines)


def _build(name: str, conf: dict[str, Any], path: Path, lines: dict[str, int]) -> Cache:
    from hashsync.storage import open_storage

    here = f"caches.{name}"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}:{lines.get(f'{here}.{key}', lines.get(here, 1))}: "
                           f"cache {name!r}: {key}: {message}")  # fmt: skip

    options: dict[str, Any] = {}
    if conf.get("endpoint_url"):
        options["endpoint_url"] = conf["endpoint_url"]

    def storage(key: str, url: object) -> Any:
        if not isinstance(url, str):
            raise fail(key, f"expected a URL or path, got {url!r}")
        try:
            return open_storage(url, **(options if url.startswith("s3://") else {}))
        except InvalidArgument as exc:
            raise fail(key, str(exc)) from None

    kind = conf.get("type", "copy-to-local")
    directory = Path(conf.get("directory") or _settings.caches_dir() / name).expanduser()
    size_key = "max_size_bytes" if "max_size_bytes" in conf else "max_size"
    try:
        max_size = _settings.max_size_bytes(None, conf.get(size_key))
    except (InvalidArgument, ValueError) as exc:
        raise fail(size_key, str(exc)) from None
    try:
        workers = _settings.num_workers(None, conf.get("num_workers"))
    except (InvalidArgument, ValueError) as exc:
        raise fail("num_workers", str(exc)) from None
    try:
        max_age = _settings.parse_max_age(str(conf["max_age"])) if "max_age" in conf else 0.0
    except (InvalidArgument, ValueError) as exc:
        raise fail("max_age", str(exc)) from None
    if max_age is not None and max_age < 0:
        raise fail("max_age", f"must not be negative, not {conf['max_age']!r}")
    shared = conf.get("shared", False) is True
    if kind == "local-read-only":
        if "storage" not in conf:
            raise fail("storage", "a local-read-only cache needs 'storage'")
        return LocalReadOnlyCache(storage("storage", conf["storage"]))
    if kind == "local":
        return LocalCache(directory, max_size_bytes=max_size, shared=shared)
    if kind == "synchronized":
        if "remote" not in conf:
            raise fail("remote", "a synchronized cache needs 'remote'")
        return SynchronizedRemoteAndLocalCache(
            storage("remote", conf["remote"]),
            directory,
            max_size_bytes=max_size,
            num_workers=workers,
            max_age=max_age,
            shared=shared,
        )
    tiers = conf.get("storages")
    if isinstance(tiers, str):
        tiers = [tiers]
    if not tiers or not isinstance(tiers, list):
        raise fail("storages", "a copy-to-local cache needs a list of 'storages'")
    prefer = conf.get("prefer", "first")
    if prefer not in ("first", "newest"):
        raise fail("prefer", f"must be 'first' or 'newest', not {prefer!r}")
    return CopyToLocalCache(
        [storage("storages", url) for url in tiers],
        directory,
        prefer=prefer,
        max_size_bytes=max_size,
        num_workers=workers,
        max_age=max_age,
        shared=shared,
    )
