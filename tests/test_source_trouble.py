"""Per-file trouble in the source never breaks a pack or the rest of the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from blanket.backup import BackupOptions, run_backup
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore

MiB = 1 << 20


def _failing_pread(monkeypatch: pytest.MonkeyPatch, victim: Path, after_bytes: int) -> None:
    """Make reads of one file fail with EIO once ``after_bytes`` have been read (a bad
    sector). Only the standard library's os.pread is replaced, never our code."""
    real_pread = os.pread
    inode = victim.stat().st_ino

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.fstat(fd).st_ino == inode and offset >= after_bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)


def test_a_read_error_inside_a_large_file_leaves_the_pack_intact(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-large").write_bytes(os.urandom(6 * MiB))
    (src / "b-next").write_bytes(b"after the bad file")
    _failing_pread(monkeypatch, src / "a-large", after_bytes=2 * MiB)
    result = run_backup(repo, str(src), BackupOptions(pack_size=64 * MiB))
    assert [(p, m) for p, m in result.warnings] == [(b"a-large", "cannot read: Input/output error")]
    assert result.complete
    monkeypatch.undo()
    out = tmp_path / "out"
    restored = run_restore(repo, RestoreOptions(str(out)))
    assert restored.problems == []
    assert (out / "b-next").read_bytes() == b"after the bad file"
    assert not (out / "a-large").exists()


def test_a_split_file_and_a_sibling_sorting_among_its_parts_both_restore(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(300 << 10)
    (src / "big").write_bytes(big)
    (src / "big.bak").write_bytes(b"backup copy")
    (src / "big-1").write_bytes(b"another")
    run_backup(repo, str(src), BackupOptions(pack_size=64 << 10))
    out = tmp_path / "out"
    assert run_restore(repo, RestoreOptions(str(out))).problems == []
    assert (out / "big").read_bytes() == big
    assert (out / "big.bak").read_bytes() == b"backup copy"
    assert (out / "big-1").read_bytes() == b"another"


def test_when_the_first_name_of_a_hard_link_cannot_be_read_the_next_holds_the_content(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"linked content")
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c")
    real_open = os.open
    calls = {"n": 0}

    def open_failing_once(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if isinstance(path, bytes) and path.endswith(b"/a") and calls["n"] == 0:
            calls["n"] += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_failing_once)
    result = run_backup(repo, str(src), BackupOptions())
    monkeypatch.undo()
    assert calls["n"] == 1 and [p for p, _ in result.warnings] == [b"a"]
    out = tmp_path / "out"
    assert run_restore(repo, RestoreOptions(str(out))).problems == []
    assert (out / "b").read_bytes() == b"linked content"
    assert os.stat(out / "b").st_ino == os.stat(out / "c").st_ino
