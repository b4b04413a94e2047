"""One run at a time: the local flock and the store lease."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from blanket.backends.memory import MemoryBackend
from blanket.errors import PermissionDenied, RepositoryLocked, TransientStoreError
from blanket.lock import RepoLock


class NoDelete(MemoryBackend):
    def delete(self, key: str) -> None:
        raise PermissionDenied("delete refused by bucket policy")


class DeleteFails(MemoryBackend):
    def delete(self, key: str) -> None:
        raise TransientStoreError("HTTP 503 (gave up after 5 attempts)")


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
        with pytest.raises(RepositoryLocked, match="another machine's run"):
            RepoLock(store, tmp_path / "desktop").acquire()
    assert list(store.list("locks/")) == []


def test_a_lease_names_neither_the_host_nor_the_process(tmp_path: Path) -> None:
    store = MemoryBackend()
    with RepoLock(store, tmp_path):
        (lease,) = list(store.list("locks/"))
        body = store.get(lease.key)
    assert socket.gethostname().encode() not in body
    assert set(json.loads(body)) == {"run", "origin", "started", "expires"}


def _stale_lease(store: MemoryBackend, *, expires: float, origin: str = "elsewhere") -> None:
    lease = {"run": "dead", "origin": origin, "started": 1.0, "expires": expires}
    store.put("locks/000000000001000-dead-0000", json.dumps(lease).encode())


def test_lease_left_by_a_crashed_run_of_this_state_directory_is_broken(tmp_path: Path) -> None:
    store = MemoryBackend()
    with RepoLock(store, tmp_path) as first:  # makes this state directory's origin
        origin = first.origin
    _stale_lease(store, expires=time.time() + 3600, origin=origin)
    with pytest.raises(RepositoryLocked):  # another state directory cannot know it ended
        RepoLock(store, tmp_path / "other").acquire()
    with RepoLock(store, tmp_path):
        pass


@pytest.mark.parametrize("store", [MemoryBackend(), NoDelete()], ids=["delete", "no-delete"])
def test_lease_of_a_crashed_run_is_released_for_other_machines(
    tmp_path: Path, store: MemoryBackend
) -> None:
    """A laptop killed mid-run leaves a lease that only its own state directory can tell
    is dead; its next run releases it, so a gc machine need not wait for it to expire."""
    with RepoLock(store, tmp_path / "laptop") as first:
        origin = first.origin
    _stale_lease(store, expires=time.time() + 3600, origin=origin)
    with pytest.raises(RepositoryLocked):  # until the laptop runs again, others wait
        RepoLock(store, tmp_path / "gc-machine").acquire()
    with RepoLock(store, tmp_path / "laptop"):
        pass
    with RepoLock(store, tmp_path / "gc-machine"):
        pass


def test_expired_lease_of_another_host_is_broken(tmp_path: Path) -> None:
    store = MemoryBackend()
    _stale_lease(store, expires=time.time() - 1)
    with RepoLock(store, tmp_path):
        pass


def test_a_lease_of_an_older_blanket_holds_until_it_expires(tmp_path: Path) -> None:
    store = MemoryBackend()
    old = {"host": "h", "pid": 1, "started": 1.0, "expires": time.time() + 3600, "run": "old"}
    store.put("locks/000000000001000-old-0000", json.dumps(old).encode())
    with pytest.raises(RepositoryLocked, match="another machine's run"):
        RepoLock(store, tmp_path).acquire()


def test_live_lease_of_another_host_blocks(tmp_path: Path) -> None:
    store = MemoryBackend()
    _stale_lease(store, expires=time.time() + 3600)
    with pytest.raises(RepositoryLocked, match="another machine's run"):
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


def test_a_transient_error_on_release_is_raised_not_swallowed(tmp_path: Path) -> None:
    store = DeleteFails()
    lock = RepoLock(store, tmp_path / "a")
    lock.acquire()
    with pytest.raises(TransientStoreError):
        lock.release()
    assert not any(o.key.endswith("-released") for o in store.list("locks/"))
    with RepoLock(MemoryBackend(), tmp_path / "a"):  # the local lock was let go all the same
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
