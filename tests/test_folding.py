"""Destinations that fold names: case-insensitive or Unicode-normalising (issue 29, item 3).

This kernel mounts no casefolded file system (no CONFIG_UNICODE), so a Mac's disk is
simulated where hashsync reaches it: :class:`FoldingStorage` resolves each key the way
APFS does (an existing entry whose name folds alike is the one opened, replaced or
deleted, and keeps its spelling), while listings show the real names, as a case-preserving
file system's do. The probe is tested with ``os.lstat`` resolving names the same way.
"""

from __future__ import annotations

import os
import pickle
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hashsync
from hashsync._folding import EXACT, Folding, collisions, probe
from hashsync.cache import LocalCache
from hashsync.errors import NameCollision
from hashsync.storage import SimpleLocalStorage
from hashsync.storage.base import validate_key
from hashsync.syncing.folded import pair_spellings

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
CASE = Folding(case=True)
BOTH = Folding(case=True, unicode=True)


class FoldingStorage(SimpleLocalStorage):
    """A local storage on a simulated case-insensitive, normalisation-insensitive disk.

    ``detected`` is what its probe answers: False stands for a folding directory below a
    root that does not fold (a mounted share), which the probe cannot see.
    """

    def __init__(self, root: Path, folding: Folding = BOTH, *, detected: bool = True) -> None:
        super().__init__(root)
        self.simulated = folding
        self.detected = detected

    def name_folding(self) -> Folding:
        return self.simulated if self.detected else EXACT

    def path(self, key: str) -> Path:
        here = self.root
        for part in validate_key(key).split("/"):
            want = self.simulated.fold(part)
            try:
                names = os.listdir(here)
            except OSError:
                names = []
            here = here / next((n for n in names if self.simulated.fold(n) == want), part)
        return here


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


# -- the pure logic ---------------------------------------------------------------------


def test_fold_matches_what_macos_takes_for_one_name():
    assert CASE.fold("Data.CSV") == CASE.fold("data.csv")
    assert CASE.fold(NFC) != CASE.fold(NFD)  # case-insensitive alone keeps NFC and NFD apart
    assert Folding(unicode=True).fold(NFC) == Folding(unicode=True).fold(NFD)
    assert Folding(unicode=True).fold("A") != Folding(unicode=True).fold("a")
    assert BOTH.fold("CAFÉ") == BOTH.fold(NFD)
    assert EXACT.fold("Data.csv") == "Data.csv" and not EXACT


def test_collisions_name_the_groups():
    keys = ["Data.csv", "data.csv", "x/y", "X/z", "Logs", "logs/1.txt", NFC, NFD, "a", "a/b"]
    assert collisions(keys, BOTH) == [("Data.csv", "data.csv"), ("Logs", "logs/1.txt"), (NFD, NFC)]
    assert collisions(keys, EXACT) == []
    # A key given twice is one key.
    assert collisions(["k", "k"], BOTH) == []


def test_the_error_names_both_keys_and_survives_pickling():
    exc = NameCollision(("data.csv", "Data.csv"), "case-insensitive", "'/mnt/x'")
    assert "'Data.csv' and 'data.csv'" in str(exc) and "/mnt/x" in str(exc)
    assert isinstance(exc, FileExistsError) and exc.keys == ("Data.csv", "data.csv")
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) and again.keys == exc.keys


_pieces = st.sampled_from(["a", "A", "b", "B", "é", "e\u0301", "É", "/", "ß", "SS"])
_key = st.lists(_pieces, min_size=1, max_size=6).map("".join).filter(lambda k: all(k.split("/")))
_keys = st.lists(_key, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_keys, st.sampled_from([CASE, Folding(unicode=True), BOTH]))
def test_collisions_are_exactly_the_keys_that_share_a_file_or_a_directory(keys, folding):
    def related(a: str, b: str) -> bool:
        fa, fb = folding.fold(a), folding.fold(b)
        if a == b:
            return False
        if fa == fb:
            return True  # one file
        # One is a file where the other needs a directory, unless spelled exactly alike
        # (that conflict exists on every disk and is not this check's).
        return (fb.startswith(fa + "/") and not b.startswith(a + "/")) or (
            fa.startswith(fb + "/") and not a.startswith(b + "/")
        )

    groups = collisions(keys, folding)
    grouped = {k: g for g in groups for k in g}
    distinct = list(dict.fromkeys(keys))
    for a in distinct:
        for b in distinct:
            if related(a, b):  # complete: every related pair is in one group
                assert grouped.get(a) is not None and grouped[a] == grouped.get(b), (a, b)
    for g in groups:  # sound: nobody is in a group without a reason in it
        assert len(set(g)) == len(g) > 1
        for k in g:
            assert any(related(k, o) for o in g), (k, g)


