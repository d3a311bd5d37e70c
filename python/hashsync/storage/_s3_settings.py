"""The S3 settings that need no botocore.

Importing botocore and loading its S3 model costs about 0.25 s, more than a no-op sync of a
small tree takes altogether. :func:`static_settings` says when endpoint, region and
credentials are fully known from arguments and environment variables; then botocore is never
loaded. Otherwise botocore resolves them (profiles, SSO, instance metadata, AWS endpoints).
Either way the requests are signed and sent by the Rust transport (:mod:`._s3list`).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import NamedTuple

__all__ = ["Credentials", "StaticSettings", "is_aws", "static_settings"]

# Config-file settings that change nothing the transport does (anything else in the
# default profile, e.g. an endpoint, a CA bundle or an addressing style, leaves it to botocore).
_HARMLESS_CONFIG = frozenset(("region", "output", "cli_pager", "cli_timestamp_format"))


class Credentials(NamedTuple):
    """An access key, its secret and an optional session token."""

    access_key: str
    secret_key: str
    token: str | None = None


class StaticSettings(NamedTuple):
    """Everything a path-style request needs, known without botocore."""

    endpoint_url: str
    region: str
    credentials: Credentials | None  # None: anonymous (unsigned) requests
    ca_bundle: str | None


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def is_aws(url: str) -> bool:
    """Whether ``url`` is an AWS S3 endpoint (virtual-hosted addressing, region redirects)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "amazonaws.com" or host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _config_region() -> tuple[bool, str | None]:
    """(usable, region) from the default profile of the AWS config file.

    Not usable when the file sets anything beyond a region and output preferences.
    """
    path = os.path.expanduser(_env("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return True, None
    except OSError:
        return False, None
    if not text.strip():
        return True, None
    import configparser

    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text.decode())
    except (configparser.Error, UnicodeDecodeError):
        return False, None
    if not parser.has_section("default"):
        return True, None
    if set(parser.options("default")) - _HARMLESS_CONFIG:
        return False, None
    return True, parser.get("default", "region", fallback=None)


def static_settings(
    *,
    endpoint_url: str | None,
    region_name: str | None,
    profile_name: str | None,
    anonymous: bool,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
    addressing_style: str | None,
) -> StaticSettings | None:
    """The settings botocore would arrive at, when arguments and environment alone decide them.

    None when anything needs botocore: a profile, an AWS endpoint, virtual addressing,
    credentials from files or instance metadata, an unusual config file.
    """
    if profile_name is not None or _env("AWS_PROFILE") or _env("AWS_DEFAULT_PROFILE"):
        return None
    if addressing_style not in (None, "path"):
        return None
    ignore_env = (_env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").lower() == "true"
    endpoint = endpoint_url
    if endpoint is None and not ignore_env:
        endpoint = _env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")
    if endpoint is None or is_aws(endpoint):
        return None
    if urllib.parse.urlsplit(endpoint).scheme.lower() not in ("http", "https"):
        return None
    credentials: Credentials | None = None
    if not anonymous:
        if aws_access_key_id or aws_secret_access_key or aws_session_token:
            if not (aws_access_key_id and aws_secret_access_key):
                return None
            credentials = Credentials(aws_access_key_id, aws_secret_access_key, aws_session_token)
        else:
            key, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
            if not (key and secret):
                return None
            token = _env("AWS_SESSION_TOKEN") or _env("AWS_SECURITY_TOKEN")
            credentials = Credentials(key, secret, token)
    usable, config_region = _config_region()
    if not usable:
        return None
    region = region_name or _env("AWS_DEFAULT_REGION") or config_region or "us-east-1"
    return StaticSettings(endpoint.rstrip("/"), region, credentials, _env("AWS_CA_BUNDLE"))
