"""Where GCS requests get their ``Authorization``: google-auth's credentials, or none.

hashsync sends GCS requests itself (through the same Rust transport as S3), so the only part
of Google's client libraries it needs is google-auth, for what Google users expect to just
work: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, the gcloud user's
``application_default_credentials.json``, workload identity, the metadata server of a GCE /
GKE / Cloud Run machine). It comes with the ``gcs`` extra.

No credentials are looked up for ``anonymous=True`` (public buckets), nor for an emulator
(``STORAGE_EMULATOR_HOST``), as google-cloud-storage does.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from hashsync.errors import PermissionDenied, StorageUnavailable, missing_extra

__all__ = ["Tokens", "default_credentials"]

#: What the storage may do: read and write objects (not change bucket settings or IAM).
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"

_HINT = (
    "run 'gcloud auth application-default login', set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service account key file, or pass anonymous=True (--no-sign-request) for a public bucket"
)


def _google_auth() -> Any:
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.urllib3
    except ImportError:
        raise missing_extra("gs:// URLs (Google Cloud Storage)", "gcs") from None
    return google.auth


def default_credentials() -> tuple[Any, str | None]:
    """google-auth's Application Default Credentials and their project, scoped to storage.

    Raises:
        MissingDependency: google-auth is not installed (the ``gcs`` extra).
        PermissionDenied: No credentials were found; the message says how to provide them.
    """
    google_auth = _google_auth()
    try:
        credentials, project = google_auth.default(scopes=[SCOPE])
    except google_auth.exceptions.DefaultCredentialsError as exc:
        raise PermissionDenied(
            errno.EACCES, f"no Google Cloud credentials found ({exc}); {_HINT}"
        ) from None
    return credentials, project


class Tokens:
    """The ``Authorization`` header of each request, refreshed before the token expires.

    Args:
        credentials: A ``google.auth.credentials.Credentials``, or None to send no header
            (anonymous access, an emulator).
    """

    def __init__(self, credentials: Any | None) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()
        self._request: Any = None

    def headers(self, *, force: bool = False) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}``, or ``{}`` without credentials.

        Args:
            force: Refresh even if the token looks valid (the store answered 401).

        Raises:
            PermissionDenied: The credentials could not be refreshed (revoked, expired key).
            StorageUnavailable: The token endpoint could not be reached.
        """
        credentials = self.credentials
        if credentials is None:
            return {}
        with self._lock:
            if force or not credentials.valid:
                self._refresh()
            token = credentials.token
        return {"Authorization": f"Bearer {token}"}

    def _refresh(self) -> None:
        assert self.credentials is not None
        google_auth = _google_auth()
        if self._request is None:
            import urllib3

            self._request = google_auth.transport.urllib3.Request(urllib3.PoolManager())
        try:
            self.credentials.refresh(self._request)
        except google_auth.exceptions.RefreshError as exc:
            raise PermissionDenied(
                errno.EACCES, f"Google Cloud credentials could not be refreshed: {exc}; {_HINT}"
            ) from None
        except google_auth.exceptions.TransportError as exc:
            raise StorageUnavailable(
                errno.EAGAIN, f"could not reach Google's token endpoint: {exc}"
            ) from None
