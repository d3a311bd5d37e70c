"""The manifest of a TreeCache copy: which files make up the base tree, with their digests.

A remote copy is complete when its manifest exists *and* every object the manifest names is
there with the size and ETag the manifest gives (Nix's rule: the ``.narinfo`` is written last,
so a store path without one does not exist; Bazel's lesson: an entry whose blobs are gone must
not be served). The manifest is uploaded after every file it names, create-only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import hashsync
from hashsync.errors import IntegrityError, InvalidArgument
from hashsync.storage.base import ObjectInfo, validate_key

FORMAT = "hashsync-treecache/1"
META_DIR = ".hashsync"
MANIFEST_KEY = f"{META_DIR}/manifest.json"
LEASE_KEY = f"{META_DIR}/lease.json"
# The base files a builder is about to upload, written before the first of them (remote only):
# a builder that takes over after a crash deletes those its own build does not have. Without
# it, a dead build's files would be indistinguishable from other machines' derived files.
PENDING_KEY = f"{META_DIR}/pending.json"
# A local copy holds the manifest only: this machine's bookkeeping of it lives under
# $HASHSYNC_CACHE_DIR (see _state.py), so every machine's copy is the same tree.
MAX_MANIFEST_BYTES = 256 * 1024**2

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HEX = re.compile(r"[0-9a-f]+")
_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]{1,5})?")
_MD5 = re.compile(r"[0-9a-f]{32}")


def check_segment(value: object, what: str) -> str:
    """``value`` if it can be one segment of a key: letters, digits, ``.``, ``_``, ``-``.

    Raises:
        InvalidArgument: Anything else (``/``, ``..``, empty, spaces, over 200 characters).
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument(
            f"{what} must be 1-200 letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit, no '..'), not {value!r}"
        )
    return value


#: What macOS writes beside a user's files (Finder's ``.DS_Store``, AppleDouble ``._NAME`` on
#: non-HFS volumes): never part of a tree, never sent to another machine. A sync copies them
#: (as aws s3 sync does) unless excluded; a TreeCache leaves them out.
OS_CLUTTER = (".DS_Store", "*/.DS_Store", "._*", "*/._*")


def is_os_clutter(path: str) -> bool:
    """Whether ``path`` is one of :data:`OS_CLUTTER`'s files."""
    name = path.rpartition("/")[2]
    return name == ".DS_Store" or name.startswith("._")


def is_meta(path: str) -> bool:
    """Whether ``path`` is TreeCache bookkeeping rather than a file of the tree."""
    return path == META_DIR or path.startswith(META_DIR + "/")


@dataclass(frozen=True)
class FileRecord:
    """One file of the base tree.

    ``md5`` is recorded for stores that keep MD5s rather than S3 ETags (GCS): their listings
    are checked against it.
    """

    size: int
    etag: str
    sha256: str
    md5: str | None = None

    def matches(self, digest: str | None) -> bool:
        """Whether a store's hash (as ``get_hash`` spells it) is this file's."""
        value = (digest or "").lower()
        if value.startswith("md5:"):
            # A manifest written for S3 (no MD5s) still knows single-part ETags: MD5s.
            known = self.md5 if self.md5 is not None else self.etag
            return "-" not in known and value[4:] == known
        return ":" not in value and value == self.etag


