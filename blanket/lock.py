"""One writer at a time: a local ``flock`` plus a lease on the store.

The local lock (``flock`` on ``<state>/lock``) stops two runs on this machine at once;
the kernel drops it when its holder dies, so it never needs breaking. The store lease
stops two machines: each run writes its own lease object ``locks/<start>-<run id>``
holding its run id, an opaque origin, start and expiry (no host name, no pid: the store
sees nothing about the machine), then lists ``locks/`` again (the read-back check, which
works on every store, with or without conditional writes). A run yields to any live
lease that sorts before its own. The origin is a random id kept in the local state
directory, the one the local lock guards: a lease with our own origin was written by an
earlier run of this state directory, which has ended, since we now hold the local lock.
A lease is dead when it has expired, when a release marker for it exists, or when its
origin is ours, so a crashed run never needs a human to unlock. Only this state
directory can tell the last kind is dead, so the run that takes the lock after it
releases it for the others (deletes it, or writes its release marker): a gc machine
elsewhere need not wait for a killed laptop's lease to expire. A long run renews its
lease by writing a fresh one. On release the lease is deleted; a store that refuses
deletes (``PermissionDenied``: a backup needs no delete permission) gets a release
marker ``locks/<start>-<run id>-released`` instead; any other store error is raised.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blanket.backends.base import Backend
from blanket.errors import NotFound, PermissionDenied, RepositoryLocked

LEASE_SECONDS = 15 * 60
PREFIX = "locks/"
RELEASED = "-released"


@dataclass(frozen=True)
class Lease:
    """A lease body as stored: nothing in it names the machine or the process."""

    run: str
    origin: str
    started: float
    expires: float

    @classmethod
    def parse(cls, body: bytes) -> Lease:
        """``ValueError`` for what is no lease; a lease of an older blanket (which named
        host and pid) counts with an unknown origin, so only its expiry ends it."""
        fields: Any = json.loads(body)
        if not isinstance(fields, dict):
            raise ValueError("not a lease")
        try:
            return cls(
                str(fields["run"]),
                str(fields.get("origin", "")),
                float(fields["started"]),
                float(fields["expires"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError("not a lease") from exc

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        until = time.strftime("%H:%M:%S", time.localtime(self.expires))
        return f"another machine's run (started {when}, lease until {until})"


def _origin(state_dir: Path) -> str:
    """This state directory's opaque lease origin, made once."""
    path = state_dir / "lease-origin"
    try:
        origin = path.read_text().strip()
    except FileNotFoundError:
        origin = ""
    if len(origin) != 32:
        origin = secrets.token_hex(16)
        path.write_text(origin + "\n")
    return origin


class RepoLock:
    """Hold the repository for one run: ``with RepoLock(backend, state_dir): ...``."""

    def __init__(self, backend: Backend, state_dir: Path) -> None:
        self.backend = backend
        self.path = state_dir / "lock"
        self.state_dir = state_dir
        self.origin = ""
        self.run = uuid.uuid4().hex[:16]
        self.started = time.time()
        self._fd = -1
        self._keys: list[str] = []
        self._last_renewal = 0.0
        self._crashed: set[str] = set()  # leases of earlier runs of this state directory

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
        self.origin = _origin(self.state_dir)  # read and made under the local lock

    # --- store ---------------------------------------------------------------------

    def _lease(self) -> Lease:
        return Lease(self.run, self.origin, self.started, time.time() + LEASE_SECONDS)

    def _write_lease(self) -> None:
        key = f"{PREFIX}{int(self.started * 1000):015d}-{self.run}-{len(self._keys):04d}"
        self.backend.put(key, json.dumps(asdict(self._lease())).encode())
        self._keys.append(key)
        self._last_renewal = time.monotonic()

    def _live_others(self) -> list[tuple[str, Lease]]:
        keys = [o.key for o in self.backend.list(PREFIX)]
        released = {k[: -len(RELEASED)] for k in keys if k.endswith(RELEASED)}
        live = []
        for key in keys:
            if key.endswith(RELEASED) or _run_prefix(key) in released:
                continue
            try:
                h = Lease.parse(self.backend.get(key))
            except NotFound:
                continue
            except ValueError:
                continue  # not a lease we wrote: ignore it
            if h.run == self.run or h.expires < time.time():
                continue
            if h.origin == self.origin:
                self._crashed.add(key)  # an earlier run of this state directory: it ended
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
        """Release the leases of this state directory's runs that died holding them
        (killed, crashed), which other machines would otherwise take as live until they
        expire. Without delete permission a release marker is written instead."""
        marked: set[str] = set()
        for key in sorted(self._crashed):
            run = _run_prefix(key)
            if run in marked:
                continue
            try:
                self.backend.delete(key)
            except PermissionDenied:
                self.backend.put(run + RELEASED, b"released\n")
                marked.add(run)
        self._crashed.clear()

    def renew(self) -> None:
        """Write a fresh lease if the current one is past half its life."""
        if self._keys and time.monotonic() - self._last_renewal > LEASE_SECONDS / 2:
            self._write_lease()

    def release(self) -> None:
        """Delete the lease (or mark it released where deletes are refused) and let go of
        the local lock; a store error other than ``PermissionDenied`` is raised, after
        the local lock is let go (the lease then expires on its own)."""
        try:
            for key in self._keys:
                try:
                    self.backend.delete(key)
                except PermissionDenied:
                    try:
                        self.backend.put(_run_prefix(key) + RELEASED, b"released\n")
                    except PermissionDenied:
                        pass  # the lease expires on its own
                    break
        finally:
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