@settings(max_examples=200, deadline=None)
@given(_keys, _keys)
def test_pairing_renames_only_unambiguous_spellings(src_keys, dst_keys):
    def listing(keys):
        return hashsync.Listing.from_entries(
            hashsync.FileEntry(k, len(k)) for k in sorted(set(keys))
        )

    src, dst = listing(src_keys), listing(dst_keys)
    paired = pair_spellings(src, dst, BOTH)
    assert len(paired) == len(dst)
    assert sorted(BOTH.fold(p) for p in paired.paths()) == sorted(BOTH.fold(p) for p in dst.paths())
    renamed = set(paired.paths()) - set(dst.paths())
    for p in renamed:
        assert p in src  # only ever to a source spelling
        assert sum(BOTH.fold(s) == BOTH.fold(p) for s in src.paths()) == 1


# -- the probe ----------------------------------------------------------------------------


def test_probe_says_exact_for_this_machines_disk(tmp_path):
    (tmp_path / "Data.csv").write_bytes(b"x")
    assert probe(tmp_path) == EXACT
    assert probe(tmp_path / "not" / "yet") == EXACT  # asked of the nearest existing parent
    assert os.listdir(tmp_path) == ["Data.csv"]  # the probe's file is gone


def _folding_lstat(monkeypatch, fold):
    """Make os.lstat resolve names as a folding disk does (the probe asks nothing else)."""
    real = os.lstat

    def lstat(path, *args, **kwargs):
        path = Path(path)
        try:
            names = os.listdir(path.parent)
        except OSError:
            names = []
        match = next((n for n in names if fold(n) == fold(path.name)), path.name)
        return real(path.parent / match, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)


def test_probe_sees_case_folding_in_a_directorys_own_entries(tmp_path, monkeypatch):
    (tmp_path / "Data.csv").write_bytes(b"x")
    _folding_lstat(monkeypatch, CASE.fold)
    assert probe(tmp_path).case


def test_probe_sees_a_one_for_one_case_table(tmp_path, monkeypatch):
    # NTFS, exFAT and SMB fold case letter by letter: "Maße" and "mAßE" are one name there,
    # though full case folding would write "MASSE".
    (tmp_path / "Maße.txt").write_bytes(b"x")
    _folding_lstat(
        monkeypatch, lambda n: "".join(c.lower() if len(c.lower()) == 1 else c for c in n)
    )
    assert probe(tmp_path).case


def test_probe_sees_normalisation(tmp_path, monkeypatch):
    (tmp_path / NFC).write_bytes(b"x")
    _folding_lstat(monkeypatch, Folding(unicode=True).fold)
    assert probe(tmp_path).unicode


def test_hard_links_are_not_taken_for_folding(tmp_path):
    # Two links to one file on an exact disk (cp -al, dedup tools): README and readme.
    (tmp_path / "README").write_bytes(b"x")
    os.link(tmp_path / "README", tmp_path / "readme")
    (tmp_path / NFC).write_bytes(b"y")
    os.link(tmp_path / NFC, tmp_path / NFD)
    assert probe(tmp_path) == EXACT
    assert sorted(os.listdir(tmp_path)) == sorted(["README", "readme", NFC, NFD])


