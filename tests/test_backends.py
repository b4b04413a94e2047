"""One contract suite run against every backend, then what only the local one does."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from blanket.backends import open_backend
from blanket.backends.base import Backend, check_key, download_to
from blanket.backends.local import LocalBackend
from blanket.backends.memory import MemoryBackend
from blanket.backends.ratelimit import RateLimitedBackend
from blanket.backends.s3 import S3Backend
from blanket.backends.wrappers import RetryingBackend
from blanket.errors import (
    AlreadyExists,
    BadRange,
    InvalidKey,
    NotFound,
    StoreError,
    UsageError,
)

MiB = 1024 * 1024


def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and region; no endpoint, profile or config from the machine."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def serialize_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handle one in-process moto request at a time. Real S3 applies each request
    atomically (``If-None-Match`` included); moto's handlers check, then write, and let
    concurrent threads slip in between, so a race test would test moto, not us."""
    lock = threading.Lock()
    handle = BotocoreStubber.process_request

    def one_at_a_time(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return handle(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", one_at_a_time)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    serialize_moto(monkeypatch)


@pytest.fixture(scope="module")
def moto_bucket() -> Iterator[str]:
    """moto in process for the whole module, with one bucket (moto supplies fake
    credentials while it runs)."""
    with mock_aws():
        S3Backend("contract-bucket").create()
        yield "contract-bucket"


@pytest.fixture
def s3_store(moto_bucket: str, aws_env: None, atomic_moto: None) -> Iterator[S3Backend]:
    """An S3 store in moto: a prefix of its own in the module's bucket."""
    backend = S3Backend(moto_bucket, f"run-{uuid.uuid4().hex[:12]}/some/prefix")
    assert backend.exists()
    yield backend
    backend.close()


def seaweed_store(request: pytest.FixtureRequest, *, versioned: bool) -> S3Backend:
    """An S3 store in SeaweedFS, a real S3 engine: a prefix of its own in a plain bucket,
    or in a bucket that keeps every version."""
    seaweedfs = request.getfixturevalue("seaweedfs")
    request.getfixturevalue("seaweed_env")
    name = "contract-versioned" if versioned else "contract"
    bucket = seaweedfs.bucket(name, versioned=versioned)
    backend = S3Backend(bucket, f"run-{uuid.uuid4().hex[:12]}/some/prefix")
    assert backend.exists()
    return backend


@pytest.fixture(params=["memory", "local", "s3", "wrapped", "seaweedfs", "seaweedfs-versioned"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend, and the wrappers as ``open_backend`` stacks them (over memory)."""
    backend: Backend
    if request.param == "s3":
        yield request.getfixturevalue("s3_store")
        return
    if request.param.startswith("seaweedfs"):
        backend = seaweed_store(request, versioned=request.param.endswith("versioned"))
        yield backend
        backend.close()
        return
    if request.param == "memory":
        backend = MemoryBackend("test")
    elif request.param == "wrapped":
        limited = RateLimitedBackend(MemoryBackend("test"), 1e12, 1e12)
        backend = RetryingBackend(limited, sleep=lambda _: None)
    else:
        backend = LocalBackend(tmp_path / "store")
    backend.create()
    yield backend
    backend.close()


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(tmp_path / "store")
    backend.create()
    return backend


class PatternReader(io.RawIOBase):
    """A readable file of ``size`` pseudo-random bytes that never holds them all, records
    the largest read asked for, and can fail after ``fail_after`` bytes."""

    def __init__(self, size: int, fail_after: int | None = None) -> None:
        self.size = size
        self.pos = 0
        self.fail_after = fail_after
        self.largest_read = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        self.largest_read = max(self.largest_read, len(view))
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise SourceFailure("source broke")
        n = min(len(view), self.size - self.pos)
        block = hashlib.sha256(self.pos.to_bytes(8, "big")).digest() * (n // 32 + 1)
        view[:n] = block[:n]
        self.digest.update(block[:n])
        self.pos += n
        return n


class SourceFailure(Exception):
    pass


class Sink(io.RawIOBase):
    """A writable file that only hashes and counts what it receives."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.count += len(data)
        return len(data)


def as_file(f: io.RawIOBase) -> BinaryIO:
    return cast(BinaryIO, f)


def temp_leftovers(root: Path) -> list[str]:
    return [name for _, dirs, files in os.walk(root) for name in dirs + files if ".tmp-" in name]


def keys(store: Backend, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# --- the contract ---------------------------------------------------------------------


def test_put_get_bytes(store: Backend) -> None:
    store.put("data/000001", b"hello")
    assert store.get("data/000001") == b"hello"
    info = store.head("data/000001")
    assert (info.key, info.size) == ("data/000001", 5)
    assert info.checksum_sha256 in (None, hashlib.sha256(b"hello").hexdigest())


def test_put_get_file_object(store: Backend) -> None:
    store.put("k", io.BytesIO(b"from a file"))
    assert store.get("k") == b"from a file"


def test_empty_object(store: Backend) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0
    assert store.get_range("empty", 0, 10) == b""
    with pytest.raises(BadRange):
        store.get_range("empty", 1, 1)
    assert download_to(store, "empty", as_file(Sink())) == 0


def test_large_file_object_is_streamed(store: Backend) -> None:
    source = PatternReader(20 * MiB)
    store.put("big", as_file(source))
    assert source.largest_read <= 8 * MiB
    assert store.head("big").size == 20 * MiB
    sink = Sink()
    assert download_to(store, "big", as_file(sink), chunk_size=3 * MiB) == 20 * MiB
    assert sink.digest.hexdigest() == source.digest.hexdigest()


def test_overwrite_is_allowed_without_if_absent(store: Backend) -> None:
    store.put("k", b"one")
    store.put("k", b"two")
    assert store.get("k") == b"two"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get("nope"),
        lambda s: s.head("nope"),
        lambda s: s.get_range("nope", 0, 1),
        lambda s: s.get("a/nope"),
        lambda s: download_to(s, "nope", as_file(Sink())),
    ],
    ids=["get", "head", "get_range", "get_nested", "download_to"],
)
def test_missing_object_is_not_found(store: Backend, call: Callable[[Backend], object]) -> None:
    store.put("a/present", b"x")
    with pytest.raises(NotFound):
        call(store)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 10, bytes(range(10))),
        (500, 100, (bytes(range(256)) * 4)[500:600]),
        (1000, 100, (bytes(range(256)) * 4)[1000:]),
        (0, 5000, bytes(range(256)) * 4),
        (1024, 10, b""),
        (0, 0, b""),
    ],
    ids=["start", "middle", "end", "whole", "offset-equals-size", "zero-length"],
)
def test_get_range(store: Backend, offset: int, length: int, expected: bytes) -> None:
    store.put("r", bytes(range(256)) * 4)
    assert store.get_range("r", offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(1025, 1), (5000, 0), (-1, 5), (0, -1)])
