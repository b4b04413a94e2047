"""The header cache: a refresh takes each cached index's header and hash from it while
the file is unchanged, and reads the file again (or the store's copy) otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

from blanket.backup import BackupOptions, run_backup
from blanket.chain import HEADERS_FILE
from blanket.headercache import HeaderCache
from blanket.repo import Repository


def _repo_with_commits(repo: Repository, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_text(f"file {i}\n")
    run_backup(repo, str(src), BackupOptions(pack_entries=2))
    return src


def _scramble_in_place(path: Path) -> None:
    """Same size, same inode, same mtime: only a read of the file could tell."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_unchanged_cached_index_is_not_read_again(repo: Repository, tmp_path: Path) -> None:
    _repo_with_commits(repo, tmp_path)
    before = [h.seq for h in repo.refresh()]
    assert (repo.state.dir / HEADERS_FILE).exists()
    path = repo.state.index_path(1)
    _scramble_in_place(path)
    assert [h.seq for h in repo.refresh()] == before
    # not read (it would have been found damaged and fetched again): the cache answered
    assert set(path.read_bytes()) == {0xFF}


def test_a_changed_cached_index_is_read_again_and_refetched(
    repo: Repository, tmp_path: Path
) -> None:
    _repo_with_commits(repo, tmp_path)
    before = repo.refresh()
    path = repo.state.index_path(1)
    good = path.read_bytes()
    _scramble_in_place(path)
    os.utime(path, ns=(1, 1))  # now the file differs from what the cache recorded
    assert repo.refresh() == before  # damaged cache file: the store's copy is fetched
    assert path.read_bytes() == good


def test_a_cache_of_another_version_is_ignored(repo: Repository, tmp_path: Path) -> None:
    _repo_with_commits(repo, tmp_path)
    before = repo.refresh()
    cache = repo.state.dir / HEADERS_FILE
    raw = msgpack.unpackb(cache.read_bytes(), strict_map_key=False)
    raw["version"] = 99
    cache.write_bytes(msgpack.packb(raw))
    assert HeaderCache(cache).get(0, repo.state.index_path(0).stat()) is None
    assert repo.refresh() == before
    cache.write_bytes(b"\x00garbage")
    assert repo.refresh() == before
