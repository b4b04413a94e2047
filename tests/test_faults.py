"""Fault injection: the real backup and restore code against stores that fail.

No store emulator ever fails on its own, so :class:`FaultyBackend` plans the faults (per
method and call number, counted among calls whose key starts with a prefix) and
``assert_all_fired`` proves each one happened. The stack under test is the one
``open_backend`` builds for S3: ``RetryingBackend`` over the store (here with the fault
injector in between, and no real sleeping).

The invariant checked after every run, failed or not: every index on the store names a
data object that is there with exactly the size and SHA-256 the index records, and the
chain of indexes reads back (``Repository.refresh``) from a fresh local state.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from treeutil import assert_same_tree, snapshot

from blanket.backends.base import Backend, ObjectInfo
from blanket.backends.local import LocalBackend
from blanket.backends.memory import MemoryBackend
from blanket.backends.ratelimit import RateLimitedBackend, TokenBucket
from blanket.backends.s3 import S3Backend
from blanket.backends.wrappers import RetryingBackend, innermost, is_retriable
from blanket.backup import BackupOptions, BackupResult, run_backup
from blanket.crypto import PUBKEY, KeySpec
from blanket.errors import (
    AlreadyExists,
    BadRange,
    BlanketError,
    IntegrityError,
    InvalidKey,
    NotFound,
    StoreError,
    TransientStoreError,
)
from blanket.repo import Repository, init_repository
from blanket.restore.run import RestoreOptions, RestoreResult, run_restore
from blanket.testing import Fault, FaultyBackend, NoDeleteBackend

KiB = 1024
OPTS = BackupOptions(pack_size=48 * KiB, pack_entries=3)  # several packs from a small tree


# --- a small tree, a repository, checks ---------------------------------------------


def make_tree(root: Path, seed: int = 7) -> None:
    """Incompressible files, so each ~64 KiB of content seals a pack."""
    rnd = random.Random(seed)
    for d in ("a", "b/c", "d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for n, d in enumerate(["a", "a", "b", "b/c", "b/c", "d", "d", "."]):
        (root / d / f"f{n}.bin").write_bytes(rnd.randbytes(20 * KiB + n * 1000))
    (root / "d" / "link").symlink_to("f5.bin")
    (root / "empty").write_bytes(b"")


@pytest.fixture(params=["memory", "local", "seaweedfs"])
def plain(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The store without faults (memory keeps checksums, a directory does not; SeaweedFS
    is a real S3 engine that checks and keeps them). Tests where the store's kind makes
    no difference run on memory only, to stay fast."""
    if request.param == "memory":
        return MemoryBackend(f"faults-{uuid.uuid4().hex}")
    if request.param == "seaweedfs":
        request.getfixturevalue("seaweed_env")
        bucket = request.getfixturevalue("seaweedfs").bucket("faults")
        return S3Backend(bucket, f"run-{uuid.uuid4().hex[:12]}")
    store = LocalBackend(tmp_path / "store")
    store.create()
    return store


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root)
    return root


class Stack:
    """The store, the fault injector over it, and retries on top (sleeping recorded)."""

    def __init__(self, plain: Backend, plan: list[Fault], home: str) -> None:
        self.plain = plain
        self.faulty = FaultyBackend(plain, plan)
        self.slept: list[float] = []
        self.top = RetryingBackend(self.faulty, sleep=self.slept.append)
        self.home = home

    def repo(self, state: Path | None = None) -> Repository:
        """The repository through the stack; ``state``: another machine's local state."""
        return Repository.open(self.top, self.home, state_root=state)


def init(plain: Backend, home: str, fingerprint: str) -> None:
    init_repository(plain, home, KeySpec(PUBKEY, fingerprint), now=1)


def backup(repo: Repository, src: Path) -> BackupResult:
    return run_backup(repo, str(src), OPTS)


def restore(repo: Repository, target: Path, workers: int | None = None) -> RestoreResult:
    return run_restore(repo, RestoreOptions(str(target), workers=workers))


