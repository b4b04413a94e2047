"""One writer at a time: a local ``flock`` plus a lease on the store.

The local lock (``flock`` on ``<state>/lock``) stops two runs on this machine at once;
the kernel drops it when its holder dies, so it never needs breaking. The store lease
stops two machines: each run writes its own lease object ``locks/<start>-<run id>``
holding host, pid, start and expiry, then lists ``locks/`` again (the read-back check,
which works on every store, with or without conditional writes). A run yields to any live
lease that sorts before its own. A lease is dead when it has expired, when a release
marker for it exists, or when its holder is a process on this host that no longer runs,
so a crashed run never needs a human to unlock. Only its own host can tell the last
kind is dead, so the run that takes the lock after it releases it for the others (deletes
it, or writes its release marker): a gc machine elsewhere need not wait for a killed
laptop's lease to expire. A long run renews its lease by writing a
fresh one. On release the lease is deleted; a store that refuses deletes (a backup needs
no delete permission) gets a release marker ``locks/<start>-<run id>-released`` instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from blanket.backends.base import Backend
from blanket.errors import NotFound, RepositoryLocked, StoreError

LEASE_SECONDS = 15 * 60
PREFIX = "locks/"
RELEASED = "-released"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    expires: float
    run: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.host} pid {self.pid} since {when}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RepoLock:
    """Hold the repository for one run: ``with RepoLock(backend, state_dir): ...``."""

    def __init__(self, backend: Backend, state_dir: Path) -> None:
        self.backend = backend
        self.path = state_dir / "lock"
        self.host = socket.gethostname()
        self.run = uuid.uuid4().hex[:16]
        self.started = time.time()
        self._fd = -1
        self._keys: list[str] = []
        self._last_renewal = 0.0
        self._crashed: set[str] = set()  # leases of runs on this host that no longer run

    # --- local ---------------------------------------------------------------------

    def _lock_local(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RepositoryLocked(
                f"another blanket run on this machine holds the repository "
                f"({holder or 'unknown holder'}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.ctime(self.started)}\n".encode(), 0)
        self._fd = fd

    # --- store ---------------------------------------------------------------------

    def _holder(self) -> Holder:
        return Holder(self.host, os.getpid(), self.started, time.time() + LEASE_SECONDS, self.run)

    def _write_lease(self) -> None:
        key = f"{PREFIX}{int(self.started * 1000):015d}-{self.run}-{len(self._keys):04d}"
        self.backend.put(key, json.dumps(asdict(self._holder())).encode())
        self._keys.append(key)
        self._last_renewal = time.monotonic()

    def _live_others(self) -> list[tuple[str, Holder]]:
        keys = [o.key for o in self.backend.list(PREFIX)]
        released = {k[: -len(RELEASED)] for k in keys if k.endswith(RELEASED)}
        live = []
        for key in keys:
            if key.endswith(RELEASED) or _run_prefix(key) in released:
                continue
            try:
                h = Holder(**json.loads(self.backend.get(key)))
            except NotFound:
                continue
            except (ValueError, TypeError):
                continue  # not a lease we wrote: ignore it
            if h.run == self.run or h.expires < time.time():
                continue
            if h.host == self.host and not _alive(h.pid):
                self._crashed.add(key)
                continue
            live.append((key, h))
        return live

    def acquire(self) -> None:
        self._lock_local()
        try:
            others = self._live_others()
            if not others:
                self._write_lease()
                mine = self._keys[-1]
                others = [(k, h) for k, h in self._live_others() if k < mine]
            if others:
                raise RepositoryLocked(
                    f"the repository is locked by a run on {others[0][1].describe()}; "
                    "it is released when that run ends or its lease expires"
                )
            self._release_crashed()
        except BaseException:
            self.release()
            raise

    def _release_crashed(self) -> None:
        """Release the leases of this host's runs that died holding them (killed, crashed),
        which other hosts would otherwise take as live until they expire."""
        marked: set[str] = set()
        for key in sorted(self._crashed):
            run = _run_prefix(key)
            if run in marked:
                continue
            try:
                self.backend.delete(key)
            except StoreError:
                try:
                    self.backend.put(run + RELEASED, b"released\n")
                except StoreError:
                    pass  # it expires on its own
                marked.add(run)
        self._crashed.clear()

    def renew(self) -> None:
        """Write a fresh lease if the current one is past half its life."""
        if self._keys and time.monotonic() - self._last_renewal > LEASE_SECONDS / 2:
            self._write_lease()

    def release(self) -> None:
        for key in self._keys:
            try:
                self.backend.delete(key)
            except StoreError:
                try:
                    self.backend.put(_run_prefix(key) + RELEASED, b"released\n")
                except StoreError:
                    pass  # the lease expires on its own
                break
        self._keys.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RepoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _run_prefix(key: str) -> str:
    """``locks/<start>-<run>`` of a lease key ``locks/<start>-<run>-<n>``."""
    return key.rsplit("-", 1)[0] if not key.endswith(RELEASED) else key[: -len(RELEASED)]