def test_get_range_outside_is_bad_range(store: Backend, offset: int, length: int) -> None:
    store.put("r", bytes(1024))
    with pytest.raises(BadRange):
        store.get_range("r", offset, length)


def test_list_sorted_by_key_string(store: Backend) -> None:
    for key in ["a0", "a/c/d", "a.b", "a/b", "a-b", "b", "a/c-x"]:
        store.put(key, key.encode())
    assert keys(store) == ["a-b", "a.b", "a/b", "a/c-x", "a/c/d", "a0", "b"]
    assert [(i.key, i.size) for i in store.list("a/c")] == [("a/c-x", 5), ("a/c/d", 5)]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ["a-b", "a.b", "a/b", "a/c/d", "a0"]),
        ("a", ["a-b", "a.b", "a/b", "a/c/d", "a0"]),
        ("a/", ["a/b", "a/c/d"]),
        ("a.", ["a.b"]),
        ("a/c", ["a/c/d"]),
        ("a/c/", ["a/c/d"]),
        ("a/c/d", ["a/c/d"]),
        ("a/b/", []),
        ("zzz", []),
        ("zzz/", []),
    ],
)
def test_list_prefix(store: Backend, prefix: str, expected: list[str]) -> None:
    for key in ["a0", "a/c/d", "a.b", "a/b", "a-b"]:
        store.put(key, b"12")
    infos = list(store.list(prefix))
    assert [i.key for i in infos] == expected
    assert all(i.size == 2 for i in infos)


def test_list_empty_store(store: Backend) -> None:
    assert keys(store) == []


def test_delete_is_idempotent(store: Backend) -> None:
    store.put("d/k", b"x")
    store.delete("d/k")
    with pytest.raises(NotFound):
        store.get("d/k")
    assert keys(store) == []
    store.delete("d/k")
    store.delete("never/was")