def assert_commits_sound(plain: Backend, home: str, state: Path) -> int:
    """Every committed index reads back, chains, and names a data object stored with
    exactly the size and SHA-256 it records. Returns the number of commits."""
    repo = Repository.open(plain, home, state_root=state)  # nothing cached: all from the store
    headers = repo.refresh()
    for h in headers:
        data = plain.get(h.data_key)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (h.data_size, h.data_sha256), (
            f"commit {h.seq} names {h.data_key}, which is not what its index records"
        )
    return len(headers)


def finish_and_check(plain: Backend, home: str, src: Path, tmp_path: Path) -> None:
    """A run without faults completes, and restoring gives the source exactly."""
    repo = Repository.open(RetryingBackend(plain, sleep=lambda _: None), home)
    result = backup(repo, src)
    assert result.complete
    out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    assert restore(repo, out).problems == []
    assert_same_tree(snapshot(src), snapshot(out))
    assert_commits_sound(plain, home, tmp_path / "fresh-state-final")


def assert_only_correct_files(wanted: dict[bytes, Any], got: dict[bytes, Any]) -> None:
    """Every file restored has the source's content (some may be missing)."""
    for path, node in got.items():
        if node.kind == "file":
            assert path in wanted and node.data == wanted[path].data, path


@pytest.fixture
def setup(plain: Backend, keyring: Any) -> tuple[Backend, str]:
    init(plain, keyring.home, keyring.fingerprint)
    return plain, keyring.home


# --- transient faults are retried to success ----------------------------------------


def test_transient_faults_are_retried_to_success(
    setup: tuple[Backend, str], src: Path, tmp_path: Path
) -> None:
    plain, home = setup
    plan = [
        Fault("get", 1, "transient", "config"),
        Fault("list", 1, "transient", "index/"),
        Fault("put", 1, "transient", "data/"),
        Fault("put", 2, "store_then_fail", "data/"),
        Fault("head", 1, "transient", "data/"),
        Fault("put", 1, "transient", "index/"),
        # The index was stored, but the answer was lost: the retry meets AlreadyExists
        # and must recognise its own bytes.
        Fault("put", 2, "store_then_fail", "index/"),
    ]
    stack = Stack(plain, plan, home)
    result = backup(stack.repo(), src)
    assert result.complete and result.packs >= 4
    restore_plan = [
        Fault("get_range", 1, "transient", "data/"),
        Fault("head", 1, "transient", "data/"),
        Fault("get", 1, "transient", "index/"),
    ]
    reader = Stack(plain, restore_plan, home)
    out = tmp_path / "out"
    assert restore(reader.repo(tmp_path / "reader-state"), out).problems == []
    assert_same_tree(snapshot(src), snapshot(out))
    stack.faulty.assert_all_fired()
    reader.faulty.assert_all_fired()
    transient = sum(1 for f in plan + restore_plan if f.kind in ("transient", "store_then_fail"))
    assert len(stack.slept) + len(reader.slept) == transient
    assert assert_commits_sound(plain, home, tmp_path / "fresh") == result.packs


@pytest.mark.parametrize("plain", ["memory"], indirect=True)
def test_retries_give_up_with_a_clear_error_and_no_commit(
    setup: tuple[Backend, str], src: Path, tmp_path: Path
) -> None:
    plain, home = setup
    plan = [Fault("put", n, "transient", "data/") for n in range(2, 7)]  # pack 2, 5 tries
    stack = Stack(plain, plan, home)
    with pytest.raises(TransientStoreError) as caught:
        backup(stack.repo(), src)
    stack.faulty.assert_all_fired()
    message = str(caught.value)
    assert "gave up after 5 attempts" in message and "data/" in message
    assert "\n" not in message
    assert isinstance(caught.value, BlanketError)
    assert assert_commits_sound(plain, home, tmp_path / "fresh") == 1
    finish_and_check(plain, home, src, tmp_path)


