"""A store in a plain directory, such as a USB disk: key ``index/1`` is file ``ROOT/index/1``.

A put writes ``.tmp-<hex>`` beside the destination, fsyncs it, publishes it by rename (or
by hard link when the key must be absent, so an existing file is never replaced) and
fsyncs the directory. Paths are opened one component at a time relative to the parent
directory's descriptor, and no symlink inside the store is ever followed: a symlink is
not an object and is not a directory of objects.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from blanket.backends.base import (
    TEMP_PREFIX,
    Backend,
    ObjectInfo,
    check_key,
    check_range,
    is_valid_key,
    read_chunks,
)
from blanket.errors import AlreadyExists, NotFound, PermissionDenied, StoreError

# errno values that mean "there is no object under this key".
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})  # refused, not failed
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIR = _DIR | os.O_NOFOLLOW


class LocalBackend(Backend):
    """Objects as files under ``root``; the constructor never creates ``root``."""

    @property
    def cheap_reads(self) -> bool:
        return True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        with self._parent_for_write(key) as (dir_fd, name):
            self._put_at(dir_fd, name, key, data, if_absent)

    def put_file(self, key: str, path: str) -> None:
        """Like ``put``, but a file on the store's filesystem is hard-linked into place
        (and fsynced) instead of copied: a pack spooled next to a local store is written
        to the disk once."""
        with self._parent_for_write(key) as (dir_fd, name):
            tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            try:
                os.link(path, tmp, dst_dir_fd=dir_fd, follow_symlinks=False)
            except OSError:  # another filesystem, or links not allowed: copy
                with open(path, "rb") as f:
                    self._put_at(dir_fd, name, key, f, False)
                return
            try:
                with self._errors("write", key):
                    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                with self._errors("store", key):
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    os.fsync(dir_fd)
            finally:
                with self._errors("remove the temporary file of", key), suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)

    @contextmanager
    def _parent_for_write(self, key: str) -> Iterator[tuple[int, str]]:
        """The open directory that will hold ``key`` (created if needed) and the name."""
        check_key(key)
        if not self.exists():
            raise StoreError(f"{self.describe()} does not exist; create the store first")
        with self._errors("write", key):
            dir_fd, name = self._open_parent(key, create=True)
        try:
            yield dir_fd, name
        finally:
            with self._errors("write", key):
                os.close(dir_fd)

    def open_local(self, key: str) -> BinaryIO:
        with self._open(key) as (fd, _size):
            return os.fdopen(os.dup(fd), "rb")

    def get(self, key: str) -> bytes:
        with self._open(key) as (fd, size):
            return _read_at(fd, 0, size)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self._open(key) as (fd, size):
            check_range(key, offset, length, size)
            return _read_at(fd, offset, min(length, size - offset))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        if not self.exists():
            raise StoreError(f"{self.describe()} does not exist")
        with self._errors("list", prefix):
            found = sorted(_walk(os.open(self.root, _DIR), "", prefix))
        return (ObjectInfo(key, size) for key, size in found)

    def head(self, key: str) -> ObjectInfo:
        with self._open(key) as (_fd, size):
            return ObjectInfo(key, size)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._errors("delete", key):
            try:
                dir_fd, name = self._open_parent(key)
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                if exc.errno in _MISSING:
                    return  # nothing stored under this key: deleting is idempotent
                raise

    def describe(self) -> str:
        return f"local directory {self.root}"

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        with self._errors("create", str(self.root)):
            os.makedirs(self.root, exist_ok=True)

    # --- helpers ----------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn an OSError into a StoreError naming this store and the key."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or str(exc)
            error = PermissionDenied if exc.errno in _DENIED else StoreError
            raise error(f"{self.describe()}: cannot {action} {key!r}: {reason}") from exc

    def _open_parent(self, key: str, *, create: bool = False) -> tuple[int, str]:
        """Open the directory that holds ``key``'s file and return its descriptor (the
        caller closes it) and the file's name; with ``create``, make missing directories."""
        *dirs, name = key.split("/")
        fd = os.open(self.root, _DIR)
        try:
            for part in dirs:
                if create:
                    _mkdir_at(fd, part)
                parent, fd = fd, os.open(part, _SUBDIR, dir_fd=fd)
                os.close(parent)
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _put_at(
        self, dir_fd: int, name: str, key: str, data: bytes | BinaryIO, if_absent: bool
    ) -> None:
        tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self._write_temp(dir_fd, tmp, key, data)
            with self._errors("store", key):
                if if_absent:
                    self._link(dir_fd, tmp, name, key)
                    os.unlink(tmp, dir_fd=dir_fd)
                else:
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
        finally:
            with self._errors("remove the temporary file of", key), suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)

    def _write_temp(self, dir_fd: int, tmp: str, key: str, data: bytes | BinaryIO) -> None:
        """Write ``data`` to the new file ``tmp`` and fsync it. Errors reading ``data``
        propagate unchanged."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._errors("write", key):
            fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
        try:
            for chunk in read_chunks(data):
                with self._errors("write", key):
                    _write_all(fd, chunk)
            with self._errors("write", key):
                os.fsync(fd)
        finally:
            with self._errors("write", key):
                os.close(fd)

    def _link(self, dir_fd: int, tmp: str, name: str, key: str) -> None:
        """Publish ``tmp`` as ``name`` unless ``name`` exists (atomic, by hard link)."""
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError as exc:
            raise AlreadyExists(f"{self.describe()}: {key!r} already exists") from exc

    @contextmanager
    def _open(self, key: str) -> Iterator[tuple[int, int]]:
        """Open the object for reading; yield its descriptor and size. Only a regular
        file is an object."""
        check_key(key)
        with self._errors("read", key):
            try:
                dir_fd, name = self._open_parent(key)
                try:
                    fd = os.open(name, _READ, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                if exc.errno in _MISSING:
                    raise NotFound(f"{self.describe()}: no object {key!r}") from exc
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise NotFound(f"{self.describe()}: no object {key!r}")
                yield fd, st.st_size
            finally:
                os.close(fd)


# O_NONBLOCK: opening a FIFO someone left in the store must not hang.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _walk(dir_fd: int, dir_key: str, prefix: str) -> Iterator[tuple[str, int]]:
    """Yield ``(key, size)`` for the regular files below the directory ``dir_fd`` (which
    this closes) whose keys start with ``prefix``, unsorted. Temp files, symlinks, other
    file types and names that are not valid keys are skipped."""
    try:
        with os.scandir(dir_fd) as it:
            entries = [*it]
        for entry in entries:
            key = f"{dir_key}/{entry.name}" if dir_key else entry.name
            if not is_valid_key(key):
                continue
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from _walk(os.open(entry.name, _SUBDIR, dir_fd=dir_fd), key, prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # deleted while we listed: no longer an object
                yield key, size
    finally:
        os.close(dir_fd)


def _mkdir_at(dir_fd: int, name: str) -> None:
    """Make directory ``name`` in ``dir_fd`` and fsync ``dir_fd``, unless ``name`` exists."""
    try:
        os.mkdir(name, dir_fd=dir_fd)
    except FileExistsError:
        return  # already there; if it is no directory, opening it says so
    os.fsync(dir_fd)


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset``, fewer only if the file ends first."""
    parts = []
    while length > 0 and (chunk := os.pread(fd, length, offset)):
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]
