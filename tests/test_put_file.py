"""``put_file``: the local store takes a spooled pack by hard link on its own
filesystem (written once), copies it from another one, and every store keeps the
content whatever becomes of the source file afterwards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from blanket.backends.local import LocalBackend
from blanket.backends.memory import MemoryBackend


def _store(root: Path) -> LocalBackend:
    backend = LocalBackend(str(root))
    backend.create()
    return backend


def test_same_filesystem_links_and_survives_the_spool(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    spool = tmp_path / "pack-1"
    spool.write_bytes(b"sealed pack" * 1000)
    store.put_file("data/000000000001-0123456789abcdef", str(spool))
    stored = tmp_path / "store" / "data" / "000000000001-0123456789abcdef"
    assert os.stat(stored).st_ino == os.stat(spool).st_ino  # one copy on the disk
    spool.unlink()  # what a commit does with its spool file
    assert store.get("data/000000000001-0123456789abcdef") == b"sealed pack" * 1000
    assert not [n for n in os.listdir(tmp_path / "store" / "data") if n.startswith(".")]


def test_other_filesystem_copies(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    stored = tmp_path / "store" / "data" / "000000000002-0123456789abcdef"
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        f.write(b"x" * 5000)
        f.flush()
        cross = os.stat(f.name).st_dev != os.stat(tmp_path).st_dev
        store.put_file("data/000000000002-0123456789abcdef", f.name)
        assert (os.stat(stored).st_ino != os.stat(f.name).st_ino) == cross
        f.seek(0)
        f.write(b"y" * 5000)  # only a copy is safe from this (put_file's callers never do it)
        f.flush()
    assert store.get("data/000000000002-0123456789abcdef") == (b"x" if cross else b"y") * 5000


def test_other_stores_read_the_file(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    store = MemoryBackend("put-file-test")
    store.create()
    store.put_file("data/000000000003-0123456789abcdef", str(src))
    src.write_bytes(b"changed")
    assert store.get("data/000000000003-0123456789abcdef") == b"abc"


def test_every_wrapper_passes_the_optional_capabilities_through(tmp_path: Path) -> None:
    """The contract's optional capabilities reach the store through any stack of
    production wrappers; a rate limit keeps them only where they would bypass it."""
    from blanket.backends.ratelimit import RateLimitedBackend
    from blanket.backends.wrappers import RetryingBackend

    store = _store(tmp_path / "store")
    key = "data/000000000003-0123456789abcdef"
    for n, wrapped in enumerate(
        [
            RetryingBackend(store),
            RateLimitedBackend(store),
            RetryingBackend(RateLimitedBackend(store)),
        ]
    ):
        spool = tmp_path / f"pack-{n}"
        spool.write_bytes(b"p" * 4096)
        wrapped.put_file(key, str(spool))
        assert os.stat(tmp_path / "store" / key).st_ino == os.stat(spool).st_ino  # linked
        assert wrapped.cheap_reads
        local = wrapped.open_local(key)
        assert local is not None
        with local:
            assert local.read() == b"p" * 4096
    limited = RateLimitedBackend(store, upload_bps=1 << 30, download_bps=1 << 30)
    spool = tmp_path / "pack-limited"
    spool.write_bytes(b"q" * 4096)
    limited.put_file(key, str(spool))  # through the limit: a copy, not a link
    assert os.stat(tmp_path / "store" / key).st_ino != os.stat(spool).st_ino
    assert limited.open_local(key) is None  # reads through get_range, limited