# --- permanent faults stop the run, and nothing half-done is committed --------------


@pytest.mark.parametrize("plain", ["memory"], indirect=True)
@pytest.mark.parametrize("prefix", ["data/", "index/"])
def test_permanent_fault_stops_the_run_without_a_commit(
    setup: tuple[Backend, str], src: Path, tmp_path: Path, prefix: str
) -> None:
    plain, home = setup
    stack = Stack(plain, [Fault("put", 2, "permanent", prefix)], home)
    with pytest.raises(StoreError) as caught:
        backup(stack.repo(), src)
    stack.faulty.assert_all_fired()
    assert not caught.value.retriable
    assert "injected permanent" in str(caught.value)
    assert stack.slept == []  # a permanent error is not retried
    assert assert_commits_sound(plain, home, tmp_path / "fresh") == 1
    finish_and_check(plain, home, src, tmp_path)


# --- a store that lies about a put never gets a commit pointing at bad data ----------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("put", 1, "truncate", "data/")],
        [Fault("put", 2, "truncate", "data/"), Fault("put", 3, "truncate", "data/")],
        [Fault("put", 1, "ack_without_store", "data/")],
        [Fault("put", 2, "ack_without_store", "data/"), Fault("put", 3, "truncate", "data/")],
    ],
    ids=["truncated", "truncated-twice", "not-stored", "not-stored-then-truncated"],
)
def test_lying_data_put_is_never_committed(
    setup: tuple[Backend, str], src: Path, tmp_path: Path, faults: list[Fault]
) -> None:
    """The commit protocol checks the data object on the store (size, and checksum where
    the store keeps one) before writing the index. It may upload again or stop the run;
    it must never write an index for data that is not fully stored."""
    plain, home = setup
    stack = Stack(plain, faults, home)
    try:
        backup(stack.repo(), src)
    except BlanketError as exc:
        assert "\n" not in str(exc)
        assert "nothing was committed" in str(exc) or isinstance(exc, IntegrityError)
    stack.faulty.assert_all_fired()
    assert_commits_sound(plain, home, tmp_path / "fresh")
    finish_and_check(plain, home, src, tmp_path)


@pytest.mark.parametrize("plain", ["memory"], indirect=True)
@pytest.mark.parametrize("kind", ["truncate", "ack_without_store"])
def test_lying_index_put_never_breaks_the_chain(
    setup: tuple[Backend, str], src: Path, tmp_path: Path, kind: Any
) -> None:
    """An index the store claims to hold but does not (or holds cut short) must not be
    treated as committed: later commits would chain to an index nobody can read, and the
    whole repository would stop opening. The run must stop or write it again."""
    plain, home = setup
    stack = Stack(plain, [Fault("put", 2, kind, "index/")], home)
    try:
        backup(stack.repo(), src)
    except BlanketError as exc:
        assert "\n" not in str(exc)
    stack.faulty.assert_all_fired()
    assert_commits_sound(plain, home, tmp_path / "fresh")
    finish_and_check(plain, home, src, tmp_path)


# --- corruption on the way back --------------------------------------------------------


@pytest.mark.parametrize("plain", ["memory"], indirect=True)
def test_flipped_bit_in_a_pack_is_never_restored_as_good(
    setup: tuple[Backend, str], src: Path, tmp_path: Path, workers: int
) -> None:
    plain, home = setup
    backup(Stack(plain, [], home).repo(), src)
    reader = Stack(plain, [Fault("get_range", 2, "flip_bit", "data/")], home)
    out = tmp_path / "out"
    result = restore(reader.repo(), out, workers=workers)
    reader.faulty.assert_all_fired()
    wanted = snapshot(src)
    got = snapshot(out)
    if result.problems:  # reported, and only correct files written
        assert_only_correct_files(wanted, got)
    else:  # fetched again and restored exactly
        assert_same_tree(wanted, got)