def test_if_absent_refuses_overwrite(store: Backend) -> None:
    store.put("k", b"first", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("k", b"second", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("k", io.BytesIO(b"third"), if_absent=True)
    assert store.get("k") == b"first"
    assert keys(store) == ["k"]


def test_concurrent_if_absent_has_one_winner(store: Backend) -> None:
    start = threading.Barrier(8)
    outcomes: dict[int, str] = {}

    def attempt(i: int) -> None:
        start.wait()
        try:
            store.put("contended", bytes([i]) * MiB, if_absent=True)
            outcomes[i] = "won"
        except AlreadyExists:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 8
    assert len(winners) == 1
    assert store.get("contended") == bytes([winners[0]]) * MiB
    assert keys(store) == ["contended"]
    if isinstance(store, LocalBackend):
        assert temp_leftovers(store.root) == []


BAD_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    "../x",
    "a/../b",
    "a/./b",
    ".",
    "é",
    "a b",
    "a\nb",
    "a\\b",
    ".tmp-x",
    "d/.tmp-x",
    "x" * 513,
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize(
    "call",
    [
        lambda s, k: s.put(k, b"x"),
        lambda s, k: s.put(k, b"x", if_absent=True),
        lambda s, k: s.get(k),
        lambda s, k: s.get_range(k, 0, 1),
        lambda s, k: s.head(k),
        lambda s, k: s.delete(k),
    ],
    ids=["put", "put_if_absent", "get", "get_range", "head", "delete"],
)
def test_invalid_keys_rejected(
    store: Backend, key: str, call: Callable[[Backend, str], object]
) -> None:
    with pytest.raises(InvalidKey) as caught:
        call(store, key)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "prefix", ["/", "/a", "a//", "../", "a/./", "é", "a b", ".tmp-", "d/.tmp-"]
)
def test_invalid_prefixes_rejected(store: Backend, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        list(store.list(prefix))


@pytest.mark.parametrize("prefix", ["", "d", "d/", "d/.tmp", "d/x/"])
def test_partial_prefixes_accepted(store: Backend, prefix: str) -> None:
    assert keys(store, prefix) == []


def test_describe_exists(store: Backend) -> None:
    assert store.describe()
    assert store.exists()


# --- key rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["a", "index/000000000001", "A-Z_a.z/0-9", "..a", "a..", ".hidden", "/".join(["x"] * 256)],
)
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS + ["/".join(["x"] * 257)])
def test_check_key_rejects(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


# --- local directory ------------------------------------------------------------------


def test_local_key_maps_to_file(local: LocalBackend) -> None:
    local.put("index/000000000001", b"idx")
    assert (local.root / "index" / "000000000001").read_bytes() == b"idx"
    assert temp_leftovers(local.root) == []


@pytest.mark.parametrize("if_absent", [False, True])
def test_local_failed_put_leaves_nothing(local: LocalBackend, if_absent: bool) -> None:
    with pytest.raises(SourceFailure):
        local.put(
            "data/k", as_file(PatternReader(20 * MiB, fail_after=9 * MiB)), if_absent=if_absent
        )
    with pytest.raises(NotFound):
        local.get("data/k")
    assert keys(local) == []
    assert temp_leftovers(local.root) == []


def test_local_failed_put_keeps_old_object(local: LocalBackend) -> None:
    local.put("k", b"old")
    with pytest.raises(SourceFailure):
        local.put("k", as_file(PatternReader(MiB, fail_after=1)))
    assert local.get("k") == b"old"
    assert temp_leftovers(local.root) == []


def test_local_list_skips_temp_files_and_symlinks(local: LocalBackend, tmp_path: Path) -> None:
    local.put("a/b", b"x")
    (local.root / ".tmp-xyz").write_bytes(b"partial")
    (local.root / "a" / ".tmp-abc").write_bytes(b"partial")
    (local.root / ".tmp-dir").mkdir()
    (local.root / ".tmp-dir" / "inside").write_bytes(b"partial")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (local.root / "link").symlink_to(outside)
    (local.root / "a" / "filelink").symlink_to(outside / "secret")
    (local.root / "bad name").write_bytes(b"foreign")
    assert keys(local) == ["a/b"]
    assert keys(local, "link/") == []
    with pytest.raises(NotFound):
        local.get("a/filelink")
    with pytest.raises(NotFound):
        local.head("a/filelink")
    with pytest.raises(NotFound):
        local.get("link/secret")  # the store never follows its own symlinks


def test_local_never_writes_or_deletes_through_symlinks(
    local: LocalBackend, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    (local.root / "link").symlink_to(outside)
    with pytest.raises(StoreError):
        local.put("link/new", b"x")
    local.delete("link/victim")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"keep"


def test_local_fifo_is_not_an_object(local: LocalBackend) -> None:
    os.mkfifo(local.root / "fifo")
    with pytest.raises(NotFound):
        local.get("fifo")  # and does not block
    with pytest.raises(NotFound):
        local.head("fifo")
    assert keys(local) == []


def test_local_directory_is_not_an_object(local: LocalBackend) -> None:
    local.put("index/1", b"x")
    for call in (local.get, local.head, lambda k: local.get_range(k, 0, 1)):
        with pytest.raises(NotFound):
            call("index")
    local.delete("index")
    assert keys(local) == ["index/1"]


def test_local_missing_root(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "usb")
    assert not backend.exists()
    assert not (tmp_path / "usb").exists()
    with pytest.raises(StoreError, match="does not exist"):
        backend.put("k", b"x")
    with pytest.raises(StoreError, match="does not exist"):
        list(backend.list())
    with pytest.raises(NotFound):
        backend.get("k")
    assert not (tmp_path / "usb").exists()
    backend.create()
    assert backend.exists()
    backend.put("k", b"x")
    assert backend.get("k") == b"x"


def test_local_path_through_a_file_is_store_error(local: LocalBackend) -> None:
    local.put("a", b"file")
    with pytest.raises(StoreError) as caught:
        local.put("a/b", b"x")
    assert not isinstance(caught.value, OSError)
    assert isinstance(caught.value.__cause__, OSError)
    assert "'a/b'" in str(caught.value)
    with pytest.raises(NotFound):
        local.get("a/b")
    assert keys(local, "a/") == []


def test_local_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    backend = LocalBackend(tmp_path / "f")
    assert not backend.exists()
    with pytest.raises(StoreError):
        backend.create()


def test_local_disk_full_is_store_error(
    local: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError) as caught:
        local.put("data/k", b"x" * 100)
    monkeypatch.undo()
    message = str(caught.value)
    assert local.describe() in message and "'data/k'" in message
    assert "No space left" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert keys(local) == []
    assert temp_leftovers(local.root) == []


# --- open_backend ---------------------------------------------------------------------


def test_open_plain_path(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "repo"
    assert not backend.exists()


def test_open_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("repo")
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "repo"
    assert str(tmp_path / "repo") in backend.describe()


def test_open_file_url(tmp_path: Path) -> None:
    backend = open_backend(f"file://{tmp_path}/my%20repo")
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "my repo"


def test_open_memory_is_shared_per_name() -> None:
    first = open_backend("memory://shared-test")
    first.put("k", b"v")
    assert open_backend("memory://shared-test") is first
    assert open_backend("memory://shared-test").get("k") == b"v"
    other = open_backend("memory://other-test")
    assert isinstance(other, MemoryBackend) and other is not first


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bucket/prefix", "bucket", "prefix"),
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("S3://my.bucket-1/a/b/c/", "my.bucket-1", "a/b/c"),
    ],
)
def test_open_s3(aws_env: None, url: str, bucket: str, prefix: str) -> None:
    backend = open_backend(url)
    assert isinstance(backend, RetryingBackend)
    s3 = backend.inner
    assert isinstance(s3, S3Backend)
    assert (s3.bucket, s3.prefix) == (bucket, prefix)
    assert s3.endpoint_url is None
    assert bucket in backend.describe()


def test_open_s3_endpoint_uses_path_style(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = open_backend("s3://bkt/p", endpoint_url="http://127.0.0.1:9000", retries=False)
    assert isinstance(explicit, S3Backend)
    assert explicit.endpoint_url == "http://127.0.0.1:9000"
    assert explicit.client.meta.config.s3["addressing_style"] == "path"
    assert "http://127.0.0.1:9000" in explicit.describe()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:9001")
    from_env = open_backend("s3://bkt/p", retries=False)
    assert isinstance(from_env, S3Backend)
    assert from_env.endpoint_url == "http://localhost:9001"
    assert from_env.client.meta.endpoint_url == "http://localhost:9001"
    assert from_env.client.meta.config.s3["addressing_style"] == "path"


def test_open_stacks_rate_limits(aws_env: None, tmp_path: Path) -> None:
    s3 = open_backend("s3://bkt/p", limit_upload=1000, limit_download=2000)
    assert isinstance(s3, RetryingBackend)
    assert isinstance(s3.inner, RateLimitedBackend)
    assert isinstance(s3.inner.inner, S3Backend)
    local = open_backend(str(tmp_path / "repo"), limit_upload=1000)
    assert isinstance(local, RateLimitedBackend)
    assert local.download is None and local.upload is not None
    assert isinstance(local.inner, LocalBackend)


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://bkt/a//c",
        "s3://bkt/a b",
        "s3://bkt/.tmp-x",
        "s3://bü/x",
    ],
)
def test_open_bad_s3_urls(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_backend(url)
    assert "\n" not in str(caught.value)
    assert repr(url) in str(caught.value)


def test_endpoint_url_only_for_s3(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--endpoint-url applies only to s3://"):
        open_backend(str(tmp_path / "repo"), endpoint_url="http://127.0.0.1:9000")


@pytest.mark.parametrize(
    "url", ["", "http://example.com/x", "sftp://host/x", "file://host/x", "file://", "memory://"]
)
def test_open_bad_urls(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_backend(url)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(url) in message or not url
