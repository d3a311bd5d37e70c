"""S3 conditional writes: If-Match / If-None-Match, and claims where stores ignore them.

See :mod:`hashsync.storage.s3` for what each store makes atomic.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from hashsync.errors import (
    ConditionsNotEnforced,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)
from hashsync.storage._s3_base import (
    CLAIMS_DIR,
    clean_etag,
    mismatch_message,
    quoted_etag,
)
from hashsync.storage._s3_writing import S3Writing
from hashsync.storage.base import validate_key
from hashsync.storage.conditions import probe_conditions
from hashsync.storage.local import (
    FilesystemStorage,
    normalize_hash,
    source_file,
)


class S3Conditional(S3Writing):
    """Conditional writes and claims (part of :class:`~hashsync.storage.S3Storage`)."""

    # -- conditional writes ------------------------------------------------------------

    def _current_etag(self, key: str) -> str | None:
        try:
            return clean_etag(self._head(key)["ETag"])
        except NotFound:
            return None

    def conditions_enforced(self) -> bool:
        """Whether the store refuses what ``If-None-Match: *`` and ``If-Match`` forbid.

        Found out by one probe per endpoint and bucket, remembered for a month
        (:mod:`hashsync.storage.conditions`); the probe writes and deletes an object in the
        reserved claims directory.

        Raises:
            HashsyncError: The probe could not write (no access, store down).
        """
        where = self.location()
        store = "|".join(where[0][1:]) if where else f"{self.endpoint_url}|{self.bucket}"
        return probe_conditions(
            store,
            lambda key, data, create_only, if_hash: self._put_bytes(
                key, data, create_only, if_hash
            ),
            self._delete_quietly,
            f"{CLAIMS_DIR}/probe-{uuid.uuid4().hex}",
        )

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self._delete_object(key, self._full(key))

    def _require_conditions(self, key: str) -> None:
        """Refuse a create-only / if-hash write the store would not make exclusive."""
        if self.conditional_writes == "best-effort" or self.conditions_enforced():
            return
        raise ConditionsNotEnforced(
            f"refusing a conditional write of {key!r} to s3://{self.bucket}/{self.prefix}: the "
            f"store at {self.endpoint_url} ignores If-None-Match / If-Match (it accepted a "
            "create-only write of an existing object when checked), so the write could replace "
            "another writer's object silently; open the storage with "
            "conditional_writes='best-effort' to write with a HEAD check only"
        )

    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Upload ``source``'s file if its mtime is later than the object's Last-Modified.

        The upload is conditional on the ETag seen when deciding, so an object another
        writer uploaded meanwhile (which is newer still) is kept.

        Returns:
            True if uploaded; False if the object is as new or newer.
        """
        validate_key(key)
        path = source_file(source, key)
        try:
            head = self._head(key)
        except NotFound:
            head = None
        if head is not None:
            remote = head["LastModified"].timestamp()
            if path.stat().st_mtime <= remote:
                return False
        try:
            self._conditional_upload(key, path, None if head is None else clean_etag(head["ETag"]))
        except PreconditionFailed:
            return False
        return True

    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Upload ``source``'s file only if the object's ETag is still ``hash``.

        Sends ``If-Match`` (or ``If-None-Match: *`` when ``hash`` is ``None``); see the
        module documentation for how atomic each store makes this.

        Raises:
            PreconditionFailed: The object has another ETag, is missing although ``hash``
                was given, exists although ``hash`` is ``None``, or another writer holds
                the claim on this version (``conditional_writes="claim"``).
            ConditionsNotEnforced: The store ignores conditions (found out once, remembered).
        """
        validate_key(key)
        expected = None if hash is None else normalize_hash(hash)
        path = source_file(source, key)
        self._require_conditions(key)
        self._conditional_upload(key, path, expected)

    def _conditional_upload(self, key: str, path: Path, expected: str | None) -> None:
        with self._claim(key, expected):
            current = self._current_etag(key)
            if current != expected:
                raise PreconditionFailed(mismatch_message(key, self, expected, current))
            try:
                self._upload(key, path, if_match=expected, if_none_match=expected is None)
            except NotFound as exc:
                # AWS answers If-Match on a missing key with 404 NoSuchKey.
                raise PreconditionFailed(mismatch_message(key, self, expected, None)) from exc
            except PreconditionFailed as exc:
                raise PreconditionFailed(
                    f"{mismatch_message(key, self, expected, self._current_etag(key))} "
                    f"(the store refused the write: {exc})"
                ) from exc

    def write_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, if_hash: str | None = None
    ) -> str:
        """Store ``data`` with one PutObject, its condition checked by the store.

        Unlike :meth:`copy_from_if_overwriting_hash` there is no HEAD first (except with
        ``conditional_writes="best-effort"``, where the HEAD is all there is); a store known
        to ignore ``If-None-Match`` / ``If-Match`` is refused instead
        (:class:`~hashsync.errors.ConditionsNotEnforced`). With ``conditional_writes="claim"``
        the write also takes the claim on the version it replaces.

        Returns:
            The new object's ETag (checked against the MD5 of ``data``).

        Raises:
            PreconditionFailed: The store refused the condition.
            ConditionsNotEnforced: The store ignores conditions (found out once, remembered).
            InvalidArgument: Both conditions were given.
        """
        validate_key(key)
        if create_only and if_hash is not None:
            raise InvalidArgument("give create_only or if_hash, not both")
        if create_only or if_hash is not None:
            self._require_conditions(key)
        expected = None if if_hash is None else normalize_hash(if_hash)
        claim = (
            self._claim(key, expected)
            if create_only or expected is not None
            else contextlib.nullcontext()
        )
        with claim:
            if self.conditional_writes == "best-effort" and (create_only or expected):
                # The store may ignore the condition: what it holds now is checked first.
                current = self._current_etag(key)
                if current != expected:
                    raise PreconditionFailed(mismatch_message(key, self, expected, current))
            return self._put_bytes(key, data, create_only, expected)

    def _put_bytes(self, key: str, data: bytes, create_only: bool, expected: str | None) -> str:
        """One PutObject of ``data`` with the condition, checked by the store alone."""
        conditions: dict[str, str] = {}
        if create_only:
            conditions["IfNoneMatch"] = "*"
        elif expected is not None:
            conditions["IfMatch"] = quoted_etag(expected)
        md5 = hashlib.md5(data)
        try:
            answer = self._put_small(
                key, data, base64.b64encode(md5.digest()).decode(), {}, conditions
            )
        except NotFound as exc:
            if expected is None:
                raise
            raise PreconditionFailed(mismatch_message(key, self, expected, None)) from exc
        etag = clean_etag(answer.get("ETag", ""))
        if etag and etag != md5.hexdigest():
            raise IntegrityError(
                f"the store answered ETag {etag} for {key!r}, not the MD5 {md5.hexdigest()} of "
                "what was sent"
            )
        return etag or md5.hexdigest()

    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Delete the object only if its ETag is ``hash`` (``If-Match`` on DeleteObject).

        Raises:
            PreconditionFailed: The object has another ETag.
            ConditionsNotEnforced: The store ignores conditions (found out once, remembered).
            NotFound: No object has this key.
        """
        expected = normalize_hash(hash)
        self._require_conditions(key)
        current = clean_etag(self._head(key)["ETag"])
        if current != expected:
            raise PreconditionFailed(mismatch_message(key, self, expected, current))
        self._delete_object(key, self._full(key), if_match=quoted_etag(expected))

    @contextlib.contextmanager
    def _claim(self, key: str, expected: str | None) -> Iterator[None]:
        if self.conditional_writes != "claim":
            yield
            return
        name = hashlib.sha256(f"{key}\0{expected or ''}".encode()).hexdigest()
        claim = f"{self.prefix}{CLAIMS_DIR}/{name}"
        body = json.dumps(
            {
                "key": key,
                "expected": expected,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.time(),
            }
        ).encode()
        for attempt in range(2):
            try:
                md5_b64 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest())
                self._put_once(key, body, md5_b64.decode(), {}, {"IfNoneMatch": "*"}, full=claim)
                break
            except PreconditionFailed:
                if attempt == 0 and self._break_stale_claim(key, claim):
                    continue
                raise PreconditionFailed(
                    f"another writer is replacing version {expected or '(absent)'} of "
                    f"{key!r} in {self!r} (claim {claim} exists)"
                ) from None
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self._delete_object(key, claim)

    def _break_stale_claim(self, key: str, claim: str) -> bool:
        try:
            head = self._head(key, full=claim)
        except NotFound:
            return True  # released meanwhile: try again
        age = time.time() - head["LastModified"].timestamp()
        if age <= self.claim_ttl:
            return False
        with contextlib.suppress(NotFound, PreconditionFailed):
            # If-Match: of two writers breaking the same stale claim, only one deletes it.
            self._delete_object(key, claim, if_match=head["ETag"])
        return True
