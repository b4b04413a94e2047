"""Test doubles for the storage contract; production never imports this module (the
import contract in ``.importlinter`` says so).

:class:`FaultyBackend` proves that retries, truncated uploads and corrupted reads are
handled (no S3 emulator ever fails on its own) and that every planned fault fired;
:class:`NoDeleteBackend` is a store whose policy allows no delete, to prove a backup
needs no delete permission. Both wrap any store and pass the contract's optional
capabilities through, except that a faulty store offers no ``open_local``: its reads go
through ``get`` and ``get_range``, where its faults are.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

from blanket.backends.base import Backend, ObjectInfo, check_key, read_chunks
from blanket.backends.wrappers import BackendWrapper
from blanket.errors import PermissionDenied, StoreError, TransientStoreError

FaultKind = Literal[
    "transient",  # raise TransientStoreError instead of calling the store
    "permanent",  # raise StoreError instead of calling the store
    "truncate",  # put: store only the first half of the body, report success
    "flip_bit",  # get / get_range: flip one bit of what the store returned
    "store_then_fail",  # put: store the body, then raise TransientStoreError
    "ack_without_store",  # put: read the body, store nothing, report success
]
_ANY_METHOD = frozenset(
    {"put", "get", "get_range", "list", "head", "delete", "exists", "create", "discard_incomplete"}
)
_ONLY = {
    "truncate": {"put"},
    "store_then_fail": {"put"},
    "ack_without_store": {"put"},
    "flip_bit": {"get", "get_range"},
}


@dataclass(frozen=True)
class Fault:
    """Fail the ``call``-th call (1-based) of ``method`` whose key (or list prefix) starts
    with ``key_prefix``, the way ``kind`` says. Calls are counted per fault, so two faults
    on calls 1 and 2 of the same method hit a call and its retry."""

    method: str
    call: int = 1
    kind: FaultKind = "transient"
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if self.method not in _ANY_METHOD:
            raise ValueError(f"no backend method {self.method!r}")
        if self.method not in _ONLY.get(self.kind, _ANY_METHOD):
            raise ValueError(f"a {self.kind!r} fault applies to {sorted(_ONLY[self.kind])}")
        if self.call < 1:
            raise ValueError("calls are counted from 1")

    def __str__(self) -> str:
        where = f" under {self.key_prefix!r}" if self.key_prefix else ""
        return f"{self.kind} on {self.method} call {self.call}{where}"


class FaultyBackend(BackendWrapper):
    """Inject the planned faults; :meth:`assert_all_fired` fails if any never happened
    (so a test cannot pass because its fault missed). ``fired`` lists ``(fault, key)`` in
    the order they happened."""

    def __init__(self, inner: Backend, plan: Sequence[Fault]) -> None:
        super().__init__(inner)
        self.plan = tuple(plan)
        self.fired: builtins.list[tuple[Fault, str]] = []
        self._seen = [0] * len(self.plan)
        self._pending = set(range(len(self.plan)))
        self._lock = threading.Lock()

    def assert_all_fired(self) -> None:
        missed = [str(self.plan[i]) for i in sorted(self._pending)]
        if missed:
            raise AssertionError(f"planned faults that never fired: {'; '.join(missed)}")

    def _fault(self, method: str, key: str) -> Fault | None:
        """Count this call against the plan; return the fault it triggers, if any."""
        hit: Fault | None = None
        with self._lock:
            for i, f in enumerate(self.plan):
                if i in self._pending and f.method == method and key.startswith(f.key_prefix):
                    self._seen[i] += 1
                    if self._seen[i] == f.call and hit is None:
                        self._pending.discard(i)
                        self.fired.append((f, key))
                        hit = f
        if hit is not None and hit.kind in ("transient", "permanent"):
            error = TransientStoreError if hit.kind == "transient" else StoreError
            raise error(f"{self.describe()}: injected {hit} ({key!r})")
        return hit

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        fault = self._fault("put", key)
        if fault is None:
            self.inner.put(key, data, if_absent=if_absent)
            return
        body = b"".join(read_chunks(data))
        if fault.kind == "truncate":
            self.inner.put(key, body[: len(body) // 2], if_absent=if_absent)
        elif fault.kind == "store_then_fail":
            self.inner.put(key, body, if_absent=if_absent)
            raise TransientStoreError(f"{self.describe()}: injected {fault} ({key!r})")
        # ack_without_store: the body was read; nothing is stored

    def put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:  # counted and faulted as the put it is
            self.put(key, f)

    def open_local(self, key: str) -> BinaryIO | None:
        return None  # reads go through get and get_range, where the faults are

    def get(self, key: str) -> bytes:
        fault = self._fault("get", key)
        data = self.inner.get(key)
        return _flip(data) if fault else data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        fault = self._fault("get_range", key)
        data = self.inner.get_range(key, offset, length)
        return _flip(data) if fault else data

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._fault("list", prefix)
        return self.inner.list(prefix)

    def head(self, key: str) -> ObjectInfo:
        self._fault("head", key)
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self._fault("delete", key)
        self.inner.delete(key)

    def exists(self) -> bool:
        self._fault("exists", "")
        return self.inner.exists()

    def create(self) -> None:
        self._fault("create", "")
        self.inner.create()

    def discard_incomplete(self) -> int:
        self._fault("discard_incomplete", "")
        return self.inner.discard_incomplete()


def _flip(data: bytes) -> bytes:
    if not data:
        return data
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x10
    return bytes(damaged)


class NoDeleteBackend(BackendWrapper):
    """A store whose policy allows no delete (what a backup-only key gets): every delete,
    and every abort of an incomplete upload, raises PermissionDenied and is recorded in
    ``refused``."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.refused: builtins.list[str] = []

    def delete(self, key: str) -> None:
        check_key(key)
        self.refused.append(key)
        raise PermissionDenied(
            f"{self.describe()}: cannot delete {key!r}: AccessDenied (the policy allows no delete)"
        )

    def discard_incomplete(self) -> int:
        self.refused.append("(incomplete uploads)")
        raise PermissionDenied(
            f"{self.describe()}: cannot abort incomplete uploads: AccessDenied "
            "(the policy allows no delete)"
        )