def test_probe_of_an_unwritable_directory_is_exact(tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    where.chmod(0o555)
    try:
        # Root writes anyway; what matters is that no probe file stays behind.
        assert probe(where) == EXACT
        assert os.listdir(where) == []
    finally:
        where.chmod(0o755)


# -- sync into a folding destination --------------------------------------------------------


def test_colliding_source_keys_are_refused_naming_both(tmp_path):
    src = _write(tmp_path / "src", {"Data.csv": b"upper", "data.csv": b"lower", "ok.txt": b"1"})
    dst = FoldingStorage(tmp_path / "dst")
    result = hashsync.sync(src, dst, progress=False)
    assert not result.ok
    failed = dict(result.failed)
    assert set(failed) == {"Data.csv", "data.csv"}
    assert "'Data.csv' and 'data.csv'" in failed["data.csv"]
    assert _files(tmp_path / "dst") == {"ok.txt": b"1"}


def test_a_normalisation_pair_is_refused(tmp_path):
    src = _write(tmp_path / "src", {NFC: b"composed", NFD: b"decomposed"})
    result = hashsync.sync(src, FoldingStorage(tmp_path / "dst"), progress=False)
    assert {k for k, _ in result.failed} == {NFC, NFD}
    assert _files(tmp_path / "dst") == {}


def test_delete_never_removes_either_colliding_key(tmp_path):
    src = _write(tmp_path / "src", {"Data.csv": b"upper", "data.csv": b"lower"})
    _write(tmp_path / "dst", {"DATA.CSV": b"old", "gone.txt": b"g"})
    result = hashsync.sync(src, FoldingStorage(tmp_path / "dst"), delete=True, progress=False)
    assert "DATA.CSV" not in result.deleted
    assert _files(tmp_path / "dst")["DATA.CSV"] == b"old"


def test_a_differently_spelled_copy_is_compared_not_deleted(tmp_path):
    src = _write(tmp_path / "src", {"data.csv": b"new content", "Dir/x": b"x"})
    _write(tmp_path / "dst", {"Data.csv": b"old content", "dir/x": b"x"})
    dst = FoldingStorage(tmp_path / "dst")
    result = hashsync.sync(src, dst, delete=True, progress=False)
    assert result.ok and result.deleted == [] and result.transferred == ["data.csv"]
    # The file keeps the spelling it had (as APFS does) and holds the source's content.
    assert _files(tmp_path / "dst") == {"Data.csv": b"new content", "dir/x": b"x"}
    again = hashsync.sync(src, dst, delete=True, progress=False)
    assert again.ok and again.transferred == [] and again.deleted == []


def test_cli_diff_shows_the_collision(tmp_path, capsys, monkeypatch):
    from hashsync.cli import main
    from hashsync.storage.local import FilesystemStorage

    src = _write(tmp_path / "src", {"Data.csv": b"upper", "data.csv": b"lower"})
    monkeypatch.setattr(FilesystemStorage, "name_folding", lambda self: CASE)
    code = main(["diff", str(src), str(tmp_path / "dst"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "'Data.csv' and 'data.csv' would be one file" in err


def test_nothing_just_written_is_deleted_where_the_probe_saw_no_folding(tmp_path):
    # A folding directory the probe cannot see: the sync plans "copy data.csv, delete
    # Data.csv", and the second would delete the file the first just wrote.
    src = _write(tmp_path / "src", {"data.csv": b"new content"})
    _write(tmp_path / "dst", {"Data.csv": b"old content"})
    dst = FoldingStorage(tmp_path / "dst", detected=False)
    result = hashsync.sync(src, dst, delete=True, progress=False)
    assert result.transferred == ["data.csv"] and result.deleted == []
    assert [k for k, _ in result.skipped_keys] == ["Data.csv"]
    assert "just written as 'data.csv'" in result.skipped_keys[0][1]
    assert _files(tmp_path / "dst") == {"Data.csv": b"new content"}


_tree_keys = st.dictionaries(
    st.lists(st.sampled_from(["a", "A", "é", "e\u0301", "/"]), min_size=1, max_size=4)
    .map("".join)
    .filter(lambda k: all(k.split("/"))),
    st.binary(min_size=0, max_size=8),
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_tree_keys, _tree_keys, st.booleans())
def test_sync_into_a_folding_disk_loses_nothing(tmp_path_factory, source, existing, delete):
    base = tmp_path_factory.mktemp("fold")
    src = base / "src"
    src.mkdir()
    dst_root = base / "dst"
    dst_root.mkdir()
    simulated = FoldingStorage(dst_root)
    written_src = {}
    for key, data in source.items():
        try:
            _write(src, {key: data})
            written_src[key] = data
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            continue
    for key, data in existing.items():
        try:
            simulated.write_bytes(key, data)
        except (OSError, hashsync.errors.HashsyncError):
            continue
    source_keys = set(_files(src))
    groups = {k for g in collisions(source_keys, BOTH) for k in g}
    result = hashsync.sync(src, simulated, delete=delete, allow_empty_source=True, progress=False)
    failed = {k for k, _ in result.failed}
    assert groups <= failed
    for key in source_keys - failed:
        # Every key that was not refused reads back as the source holds it.
        assert simulated.path(key).read_bytes() == (src / key).read_bytes(), key
    # Nothing that folds to a colliding key is deleted. (Other deletions may happen: a
    # destination directory in the way of a source file is replaced before the copies.)
    assert not {BOTH.fold(k) for k in result.deleted} & {BOTH.fold(k) for k in groups}


# -- caches and the hub client -----------------------------------------------------------------


def test_cache_get_many_refuses_a_colliding_batch(tmp_path, monkeypatch):
    from hashsync.storage.local import FilesystemStorage

    monkeypatch.setattr(FilesystemStorage, "name_folding", lambda self: CASE)
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(NameCollision, match="'Data.csv' and 'data.csv'"):
        cache.get_many(["Data.csv", "data.csv"])


def test_cache_never_replaces_another_keys_file(tmp_path, monkeypatch):
    from hashsync.storage.local import FilesystemStorage

    monkeypatch.setattr(FilesystemStorage, "name_folding", lambda self: CASE)
    cache = LocalCache(tmp_path / "cache")
    upper = tmp_path / "upper"
    upper.write_bytes(b"upper")
    lower = tmp_path / "lower"
    lower.write_bytes(b"lower")
    first = cache.put("d/Data.csv", upper)
    # On the folding disk "d/data.csv" reaches that very file: a hard link makes it so here.
    os.link(first, first.with_name("data.csv"))
    with pytest.raises(NameCollision, match="'d/Data.csv' and 'd/data.csv'"):
        cache.put("d/data.csv", lower)
    assert cache.get("d/Data.csv").read_bytes() == b"upper"


def test_hub_client_refuses_colliding_dataset_paths(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    import hashsync._folding as folding_module
    from hashsync.hub import DatasetHubClient
    from hub_helpers import KEY, running_hub

    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    _write(
        tmp_path / "datasets" / "mixed", {"Data.csv": b"upper", "data.csv": b"lower", "ok": b"1"}
    )
    with running_hub(tmp_path / "datasets") as url:
        client = DatasetHubClient(url, KEY, cache_dir=tmp_path / "kept")
        assert client.get_file("mixed", "data.csv").read_bytes() == b"lower"  # exact disk
        monkeypatch.setattr(folding_module, "_ask", lambda where: CASE)
        monkeypatch.setattr(folding_module, "_probed", {})
        client = DatasetHubClient(url, KEY, cache_dir=tmp_path / "mac")
        with pytest.raises(NameCollision, match="'Data.csv' and 'data.csv'"):
            client.download_dataset("mixed", progress=False)
        with pytest.raises(NameCollision):
            client.get_file("mixed", "Data.csv")
        assert client.get_file("mixed", "ok").read_bytes() == b"1"
        [ok] = client.download_dataset("mixed", ["ok"], progress=False)
        assert ok.read_bytes() == b"1"
        assert not (tmp_path / "mac" / "mixed" / "data.csv").exists()


def test_a_sync_whose_keys_cannot_fold_probes_nothing(tmp_path, monkeypatch):
    from hashsync.storage.local import FilesystemStorage

    def no_probe(self):
        raise AssertionError("probed a destination where no two keys could fold together")

    monkeypatch.setattr(FilesystemStorage, "name_folding", no_probe)
    src = _write(tmp_path / "src", {"a.txt": b"1", "B/c.txt": b"2", NFC: b"3"})
    _write(tmp_path / "dst", {"other.txt": b"x"})
    assert hashsync.sync(src, tmp_path / "dst", delete=True, progress=False).ok


def test_a_segmented_sync_sees_collisions_across_segments(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "2")
    files = {f"Data/{i}": b"u" for i in range(3)} | {"data/0": b"l", "z/1": b"z"}
    src = _write(tmp_path / "src", files)
    with pytest.raises(NameCollision, match="'Data/0' and 'data/0'"):
        hashsync.sync(src, FoldingStorage(tmp_path / "dst"), progress=False)
    assert _files(tmp_path / "dst") == {}


def test_a_segmented_sync_spares_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_SEGMENTED_ABOVE", "2")
    src = _write(tmp_path / "src", {"d/data.csv": b"new", "e/1": b"1", "e/2": b"2"})
    _write(tmp_path / "dst", {"d/Data.csv": b"old"})
    dst = FoldingStorage(tmp_path / "dst", detected=False)
    result = hashsync.sync(src, dst, delete=True, progress=False)
    assert result.deleted == [] and [k for k, _ in result.skipped_keys] == ["d/Data.csv"]
    assert _files(tmp_path / "dst")["d/Data.csv"] == b"new"
