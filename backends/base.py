"""The storage contract every backend meets, and the one object-name rule.

A store holds immutable objects under plain ASCII keys such as ``index/000000000001``.
Keys are checked here, by :func:`check_key`, and nowhere else. A backend translates its
foreign errors (``OSError``, botocore, ...) into :mod:`blanket.errors` once, at its
boundary, always ``from`` the original exception.

One limit comes from filesystems: a key may not also be a "directory" of other keys
(``a/b`` and ``a/b/c`` together), because a plain directory cannot store both.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from blanket.errors import BadRange, InvalidKey, StoreError

CHUNK_SIZE = 8 * 1024 * 1024
MAX_KEY_LENGTH = 512
TEMP_PREFIX = ".tmp-"

_ALLOWED = frozenset(string.ascii_letters + string.digits + "._-/")
_KEY_RULE = "keys are [A-Za-z0-9._-] names joined by '/'"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object: its key, its size in bytes and, where the store keeps one, its
    SHA-256 as lowercase hex."""

    key: str
    size: int
    checksum_sha256: str | None = None


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`InvalidKey`.

    With ``prefix=True`` the value is a listing prefix: it may also be empty or end with
    ``/``.
    """
    problem = _key_problem(key, prefix=prefix)
    if problem is not None:
        shown = repr(key)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        what = "prefix" if prefix else "key"
        raise InvalidKey(f"invalid object {what} {shown}: {problem} ({_KEY_RULE})")
    return key


def is_valid_key(key: str) -> bool:
    """Whether :func:`check_key` would accept ``key`` (for skipping foreign names)."""
    return _key_problem(key, prefix=False) is None


def _key_problem(key: str, *, prefix: bool) -> str | None:
    if not isinstance(key, str):
        return "not a string"
    if prefix:
        if key == "":
            return None
        if key.endswith("/"):
            key = key[:-1]
    if key == "":
        return "empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    bad = next((c for c in key if c not in _ALLOWED), None)
    if bad is not None:
        return f"character {bad!r} is not allowed"
    for part in key.split("/"):
        if part == "":
            return "empty name (leading, trailing or double '/')"
        if part in (".", ".."):
            return f"component {part!r} is not allowed"
        if part.startswith(TEMP_PREFIX):
            return f"names starting with {TEMP_PREFIX!r} are reserved for temporary files"
    return None


def check_range(key: str, offset: int, length: int, size: int) -> None:
    """Raise :class:`BadRange` unless ``offset``/``length`` may be read from an object of
    ``size`` bytes (``offset == size`` is allowed and reads nothing)."""
    if offset < 0 or length < 0 or offset > size:
        raise BadRange(
            f"cannot read {length} bytes at offset {offset} of {key!r}: it holds {size} bytes"
        )


def read_chunks(data: bytes | BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield ``data`` as is if it is bytes, else read the file object to its end in chunks.

    Errors from reading the file object propagate unchanged: they are the caller's.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
        return
    while chunk := data.read(chunk_size):
        yield chunk


class Backend(ABC):
    """A dumb object store: atomic puts, whole and ranged reads, sorted listing, deletes.

    Every method that takes a key checks it with :func:`check_key` first.

    Besides the abstract methods, the contract has three *optional capabilities*, with
    defaults that every store satisfies: :meth:`put_file` (store a finished local file;
    default: :meth:`put` of it), :meth:`open_local` (the object as a local file to read
    in place; default: None) and :attr:`cheap_reads` (default: False). A store that can
    do better overrides them; every wrapper passes them through (``BackendWrapper``), so
    callers ask the contract, never the concrete class.
    """

    @property
    def cheap_reads(self) -> bool:
        """True where reading an object costs no more than hashing it (a local disk):
        verify then hashes objects whose store keeps no checksum of its own."""
        return False

    @abstractmethod
    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        """Store ``data`` (bytes, or a binary file object read to its end in chunks) under
        ``key``, atomically: readers see no object or the whole object, never part of one.

        Without ``if_absent`` an existing object is replaced. With it, an existing object
        is never touched, not even under a race.

        Raises InvalidKey for a bad key; AlreadyExists if ``if_absent`` and the key exists;
        StoreError (or its subclass TransientStoreError) if the store fails. Errors raised
        while reading a file object ``data`` propagate unchanged; nothing is stored then.
        """

    def put_file(self, key: str, path: str) -> None:
        """Store the content of the local file ``path``, which nobody writes any more,
        under ``key`` (as :meth:`put`). A store may take the file itself instead of a
        copy (the local store hard-links it when it lives on the same filesystem)."""
        with open(path, "rb") as f:
            self.put(key, f)

    def open_local(self, key: str) -> BinaryIO | None:
        """The object as a file open for reading, where the store is a local filesystem
        and reading it in place costs no copy (the caller closes it); None elsewhere.

        Raises what :meth:`head` raises."""
        return None

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object.

        Raises InvalidKey for a bad key; NotFound if there is no such object; StoreError
        (or TransientStoreError) if the store fails.
        """

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset``; fewer only at the object's end,
        and ``b""`` when ``offset`` equals the size.

        Raises InvalidKey for a bad key; NotFound if there is no such object; BadRange if
        ``offset`` is past the end or ``offset`` or ``length`` is negative; StoreError (or
        TransientStoreError) if the store fails.
        """

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, sorted by key, never
        temporary or in-progress uploads.

        Raises InvalidKey for a bad prefix (it may be empty or end with ``/``); StoreError
        (or TransientStoreError) if the store fails or does not exist.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Return the object's size and, where the store keeps one, its SHA-256.

        Raises InvalidKey for a bad key; NotFound if there is no such object; StoreError
        (or TransientStoreError) if the store fails.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error.

        Raises InvalidKey for a bad key; StoreError (or TransientStoreError) if the store
        fails.
        """

    @abstractmethod
    def describe(self) -> str:
        """A short description for messages, such as ``local directory /mnt/usb``.

        Raises nothing.
        """

    def exists(self) -> bool:
        """Whether the store itself (directory, bucket) is there.

        Raises StoreError (or TransientStoreError) if the store cannot be asked.
        """
        return True

    def create(self) -> None:
        """Create the store itself if it is missing; a no-op where there is nothing to make.

        Raises StoreError (or TransientStoreError) if it cannot be created.
        """
        return None

    def discard_incomplete(self) -> int:
        """Remove what interrupted uploads left behind where the store keeps such things
        out of sight (S3 multipart uploads); returns how many were removed. Local temp
        files of a crashed put are never listed and need no call.

        Raises StoreError if the store refuses (callers treat that as "leave them").
        """
        return 0

    def close(self) -> None:
        """Release connections and files; the backend is not used afterwards.

        Raises nothing.
        """
        return None


def download_to(backend: Backend, key: str, fileobj: BinaryIO, chunk_size: int = CHUNK_SIZE) -> int:
    """Stream the object ``key`` into ``fileobj`` by ranged reads; return the byte count.

    Raises what ``backend.head`` and ``backend.get_range`` raise, and StoreError if a read
    comes back shorter than the size ``head`` reported. Errors writing to ``fileobj``
    propagate unchanged.
    """
    size = backend.head(key).size
    offset = 0
    while offset < size:
        want = min(chunk_size, size - offset)
        chunk = backend.get_range(key, offset, want)
        if len(chunk) != want:
            raise StoreError(
                f"{backend.describe()}: {key!r} returned {len(chunk)} bytes at offset "
                f"{offset} where {want} were expected; the object changed or was cut short"
            )
        fileobj.write(chunk)
        offset += want
    return size
