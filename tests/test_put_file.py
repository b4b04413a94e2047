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