@dataclass(frozen=True)
class Manifest:
    """What a complete copy holds; see the module documentation."""

    name: str
    key: str
    files: Mapping[str, FileRecord]
    part_size: int
    tree_hash: str
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    tool: str = f"hashsync {hashsync.__version__}"

    @property
    def total_bytes(self) -> int:
        """Bytes of all base files."""
        return sum(r.size for r in self.files.values())

    def to_json(self) -> bytes:
        """The manifest as written to ``.hashsync/manifest.json`` (keys sorted, stable)."""
        doc = {
            "format": FORMAT,
            "name": self.name,
            "key": self.key,
            "created": self.created,
            "tool": self.tool,
            "part_size": self.part_size,
            "tree_hash": self.tree_hash,
            "files": {
                path: {
                    "size": r.size,
                    "etag": r.etag,
                    "sha256": r.sha256,
                    **({"md5": r.md5} if r.md5 is not None else {}),
                }
                for path, r in sorted(self.files.items())
            },
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, name: str, key: str) -> Manifest:
        """Parse and check a manifest; it must belong to ``name`` and ``key``.

        Raises:
            IntegrityError: Not a manifest of this copy, or malformed (bad JSON, a path that
                is not a valid key or leaves the tree, a digest that is not hex).
        """
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise IntegrityError(f"the manifest is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise IntegrityError(f"not a {FORMAT} manifest")
        if doc.get("name") != name or doc.get("key") != key:
            raise IntegrityError(
                f"the manifest is for {doc.get('name')!r}-{doc.get('key')!r}, not {name}-{key}"
            )
        files = doc.get("files")
        part_size = doc.get("part_size")
        tree = doc.get("tree_hash")
        if not isinstance(files, dict) or not isinstance(part_size, int) or part_size <= 0:
            raise IntegrityError("the manifest has no valid 'files' or 'part_size'")
        if not isinstance(tree, str) or len(tree) != 64 or not _HEX.fullmatch(tree):
            raise IntegrityError("the manifest has no valid 'tree_hash'")
        records: dict[str, FileRecord] = {}
        for path, rec in files.items():
            try:
                validate_key(path)
            except InvalidArgument as e:
                raise IntegrityError(f"the manifest names an invalid path: {e}") from None
            if is_meta(path) or not isinstance(rec, dict):
                raise IntegrityError(f"the manifest names {path!r}, which cannot be a tree file")
            size, etag, sha = rec.get("size"), rec.get("etag"), rec.get("sha256")
            md5 = rec.get("md5")
            if md5 is not None and (not isinstance(md5, str) or not _MD5.fullmatch(md5)):
                raise IntegrityError(f"the manifest's record of {path!r} is malformed")
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or not isinstance(etag, str)
                or not _ETAG.fullmatch(etag)
                or not isinstance(sha, str)
                or len(sha) != 64
                or not _HEX.fullmatch(sha)
            ):
                raise IntegrityError(f"the manifest's record of {path!r} is malformed")
            records[path] = FileRecord(size, etag, sha, md5)
        if tree_hash_of(records) != tree:
            raise IntegrityError("the manifest's tree_hash does not match its files")
        return cls(
            name=name,
            key=key,
            files=records,
            part_size=part_size,
            tree_hash=tree,
            created=str(doc.get("created", "")),
            tool=str(doc.get("tool", "")),
        )

    def missing_or_different(self, listing: Iterable[ObjectInfo]) -> list[str]:
        """The manifest's files that ``listing`` lacks or has with another size or ETag."""
        return self.not_matching({info.key: (info.size, info.hash) for info in listing})

    def not_matching(self, seen: Mapping[str, tuple[int, str | None]]) -> list[str]:
        """The manifest's files ``seen`` (path -> size, ETag) lacks or has otherwise, sorted."""
        bad = []
        for path, rec in self.files.items():
            size, digest = seen.get(path, (None, None))
            if size != rec.size or not rec.matches(digest):
                bad.append(path)
        return sorted(bad)

    def with_md5(self, root: Path) -> Manifest:
        """This manifest with every file's MD5, hashed from the tree at ``root``.

        For a store that keeps MD5s (GCS). The tree hash does not change.

        Raises:
            IntegrityError: A file no longer has the manifest's size.
        """
        if all(r.md5 is not None for r in self.files.values()):
            return self
        paths = sorted(self.files)
        digests = hashsync.hash_files([root / p for p in paths], "md5")
        files = {}
        for path, md5 in zip(paths, digests, strict=True):
            rec = self.files[path]
            if (root / path).stat().st_size != rec.size:
                raise IntegrityError(f"{root / path} changed since it was described")
            files[path] = FileRecord(rec.size, rec.etag, rec.sha256, md5)
        return Manifest(
            name=self.name,
            key=self.key,
            files=files,
            part_size=self.part_size,
            tree_hash=self.tree_hash,
            created=self.created,
            tool=self.tool,
        )


def tree_hash_of(files: Mapping[str, FileRecord]) -> str:
    """:func:`hashsync.tree_hash` (SHA-256) of a tree holding exactly ``files``."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.encode()):
        h.update(b"file\0" + path.encode() + b"\0" + files[path].sha256.encode() + b"\n")
    return h.hexdigest()


def describe_tree(root: Path, part_size: int, *, md5: bool = False) -> dict[str, FileRecord]:
    """Hash every file under ``root`` except bookkeeping: size, ETag and SHA-256 each.

    With ``md5``, the MD5 of each file too (for a store that keeps MD5s, GCS).

    Raises:
        IntegrityError: A file could not be read, or changed between the two hashing passes.
    """
    rules: list[tuple[Literal["include", "exclude"], str]] = [
        ("exclude", f"{META_DIR}/*"),
        *(("exclude", pattern) for pattern in OS_CLUTTER),
    ]
    by_sha = hashsync.scan(root, algorithm="sha256", filters=rules)
    by_etag = hashsync.scan(root, algorithm="etag", filters=rules, part_size=part_size)
    problems = list(by_sha.errors) + list(by_etag.errors)
    if problems:
        path, why = problems[0]
        raise IntegrityError(
            f"cannot describe {root}: {len(problems)} files unreadable, e.g. {path}: {why}"
        )
    etags = {e.path: (e.size, e.digest) for e in by_etag}
    md5s: dict[str, tuple[int, str | None]] = {}
    if md5:
        by_md5 = hashsync.scan(root, algorithm="md5", filters=rules)
        if list(by_md5.errors):
            path, why = list(by_md5.errors)[0]
            raise IntegrityError(f"cannot describe {root}: {path}: {why}")
        md5s = {e.path: (e.size, e.digest) for e in by_md5}
    files: dict[str, FileRecord] = {}
    for e in by_sha:
        size, etag = etags.get(e.path, (None, None))
        if size != e.size or etag is None or e.digest is None:
            raise IntegrityError(f"{root / e.path} changed while it was hashed")
        size_md5, digest_md5 = md5s.get(e.path, (e.size, None))
        if size_md5 != e.size or (md5 and digest_md5 is None):
            raise IntegrityError(f"{root / e.path} changed while it was hashed")
        files[e.path] = FileRecord(e.size, etag, e.digest, digest_md5)
    if len(files) != len(etags):
        raise IntegrityError(f"files appeared or vanished under {root} while it was hashed")
    return files