@pytest.mark.parametrize("plain", ["memory"], indirect=True)
def test_flipped_bit_in_an_index_is_refused(
    setup: tuple[Backend, str], src: Path, tmp_path: Path
) -> None:
    plain, home = setup
    backup(Stack(plain, [], home).repo(), src)
    reader = Stack(plain, [Fault("get", 1, "flip_bit", "index/")], home)
    out = tmp_path / "out"
    try:
        result = restore(reader.repo(tmp_path / "other-machine"), out)  # no cached indexes
    except BlanketError as exc:
        assert "\n" not in str(exc)
        assert not out.exists() or list(out.iterdir()) == []
    else:
        if result.problems:  # reported, and whatever was written is right
            assert any("index/000000000000" in m for _, m in result.problems)
            assert_only_correct_files(snapshot(src), snapshot(out))
        else:  # read again and verified
            assert_same_tree(snapshot(src), snapshot(out))
    reader.faulty.assert_all_fired()


# --- no delete permission ---------------------------------------------------------------


def test_backup_against_a_store_that_refuses_deletes(
    setup: tuple[Backend, str], src: Path, tmp_path: Path
) -> None:
    plain, home = setup
    # What a crashed run leaves: a data object no index names.
    plain.put("data/000000000000-0000000000000000", b"orphan")
    stack = RetryingBackend(NoDeleteBackend(plain), sleep=lambda _: None)
    repo = Repository.open(stack, home)
    first = backup(repo, src)
    assert first.complete
    before = {i.key for i in plain.list()}
    (src / "a" / "f0.bin").unlink()
    (src / "new.txt").write_bytes(b"new")
    second = backup(Repository.open(stack, home), src)
    assert second.complete and second.deleted == 1
    assert before <= {i.key for i in plain.list()}  # nothing was deleted
    out = tmp_path / "out"
    assert restore(Repository.open(stack, home), out).problems == []
    assert_same_tree(snapshot(src), snapshot(out))
    assert_commits_sound(plain, home, tmp_path / "fresh")


# --- the fault injector itself ----------------------------------------------------------


def test_unfired_faults_fail_the_test() -> None:
    faulty = FaultyBackend(
        MemoryBackend("x"), [Fault("put", 1, "transient", "data/"), Fault("get", 3)]
    )
    with pytest.raises(TransientStoreError, match="injected transient on put call 1"):
        faulty.put("data/1", b"x")
    faulty.put("data/1", b"x")
    faulty.get("data/1")
    with pytest.raises(AssertionError, match="never fired: transient on get call 3"):
        faulty.assert_all_fired()


def test_faults_count_calls_per_key_prefix() -> None:
    faulty = FaultyBackend(MemoryBackend("x"), [Fault("put", 2, "permanent", "index/")])
    faulty.put("data/1", b"x")
    faulty.put("index/1", b"x")
    faulty.put("data/2", b"x")
    with pytest.raises(StoreError, match="injected permanent"):
        faulty.put("index/2", b"x")
    faulty.put("index/2", b"x")
    faulty.assert_all_fired()
    assert [key for _, key in faulty.fired] == ["index/2"]


def test_fault_kinds_do_what_they_say() -> None:
    inner = MemoryBackend("x")
    faulty = FaultyBackend(
        inner,
        [
            Fault("put", 1, "truncate"),
            Fault("put", 2, "ack_without_store"),
            Fault("put", 3, "store_then_fail"),
            Fault("get", 1, "flip_bit"),
            Fault("get_range", 1, "flip_bit"),
        ],
    )
    faulty.put("t", io.BytesIO(b"0123456789"))
    assert inner.get("t") == b"01234"
    faulty.put("a", b"acked")
    with pytest.raises(NotFound):
        inner.get("a")
    with pytest.raises(TransientStoreError):
        faulty.put("s", b"stored")
    assert inner.get("s") == b"stored"
    assert faulty.get("s") != b"stored" and len(faulty.get("s")) == 6
    assert faulty.get_range("s", 0, 6) != b"stored"
    assert faulty.get_range("s", 0, 6) == b"stored"
    faulty.assert_all_fired()


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Fault("get", 1, "truncate"),
        lambda: Fault("put", 1, "flip_bit"),
        lambda: Fault("frobnicate"),
        lambda: Fault("put", 0),
    ],
)
def test_impossible_faults_are_refused(bad: Callable[[], Fault]) -> None:
    with pytest.raises(ValueError):
        bad()


