"""Redaction of secrets in URLs and in text that contains URLs.

Users give hashsync URLs with credentials in them: ``http://user:password@host/``, presigned
S3 URLs (``?X-Amz-Signature=...``), token query strings (``?token=...``), an
``--endpoint-url http://key:secret@host``. Every message hashsync shows (errors, ``--json``,
reprs) passes through :func:`redact` so that none of those secrets is echoed.

Redaction never changes a URL that has nothing to hide: it works on the text as given, without
re-encoding or normalising it.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["MASK", "is_sensitive_parameter", "redact", "redact_url"]

MASK = "***"
"""What a secret is replaced with."""

# Query (and fragment) parameters whose value is a secret, compared case-insensitively.
_SENSITIVE_NAMES = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "awsaccesskeyid",
        "sig",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "key",
        "apikey",
        "api_key",
        "api-key",
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "client_secret",
    }
)
# Parameter names that contain one of these are secret too (``X-Foo-Token``, ``secret_key``).
_SENSITIVE_PARTS = re.compile(
    r"signature|token|secret|passw|credential|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|(?:^|[-_.])key$|(?:^|[-_.])sig$",
    re.IGNORECASE,
)

# A URL in free text: a scheme, "://", then everything up to whitespace, a quote or a bracket
# that cannot be part of it.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# Punctuation that ends a sentence or closes a parenthesis rather than belonging to the URL.
_TRAILING = ".,;:!?)]}"
# A query parameter outside a full URL (``url: /x?X-Amz-Signature=...`` in urllib3 messages).
_PARAM_IN_TEXT = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&;#\s'\"<>`]*)")
# Authorization headers quoted in messages.
_AUTH_HEADER = re.compile(
    r"(?P<lead>\b(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<scheme>(?:basic|bearer|digest|token|aws4-hmac-sha256|aws)\s+)?"
    r"(?P<value>[^\s'\"]+)",
    re.IGNORECASE,
)
# A host (name, IPv4 or bracketed IPv6) with an optional port, as it follows "user:pass@".
_HOST = re.compile(r"[A-Za-z0-9.\-_~%]+(?::\d*)?|\[[0-9A-Fa-f:.%A-Za-z]+\](?::\d*)?")


def is_sensitive_parameter(name: str) -> bool:
    """Return whether a query parameter called ``name`` carries a secret.

    Args:
        name: The parameter name, raw or percent-decoded; compared case-insensitively.

    Returns:
        True for signatures, tokens, keys, passwords and credentials (``X-Amz-Signature``,
        ``token``, ``api_key``, ...).
    """
    lowered = name.strip().lower()
    return lowered in _SENSITIVE_NAMES or _SENSITIVE_PARTS.search(lowered) is not None


def _redact_params(query: str) -> str:
    """Replace the values of sensitive ``name=value`` pairs of a query string."""
    if "=" not in query:
        return query
    pieces = re.split(r"([&;])", query)
    for i in range(0, len(pieces), 2):
        name, eq, value = pieces[i].partition("=")
        if eq and value and is_sensitive_parameter(_unquote(name)):
            pieces[i] = f"{name}={MASK}"
    return "".join(pieces)


def _unquote(text: str) -> str:
    return urllib.parse.unquote_plus(text)


def _redact_userinfo(userinfo: str) -> str:
    """``user:password`` → ``user:***``; a lone ``user`` (often a token) → ``***``."""
    user, colon, password = userinfo.partition(":")
    if not colon:
        return MASK if user else user
    return f"{user}:{MASK}" if password else f"{user}:"


def _split_authority(rest: str) -> tuple[str, str, str] | None:
    """Find ``userinfo@`` at the start of ``rest`` (what follows ``scheme://``).

    Returns:
        ``(userinfo, "@", remainder)``, or None when there is no userinfo.
    """
    end = len(rest)
    for sep in "/?#":
        found = rest.find(sep)
        if found != -1:
            end = min(end, found)
    authority = rest[:end]
    if "@" in authority:
        userinfo, at, host = authority.rpartition("@")
        return userinfo, at, host + rest[end:]
    # A password with an unencoded "/", "?" or "#" (AWS secret keys contain "/") ends the
    # authority early for a strict parser; still recognise "user:pa/ss@host".
    match = re.match(r"([^\s/?#@:]*):([^\s@]+)@", rest)
    if match is None or re.match(r"\d*(?:[/?#]|$)", match[2]):
        return None  # "host:8080/path/@x": a port, then a path with "@" in it
    remainder = rest[match.end() :]
    host_match = _HOST.match(remainder)
    if host_match is None or (
        host_match.end() < len(remainder) and remainder[host_match.end()] not in "/?#"
    ):
        return None
    return match[0][:-1], "@", remainder


def redact_url(url: str) -> str:
    """Return ``url`` with its secrets replaced by ``***``.

    The password of the userinfo becomes ``***`` (``http://user:***@host/``); a userinfo
    without a password is usually a token (``https://TOKEN@host/``) and is replaced whole.
    The values of sensitive query and fragment parameters (``X-Amz-Signature``,
    ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``Signature``, ``AWSAccessKeyId``,
    ``sig``, ``token``, ``access_token``, ``key``, ``password``, ``secret``, ``api_key``, and
    names containing ``token``, ``secret``, ``signature``, ...; case-insensitive) become
    ``***`` too. Everything else is kept exactly as given, so a URL without secrets is
    returned unchanged.

    Args:
        url: An absolute URL (any scheme) or a relative one such as ``/path?token=x``.

    Returns:
        The redacted URL.

    Examples:
        >>> redact_url("http://ak:pw@host:9000/b?X-Amz-Signature=abc&x=1")
        'http://ak:***@host:9000/b?X-Amz-Signature=***&x=1'
    """
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", url)
    if scheme is not None:
        head, rest = url[: scheme.end()], url[scheme.end() :]
        split = _split_authority(rest)
        if split is not None:
            userinfo, at, rest = split
            head += _redact_userinfo(userinfo) + at
    else:
        head, rest = "", url
    rest, hash_, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    return head + path + question + _redact_params(query) + hash_ + _redact_params(fragment)


def _redact_match(match: re.Match[str]) -> str:
    url = match[0]
    stripped = url.rstrip(_TRAILING)
    # Keep a closing bracket that belongs to the URL (an IPv6 host, a balanced "(...)").
    while stripped != url and url[len(stripped)] in ")]}":
        closer = url[len(stripped)]
        opener = {")": "(", "]": "[", "}": "{"}[closer]
        if stripped.count(opener) > stripped.count(closer):
            stripped += closer
        else:
            break
    return redact_url(stripped) + url[len(stripped) :]


def _redact_param_match(match: re.Match[str]) -> str:
    value = match["value"]
    core = value.rstrip(_TRAILING)  # "?token=abc: refused" ends the value before the colon
    if core and core != MASK and is_sensitive_parameter(_unquote(match["name"])):
        return f"{match['lead']}{match['name']}={MASK}{value[len(core) :]}"
    return match[0]


def redact(text: str) -> str:
    """Return ``text`` with the secrets of every URL in it replaced by ``***``.

    Finds URLs (``scheme://...``) in free text such as error messages and reprs and applies
    :func:`redact_url` to each. Sensitive query parameters that appear without a full URL
    around them (``url: /x?X-Amz-Signature=...``, as urllib3 reports) and quoted
    ``Authorization`` header values are redacted too.

    Args:
        text: Any text.

    Returns:
        The text with secrets replaced; unchanged if it has none.

    Examples:
        >>> redact("GET http://u:pw@h/x?token=t: refused")
        'GET http://u:***@h/x?token=***: refused'
    """
    if not text:
        return text
    if "://" in text:
        text = _URL_IN_TEXT.sub(_redact_match, text)
    if "=" in text:
        text = _PARAM_IN_TEXT.sub(_redact_param_match, text)
    if "authorization" in text.lower():
        text = _AUTH_HEADER.sub(
            lambda m: f"{m['lead']}{m['scheme'] or ''}{MASK}" if m["value"] != MASK else m[0],
            text,
        )
    return text
