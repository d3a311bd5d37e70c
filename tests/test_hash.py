"""Hashing API: every algorithm against independent references, files, streaming, errors."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hashsync
from hashsync import errors
from refs import MIB, reference

ALGOS = list(hashsync.ALGORITHMS)
PART = 5 * MIB  # the smallest legal part size, so multipart cases stay small


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Sizes cluster around the interesting places: empty, tiny, CRC/part boundaries, multipart.
sizes = st.one_of(
    st.integers(0, 4096),
    st.sampled_from([PART - 1, PART, PART + 1, 2 * PART, 2 * PART + 7]),
    st.integers(0, 12 * MIB),
)
fast = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_algorithms_listed():
    assert set(ALGOS) == {
        "md5",
        "sha1",
        "sha256",
        "crc32",
        "crc32c",
        "crc64nvme",
        "blake3",
        "xxh3",
        "etag",
    }


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [("crc32", "cbf43926"), ("crc32c", "e3069283"), ("crc64nvme", "ae8b14860a799888")],
)
def test_published_check_values(algorithm, expected):
    assert hashsync.hash_bytes(b"123456789", algorithm) == expected
    assert reference(b"123456789", algorithm) == expected


@pytest.mark.parametrize("algorithm", ALGOS)
@given(data=st.binary(max_size=3000))
@fast
def test_hash_bytes_small_matches_reference(algorithm, data):
    assert hashsync.hash_bytes(data, algorithm, part_size=PART) == reference(data, algorithm, PART)


@pytest.mark.parametrize("algorithm", ALGOS)
@given(seed=st.integers(0, 2**32), size=sizes)
@settings(max_examples=8, deadline=None)
def test_hash_file_matches_reference(tmp_path_factory, algorithm, seed, size):
    data = blob(seed, size)
    path = tmp_path_factory.mktemp("f") / "data.bin"
    path.write_bytes(data)
    want = reference(data, algorithm, PART)
    assert hashsync.hash_bytes(data, algorithm, part_size=PART) == want
    assert hashsync.hash_file(path, algorithm, part_size=PART) == want
    assert hashsync.hash_file(path, algorithm, part_size=PART, threads=1) == want


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "etag", "md5"])
def test_big_file_split_into_parts_equals_reference(tmp_path, algorithm):
    # 70 MiB + 3: several CRC chunks and 15 ETag parts, so the combine paths are exercised.
    data = blob(1, 70 * MIB + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    for threads in (1, 2, 5):
        got = hashsync.hash_file(path, algorithm, part_size=PART, threads=threads)
        assert got == reference(data, algorithm, PART)


@pytest.mark.parametrize("algorithm", ALGOS)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 11 * MIB),
    cuts=st.lists(st.integers(0, 11 * MIB)),
)
@settings(max_examples=6, deadline=None)
def test_streaming_hasher_any_chunking(algorithm, seed, size, cuts):
    data = blob(seed, size)
    h = hashsync.Hasher(algorithm, part_size=PART)
    assert h.name == algorithm
    prev = 0
    for c in sorted(c for c in cuts if c <= size) + [size]:
        h.update(data[prev:c])
        prev = c
    snapshot = h.copy()
    assert h.hexdigest() == reference(data, algorithm, PART)
    snapshot.update(b"x")
    assert h.hexdigest() == reference(data, algorithm, PART)  # copies are independent


def test_hasher_accepts_buffers_rejects_str():
    h = hashsync.Hasher("md5")
    h.update(bytearray(b"ab"))
    h.update(memoryview(b"cd"))
    assert h.hexdigest() == reference(b"abcd", "md5")
    with pytest.raises(TypeError, match="encode"):
        h.update("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [None, 16 * MIB])
def test_etag_threshold(tmp_path, threshold):
    data = blob(2, 10 * MIB)
    path = tmp_path / "f"
    path.write_bytes(data)
    got = hashsync.etag(path, part_size=PART, threshold=threshold)
    if threshold is None:
        assert got == reference(data, "etag", PART) and got.endswith("-2")
    else:
        assert got == reference(data, "md5")


def test_hash_files_many_equals_per_file_in_order(tmp_path):
    rng = random.Random(3)
    paths = []
    for i in range(300):
        p = tmp_path / f"d{i % 7}" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rng.randbytes(rng.choice([0, 1, 100, 4096, 70_000, 6 * MIB])))
        paths.append(p)
    rng.shuffle(paths)
    for algorithm in ("sha256", "etag", "crc64nvme"):
        per_file = [hashsync.hash_file(p, algorithm, part_size=PART) for p in paths]
        for threads in (1, 2, 8):
            got = hashsync.hash_files(paths, algorithm, part_size=PART, threads=threads)
            assert got == per_file
        assert per_file == [reference(p.read_bytes(), algorithm, PART) for p in paths]


def test_hash_files_error_names_the_path(tmp_path):
    ok = tmp_path / "ok"
    ok.write_bytes(b"fine")
    missing = tmp_path / "missing.bin"
    with pytest.raises(errors.NotFound) as exc:
        hashsync.hash_files([ok, missing, ok])
    assert exc.value.filename == str(missing)
    assert "missing.bin" in str(exc.value)
    out = hashsync.hash_files([ok, missing, tmp_path], return_exceptions=True)
    assert out[0] == reference(b"fine", "sha256")
    assert isinstance(out[1], errors.NotFound) and isinstance(out[1], FileNotFoundError)
    assert isinstance(out[2], errors.IsADirectory)
    assert hashsync.hash_files([]) == []
    assert hashsync.hash_files(iter([ok])) == [reference(b"fine", "sha256")]
    with pytest.raises(TypeError, match="iterable of paths"):
        hashsync.hash_files(str(ok))


def test_errors_are_clear(tmp_path):
    with pytest.raises(errors.NotFound, match="nope"):
        hashsync.hash_file(tmp_path / "nope")
    with pytest.raises(errors.IsADirectory, match="directory"):
        hashsync.hash_file(tmp_path)
    with pytest.raises(errors.UnknownAlgorithm, match="sha3.*valid algorithms: md5, sha1"):
        hashsync.hash_bytes(b"", "sha3")
    with pytest.raises(errors.InvalidPartSize, match="minimum part size of 5 MiB"):
        hashsync.etag(__file__, part_size=1024)
    with pytest.raises(errors.InvalidPartSize, match="maximum part size of 5 GiB"):
        hashsync.hash_bytes(b"", "etag", part_size=6 * 1024**3)
    # Past 10,000 parts the part size doubles as s3transfer's (issue 26; test_s3_etag.py),
    # so only parts above 5 GiB are refused (an object beyond S3's 5 TiB anyway).
    with pytest.raises(errors.InvalidPartSize, match="maximum part size of 5 GiB"):
        hashsync._native.upload_part_size(5 * 1024**3 * 10_001, part_size=5 * 1024**3)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(errors.NotARegularFile):
        hashsync.hash_file(fifo)
    with pytest.raises(errors.HashsyncError):
        hashsync.hash_file(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    p.chmod(0)
    with pytest.raises(errors.PermissionDenied):
        hashsync.hash_file(p)


def test_file_shrinking_while_hashed_is_an_error(tmp_path):
    path = tmp_path / "shrinks"
    with open(path, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse; sha256 of it takes well over a second

    def shrink(done, total):
        if 0 < done < total:
            os.truncate(path, 1024)

    with pytest.raises(errors.FileChanged) as exc:
        hashsync.hash_file(path, "sha256", progress=shrink)
    assert exc.value.path == str(path)
    assert isinstance(exc.value, errors.IntegrityError)


def test_progress_from_calling_thread(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(1024**3)
    calls = []
    caller = threading.get_ident()

    def progress(done, total):
        calls.append((done, total, threading.get_ident()))

    digest = hashsync.hash_files([path], "sha256", progress=progress)[0]
    assert digest == "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"
    assert calls, "progress was never called"
    assert all(t == caller for _, _, t in calls)
    dones = [d for d, _, _ in calls]
    assert dones == sorted(dones)
    assert calls[-1][:2] == (1024**3, 1024**3)


def test_progress_exception_stops_work(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(2 * 1024**3)

    def boom(done, total):
        raise RuntimeError("stop")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stop"):
        hashsync.hash_file(path, "sha256", progress=boom)
    assert time.monotonic() - t0 < 1.0


def test_ctrl_c_stops_hash_files_quickly(tmp_path):
    paths = []
    for i in range(16):
        p = tmp_path / f"big{i}"
        with open(p, "wb") as f:
            f.truncate(2 * 1024**3)  # 32 GiB of sha256 in all: far more than the test waits
        paths.append(p)
    sent = []
    started = threading.Event()

    def interrupt():
        # From the first progress report on, the work is surely running (a fixed sleep lost
        # the race once on a loaded machine: the signal came after the work had finished).
        started.wait(30)
        time.sleep(0.2)
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        hashsync.hash_files(paths, "sha256", progress=lambda done, total: started.set())
    assert sent, f"hash_files finished in {time.monotonic() - t0:.1f} s before the signal"
    assert time.monotonic() - sent[0] < 0.5


def test_etag_matches_infers_part_size(tmp_path):
    data = blob(5, 21 * MIB + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    for part in (5 * MIB, 8 * MIB, 16 * MIB):
        e = reference(data, "etag", part)
        assert hashsync.etag_matches(path, e)
        assert hashsync.etag_matches(path, f'"{e}"')  # quoted, as S3 sends it
        assert hashsync.match_etag(path, e) == part
    assert hashsync.etag_matches(path, reference(data, "md5"))
    odd = 7 * MIB + 3
    assert not hashsync.etag_matches(path, reference(data, "etag", odd))
    assert hashsync.etag_matches(path, reference(data, "etag", odd), part_sizes=[odd])
    with pytest.raises(errors.InvalidArgument, match="not an S3 ETag"):
        hashsync.etag_matches(path, "W/abc-def")
    flipped = bytearray(data)
    flipped[-1] ^= 1
    path.write_bytes(bytes(flipped))
    assert not hashsync.etag_matches(path, reference(data, "etag", 8 * MIB))


@given(
    seed=st.integers(0, 2**32), size=st.integers(PART, 4 * PART), part=st.integers(PART, 2 * PART)
)
@settings(max_examples=10, deadline=None)
def test_etag_matches_exact_even_split(tmp_path_factory, seed, size, part):
    # Tools that split evenly (ceil(size/N)) must be recognised without hints.
    data = blob(seed, size)
    n = -(-size // part)
    even = -(-size // n)
    path = tmp_path_factory.mktemp("e") / "f"
    path.write_bytes(data)
    assert hashsync.etag_matches(path, reference(data, "etag", even))


def test_crc_combine_matches_zlib_and_the_whole():
    import zlib

    from hashsync._native import crc_combine

    a, b = b"hello, ", b"world" * 1000
    assert crc_combine("crc32", f"{zlib.crc32(a):08x}", f"{zlib.crc32(b):08x}", len(b)) == (
        f"{zlib.crc32(a + b):08x}"
    )
    for alg in ("crc32c", "crc64nvme"):
        parts = hashsync.hash_bytes(a, alg), hashsync.hash_bytes(b, alg)
        assert crc_combine(alg, *parts, len(b)) == hashsync.hash_bytes(a + b, alg)
    with pytest.raises(hashsync.errors.InvalidArgument):
        crc_combine("sha256", "00", "00", 1)