# --- retrying ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientStoreError("slow down"), True),
        (StoreError("access denied"), False),
        (NotFound("x"), False),
        (BadRange("x"), False),
        (AlreadyExists("x"), False),
        (InvalidKey("x"), False),
        (OSError("disk"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retriable(exc: BaseException, expected: bool) -> None:
    assert is_retriable(exc) is expected


def test_a_retriable_looking_not_found_is_still_final() -> None:
    odd = NotFound("x")
    odd.retriable = True  # whatever a backend claims, not-found is final
    assert not is_retriable(odd)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    retrying = RetryingBackend(MemoryBackend("x"), base_delay=0.5, max_delay=3.0, rand=lambda: 1)
    assert [retrying.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    jittered = RetryingBackend(MemoryBackend("x"), base_delay=0.5, rand=lambda: 0.25)
    assert jittered.delay(3) == 0.5


def test_retries_only_what_is_retriable() -> None:
    faulty = FaultyBackend(
        MemoryBackend("x"),
        [Fault("get", 1, "transient"), Fault("get", 2, "transient"), Fault("head", 1, "permanent")],
    )
    slept: list[float] = []
    retrying = RetryingBackend(faulty, sleep=slept.append)
    retrying.put("k", b"v")
    assert retrying.get("k") == b"v"
    assert len(slept) == 2
    with pytest.raises(StoreError, match="injected permanent"):
        retrying.head("k")
    with pytest.raises(NotFound):
        retrying.get("missing")
    assert len(slept) == 2
    faulty.assert_all_fired()


def test_retried_file_put_starts_again_where_the_file_started() -> None:
    inner = MemoryBackend("x")
    faulty = FaultyBackend(inner, [Fault("put", 1, "store_then_fail")])
    f = io.BytesIO(b"HEADER|payload")
    f.seek(7)
    RetryingBackend(faulty, sleep=lambda _: None).put("k", f)
    assert inner.get("k") == b"payload"
    faulty.assert_all_fired()


class OneWay(io.RawIOBase):
    """A readable, non-seekable stream (a pipe)."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_small_unseekable_body_is_buffered_for_retries() -> None:
    inner = MemoryBackend("x")
    faulty = FaultyBackend(inner, [Fault("put", 1, "transient")])
    RetryingBackend(faulty, sleep=lambda _: None).put("k", cast(BinaryIO, OneWay(b"piped")))
    assert inner.get("k") == b"piped"
    faulty.assert_all_fired()


def test_large_unseekable_body_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import blanket.backends.wrappers as wrappers

    monkeypatch.setattr(wrappers, "RETRY_BUFFER", 4)
    faulty = FaultyBackend(MemoryBackend("x"), [Fault("put", 1, "transient")])
    retrying = RetryingBackend(faulty, sleep=lambda _: None)
    with pytest.raises(TransientStoreError, match="not retried"):
        retrying.put("k", cast(BinaryIO, OneWay(b"a long piped body")))
    retrying.put("k", cast(BinaryIO, OneWay(b"a long piped body")))
    assert retrying.get("k") == b"a long piped body"


def test_if_absent_conflict_without_earlier_failure_is_final() -> None:
    inner = MemoryBackend("x")
    inner.put("k", b"same")
    retrying = RetryingBackend(inner, sleep=lambda _: None)
    with pytest.raises(AlreadyExists):
        retrying.put("k", b"same", if_absent=True)  # someone else's identical object


@pytest.mark.parametrize("checksums", [True, False])
def test_if_absent_retry_meets_its_own_object(checksums: bool) -> None:
    class NoChecksums(MemoryBackend):
        def head(self, key: str) -> ObjectInfo:
            info = super().head(key)
            return ObjectInfo(info.key, info.size) if not checksums else info

    inner = NoChecksums("x")
    faulty = FaultyBackend(inner, [Fault("put", 1, "store_then_fail")])
    retrying = RetryingBackend(faulty, sleep=lambda _: None)
    retrying.put("k", io.BytesIO(b"mine" * 1000), if_absent=True)
    assert inner.get("k") == b"mine" * 1000
    faulty2 = FaultyBackend(inner, [Fault("put", 1, "transient")])
    other = RetryingBackend(faulty2, sleep=lambda _: None)
    inner.delete("k")
    inner.put("k", b"theirs")
    with pytest.raises(AlreadyExists):  # the retry finds different bytes: a real conflict
        other.put("k", b"mine", if_absent=True)
    faulty.assert_all_fired()
    faulty2.assert_all_fired()


def test_wrappers_pass_store_specific_calls_through() -> None:
    inner = MemoryBackend("x")
    stack = RetryingBackend(RateLimitedBackend(FaultyBackend(inner, []), 1e9))
    assert innermost(stack) is inner
    assert stack.discard_incomplete() == 0
    assert stack.describe() == inner.describe()
    with pytest.raises(StoreError, match="AccessDenied"):
        NoDeleteBackend(inner).discard_incomplete()


# --- rate limiting ----------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)
            self.now += seconds


def test_token_bucket_averages_to_the_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(1000, clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        bucket.take(500)
    # One second's burst is free; the remaining 4000 bytes take 4 seconds.
    assert sum(t.slept) == pytest.approx(4.0)


def test_rate_limited_put_and_get(tmp_path: Path) -> None:
    t = FakeTime()
    inner = MemoryBackend("x")
    limited = RateLimitedBackend(inner, 100_000, 50_000, clock=t.clock, sleep=t.sleep)
    body = os.urandom(300_000)
    limited.put("k", io.BytesIO(body))
    assert inner.get("k") == body
    assert sum(t.slept) == pytest.approx(2.0, abs=0.1)
    t.slept.clear()
    assert limited.get("k") == body
    assert limited.get_range("k", 0, 100_000) == body[:100_000]
    assert sum(t.slept) == pytest.approx(7.0, abs=0.1)  # 400 kB at 50 kB/s, 1 s burst


def test_rate_limit_is_shared_between_threads() -> None:
    slept: list[float] = []
    bucket = TokenBucket(1000, clock=lambda: 0.0, sleep=slept.append)  # time stands still
    threads = [threading.Thread(target=bucket.take, args=(1000,)) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # One burst is free; each later taker waits for everything taken before it.
    assert sorted(slept) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])


# --- which store errors a command may tolerate ------------------------------------------


LEFTOVER = "data/000000000099-0123456789abcdef"  # a crashed run's object: no index names it


def test_leftovers_stay_when_deletes_are_refused_and_a_transient_error_is_raised(
    repo: Repository, repo_url: str, keyring: Any
) -> None:
    LocalBackend(repo_url).put(LEFTOVER, b"half a pack")
    refusing = Repository.open(NoDeleteBackend(LocalBackend(repo_url)), keyring.home)
    refusing.refresh()
    assert refusing.clean_leftovers() == 0  # PermissionDenied: left for gc, the run goes on
    flaky = FaultyBackend(LocalBackend(repo_url), [Fault("delete", 1, "transient", "data/")])
    opened = Repository.open(flaky, keyring.home)
    opened.refresh()
    with pytest.raises(TransientStoreError):
        opened.clean_leftovers()  # never swallowed
    flaky.assert_all_fired()
    assert LocalBackend(repo_url).head(LEFTOVER).size == len(b"half a pack")
    fine = Repository.open(LocalBackend(repo_url), keyring.home)
    fine.refresh()
    assert fine.clean_leftovers() == 1
