"""One run at a time: the local flock and the store lease."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from blanket.backends.memory import MemoryBackend
from blanket.errors import RepositoryLocked, StoreError
from blanket.lock import RepoLock


class NoDelete(MemoryBackend):
    def delete(self, key: str) -> None:
        raise StoreError("delete refused by bucket policy")


def test_second_run_on_this_machine_is_refused_naming_the_holder(tmp_path: Path) -> None:
    store = MemoryBackend()
    with RepoLock(store, tmp_path):
        with pytest.raises(RepositoryLocked, match=f"pid {os.getpid()}"):
            RepoLock(store, tmp_path).acquire()
    with RepoLock(store, tmp_path):  # released: free again
        pass


def test_a_run_on_another_machine_is_refused_by_the_lease(tmp_path: Path) -> None:
    store = MemoryBackend()
    with RepoLock(store, tmp_path / "laptop"):
        with pytest.raises(RepositoryLocked, match=socket.gethostname()):
            RepoLock(store, tmp_path / "desktop").acquire()
    assert list(store.list("locks/")) == []


def _stale_lease(store: MemoryBackend, *, pid: int, expires: float, host: str) -> None:
    holder = {"host": host, "pid": pid, "started": 1.0, "expires": expires, "run": "dead"}
    store.put("locks/000000000001000-dead-0000", json.dumps(holder).encode())


def test_lease_of_a_dead_process_on_this_host_is_broken(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    store = MemoryBackend()
    _stale_lease(store, pid=proc.pid, expires=time.time() + 3600, host=socket.gethostname())
    with RepoLock(store, tmp_path):
        pass


@pytest.mark.parametrize("store", [MemoryBackend(), NoDelete()], ids=["delete", "no-delete"])
def test_lease_of_a_dead_process_is_released_for_other_hosts(
    tmp_path: Path, store: MemoryBackend
) -> None:
    """A laptop killed mid-run leaves a lease that only its own host can tell is dead; its
    next run releases it, so a gc machine need not wait for the lease to expire."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    _stale_lease(store, pid=proc.pid, expires=time.time() + 3600, host=socket.gethostname())
    with RepoLock(store, tmp_path / "laptop"):
        pass
    elsewhere = RepoLock(store, tmp_path / "gc-machine")
    elsewhere.host = "gc-machine"
    with elsewhere:
        pass


def test_expired_lease_of_another_host_is_broken(tmp_path: Path) -> None:
    store = MemoryBackend()
    _stale_lease(store, pid=1, expires=time.time() - 1, host="elsewhere")
    with RepoLock(store, tmp_path):
        pass


def test_live_lease_of_another_host_blocks(tmp_path: Path) -> None:
    store = MemoryBackend()
    _stale_lease(store, pid=1, expires=time.time() + 3600, host="elsewhere")
    with pytest.raises(RepositoryLocked, match="elsewhere pid 1"):
        RepoLock(store, tmp_path).acquire()
    with RepoLock(MemoryBackend(), tmp_path):  # the refused run let go of the local lock
        pass
    assert [o.key for o in store.list("locks/")] == ["locks/000000000001000-dead-0000"]


def test_store_without_delete_permission_gets_a_release_marker(tmp_path: Path) -> None:
    store = NoDelete()
    with RepoLock(store, tmp_path / "a"):
        pass
    assert any(o.key.endswith("-released") for o in store.list("locks/"))
    with RepoLock(store, tmp_path / "b"):  # another machine can take it at once
        pass


def test_cli_backup_exits_11_while_the_repository_is_held(cli, keyring, tmp_path: Path) -> None:
    from blanket.backends import open_backend
    from blanket.repo import Repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    opened = Repository.open(open_backend(repo), keyring.home)
    with RepoLock(opened.backend, opened.state.dir):
        r = cli("backup", "--repo", repo, str(src))
    assert r.code == 11, r
    assert "pid" in r.err and len(r.err.strip().splitlines()) == 1
    cli("backup", "--repo", repo, str(src), check=0)
