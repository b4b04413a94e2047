"""A store in a dict, for tests: thread-safe, lost when the process ends."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import BinaryIO

from blanket.backends.base import Backend, ObjectInfo, check_key, check_range, read_chunks
from blanket.errors import AlreadyExists, NotFound


class MemoryBackend(Backend):
    """Objects held in memory; each value is stored with its size and SHA-256."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        check_key(key)
        value = b"".join(read_chunks(data))
        info = ObjectInfo(key, len(value), hashlib.sha256(value).hexdigest())
        with self._lock:
            if if_absent and key in self._objects:
                raise AlreadyExists(f"{self.describe()}: {key!r} already exists")
            self._objects[key] = (value, info)

    def get(self, key: str) -> bytes:
        return self._lookup(key)[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        value = self._lookup(key)[0]
        check_range(key, offset, length, len(value))
        return value[offset : offset + length]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        with self._lock:
            found = sorted(k for k in self._objects if k.startswith(prefix))
            return iter([self._objects[k][1] for k in found])

    def head(self, key: str) -> ObjectInfo:
        return self._lookup(key)[1]

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def describe(self) -> str:
        return f"memory store {self.name!r}"

    def _lookup(self, key: str) -> tuple[bytes, ObjectInfo]:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise NotFound(f"{self.describe()}: no object {key!r}")
        return found
