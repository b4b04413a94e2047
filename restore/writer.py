"""Put restored entries on disk without ever writing outside the target directory.

The target is opened once; every path below it is walked one component at a time from that
descriptor with ``O_NOFOLLOW``, and every syscall names a single component relative to a
directory descriptor (``dir_fd``), so no symlink below the target is ever followed. Paths
come from packs and are untrusted: each is checked with ``check_relpath`` first. Content
and nodes are created under a temporary name (``.blanket-tmp-<random>-<n>``) in the final
directory, given their metadata, then renamed into place; on any failure the temporary
is removed. A directory's own metadata waits for ``finish_dir``, which the caller calls
once everything below it is written (so a ``0o500`` directory can still be filled).
"""

from __future__ import annotations

import errno
import functools
import grp
import hashlib
import itertools
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

from blanket.model import BLOCKDEV, CHARDEV, FIFO, ROOT, Entry, check_relpath, parent_of

__all__ = ["ContentMismatch", "NotPermitted", "SafeWriter", "UnsafePath"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TMP_PREFIX = b".blanket-tmp-"
_BLOCK = 64 * 1024
_ZEROS = bytes(_BLOCK)
_XATTR_SKIPPABLE = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES)

_T = TypeVar("_T")


class UnsafePath(ValueError):
    """A path from a pack would leave the target, follow a link, or clobber a directory."""


class ContentMismatch(Exception):
    """The bytes restored for a file differ from the size or SHA-256 its index records."""


class NotPermitted(Exception):
    """This entry needs privileges the restore does not have (device nodes need root)."""


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _checked(path: bytes) -> bytes:
    if not isinstance(path, bytes):
        raise UnsafePath(f"path is not bytes: {path!r}")
    try:
        return check_relpath(path)
    except ValueError as exc:
        raise UnsafePath(f"refusing to restore {path!r}: {exc}") from exc


def _split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a clean path that names something below the target."""
    clean = _checked(path)
    if clean == ROOT:
        raise UnsafePath("refusing to replace the target directory itself with a non-directory")
    return parent_of(clean), clean.rpartition(b"/")[2]


def _opendir_at(dir_fd: int, name: bytes, path: bytes) -> int:
    """Open directory ``name`` in ``dir_fd``; a symlink or non-directory is UnsafePath."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise UnsafePath(
                f"{_show(path)}: {_show(name)!r} is a symlink or not a directory; "
                "refusing to go through it"
            ) from exc
        raise


def _lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


_temp_names = itertools.count()
_TEMP_RUN = secrets.token_hex(6).encode()  # this process's; a counter tells its names apart


def _temp_name() -> bytes:
    return b"%s%s-%d" % (_TMP_PREFIX, _TEMP_RUN, next(_temp_names))


def _create_temp(make: Callable[[bytes], _T]) -> tuple[_T, bytes]:
    """Call ``make(name)`` with fresh temporary names until one does not exist yet
    (``O_EXCL`` and the like make an existing name fail, never get reused)."""
    while True:
        name = _temp_name()
        try:
            return make(name), name
        except FileExistsError:
            continue


@contextmanager
def _removed_on_error(dir_fd: int, name: bytes) -> Iterator[None]:
    """Unlink temporary ``name`` if anything (even KeyboardInterrupt) escapes the block."""
    try:
        yield
    except BaseException:
        with suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise


@contextmanager
def _proc_path(dir_fd: int, name: bytes) -> Iterator[str]:
    """A /proc path for the very inode at ``name`` (not a symlink), for calls lacking dir_fd."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise UnsafePath(f"{_show(name)} turned into a symlink during restore")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def _write_chunks(fd: int, chunks: Iterable[bytes], *, sparse: bool) -> tuple[int, str]:
    """Write the chunks from offset 0; return (bytes, SHA-256 hex). Sparse: skip zero blocks."""
    digest = hashlib.sha256()
    offset = 0
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        if not sparse:
            _pwrite_all(fd, view, offset)
        else:
            pos = 0
            while pos < len(view):  # cut at 64 KiB boundaries of the file, leave zeros as holes
                end = min(len(view), pos + _BLOCK - (offset + pos) % _BLOCK)
                piece = view[pos:end]
                if piece.tobytes() != _ZEROS[: end - pos]:
                    _pwrite_all(fd, piece, offset + pos)
                pos = end
        offset += len(view)
    if sparse:
        os.ftruncate(fd, offset)
    return offset, digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def _local_id(kind: str, name: bytes) -> int | None:
    """The id this system gives user or group ``name``, None if it has no such name."""
    try:
        if kind == "user":
            return pwd.getpwnam(os.fsdecode(name)).pw_uid if name else None
        return grp.getgrnam(os.fsdecode(name)).gr_gid if name else None
    except (KeyError, ValueError):
        return None


def owner_of(entry: Entry) -> tuple[int, int]:
    """Like GNU tar: a user or group name known here wins over the recorded number."""
    uid, gid = _local_id("user", entry.user), _local_id("group", entry.group)
    return (entry.uid if uid is None else uid, entry.gid if gid is None else gid)


class SafeWriter:
    """Writes entries below ``target``; see the module docstring for the rules it keeps.

    ``restore_owner=None`` restores owners only when running as root. Extended attributes
    the target filesystem or our privileges refuse are skipped and described in
    ``warnings`` (the caller reports them); every other failure raises.
    """

    def __init__(
        self, target: str | bytes, *, restore_owner: bool | None = None, _root: int = -1
    ) -> None:
        if _root < 0:
            top = os.fsencode(target)
            os.makedirs(top, exist_ok=True)
            _root = os.open(os.path.realpath(top), _DIR_FLAGS)
        self._root = _root
        self.fresh = False  # see note_if_empty
        self.restore_owner = os.geteuid() == 0 if restore_owner is None else restore_owner
        self.warnings: list[str] = []
        self._cached: tuple[bytes, int] | None = None

    def clone(self) -> SafeWriter:
        """A writer below the very same target directory (a duplicate of its descriptor)
        with its own descriptor cache and warnings: one per thread, as neither is shared
        safely. Close it like this one."""
        if self._root < 0:
            raise ValueError("SafeWriter is closed")
        twin = SafeWriter(b"", restore_owner=self.restore_owner, _root=os.dup(self._root))
        twin.fresh = self.fresh
        return twin

    def note_if_empty(self) -> None:
        """Remember whether the target holds nothing yet (before a restore writes): then
        whatever is in it later, the restore put there, and ``existing_matches`` need not
        look at the disk (a restore writes each path once)."""
        self.fresh = not os.listdir(self._root)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        self._forget(ROOT)
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def __enter__(self) -> SafeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- directories ----------------------------------------------------------------

    def _walk(self, path: bytes, *, create: bool) -> int:
        """A new descriptor for directory ``path``, opened one component at a time."""
        if self._root < 0:
            raise ValueError("SafeWriter is closed")
        fd = os.dup(self._root)
        if path == ROOT:
            return fd
        try:
            for name in path.split(b"/"):
                try:
                    nxt = _opendir_at(fd, name, path)
                except FileNotFoundError:
                    if not create:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                    nxt = _opendir_at(fd, name, path)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent(self, path: bytes, *, create: bool = True) -> int:
        """The descriptor of directory ``path``, cached for the next entry in it."""
        if self._cached is not None and self._cached[0] == path:
            return self._cached[1]
        fd = self._walk(path, create=create)
        self._forget(ROOT)
        self._cached = (path, fd)
        return fd

    def _forget(self, removed: bytes) -> None:
        """Drop the cached descriptor if it lies at or below a directory we removed."""
        if self._cached is None:
            return
        cached = self._cached[0]
        if removed == ROOT or cached == removed or cached.startswith(removed + b"/"):
            os.close(self._cached[1])
            self._cached = None

    def make_dir(self, entry: Entry) -> None:
        """Create the directory if missing, replacing a non-directory; metadata comes later."""
        path = _checked(entry.path)
        if path == ROOT:
            return
        parent, name = _split(path)
        dir_fd = self._parent(parent)
        st = _lstat_at(dir_fd, name)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                return
            os.unlink(name, dir_fd=dir_fd)
        os.mkdir(name, 0o700, dir_fd=dir_fd)

    def finish_dir(self, entry: Entry) -> None:
        """Apply a directory's owner, xattrs, mode and mtime, once its contents are done."""
        path = _checked(entry.path)
        if path == ROOT:
            fd = self._walk(ROOT, create=False)
        else:
            parent, name = _split(path)
            fd = _opendir_at(self._parent(parent, create=False), name, path)
        try:
            self._set_meta(entry, fd)
        finally:
            os.close(fd)

    # --- content and nodes ----------------------------------------------------------

    def write_file(self, entry: Entry, chunks: Iterable[bytes]) -> None:
        """Write a regular file from ``chunks``, check size and SHA-256, then rename it in."""
        parent, name = _split(entry.path)
        dir_fd = self._parent(parent)
        fd, tmp = _create_temp(lambda n: os.open(n, _TMP_FLAGS, 0o600, dir_fd=dir_fd))
        with _removed_on_error(dir_fd, tmp):
            try:
                size, sha = _write_chunks(fd, chunks, sparse=bool(entry.sparse))
                if size != entry.size or (entry.sha256 and sha != entry.sha256.lower()):
                    raise ContentMismatch(
                        f"{_show(entry.path)}: restored {size} bytes with SHA-256 {sha}, "
                        f"but the index records {entry.size} bytes with {entry.sha256 or '-'}"
                    )
                self._set_meta(entry, fd)
            finally:
                os.close(fd)
            self._replace(dir_fd, tmp, name, entry.path)

    def make_symlink(self, entry: Entry) -> None:
        """Create a symlink whose text is ``entry.target`` (data: never followed by us)."""
        parent, name = _split(entry.path)
        dir_fd = self._parent(parent)
        _, tmp = _create_temp(lambda n: os.symlink(entry.target, n, dir_fd=dir_fd))
        with _removed_on_error(dir_fd, tmp):
            self._set_meta_at(entry, dir_fd, tmp, symlink=True)
            self._replace(dir_fd, tmp, name, entry.path)

    def make_hardlink(self, entry: Entry) -> None:
        """Link ``entry.path`` to the already restored regular file at ``entry.target``."""
        parent, name = _split(entry.path)
        src_parent, src_name = _split(entry.target)
        src_fd = self._walk(src_parent, create=False)
        try:
            src = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
            if not stat.S_ISREG(src.st_mode):
                raise UnsafePath(
                    f"{_show(entry.path)}: hard link source {_show(entry.target)} "
                    "is not a regular file; refusing to link it"
                )
            dir_fd = self._parent(parent)
            old = _lstat_at(dir_fd, name)
            if old is not None and (old.st_dev, old.st_ino) == (src.st_dev, src.st_ino):
                return  # already linked (rename would be a no-op and leave the temp behind)
            _, tmp = _create_temp(
                lambda n: os.link(
                    src_name, n, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False
                )
            )
            with _removed_on_error(dir_fd, tmp):
                new = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
                if (new.st_dev, new.st_ino) != (src.st_dev, src.st_ino):
                    raise UnsafePath(f"{_show(entry.target)} changed while linking to it")
                self._replace(dir_fd, tmp, name, entry.path)
        finally:
            os.close(src_fd)

    def make_special(self, entry: Entry) -> None:
        """Create a FIFO, or (as root only) a character or block device."""
        parent, name = _split(entry.path)
        if entry.kind == FIFO:
            node, dev = stat.S_IFIFO, 0
        elif entry.kind in (CHARDEV, BLOCKDEV):
            if os.geteuid() != 0:
                raise NotPermitted(f"{_show(entry.path)}: creating a device node needs root")
            node = stat.S_IFCHR if entry.kind == CHARDEV else stat.S_IFBLK
            dev = os.makedev(entry.rdev_major, entry.rdev_minor)
        else:
            raise ValueError(f"{_show(entry.path)}: not a special file kind: {entry.kind!r}")
        dir_fd = self._parent(parent)
        try:  # mknod with S_IFIFO is mkfifo
            _, tmp = _create_temp(lambda n: os.mknod(n, node | 0o600, dev, dir_fd=dir_fd))
        except PermissionError as exc:
            raise NotPermitted(f"{_show(entry.path)}: not permitted to create it: {exc}") from exc
        with _removed_on_error(dir_fd, tmp):
            self._set_meta_at(entry, dir_fd, tmp, symlink=False)
            self._replace(dir_fd, tmp, name, entry.path)

    def existing_matches(self, entry: Entry) -> bool:
        """True if a regular file with the entry's size and SHA-256 already sits at its path
        (never in a target that was empty: a restore writes each path once)."""
        if not entry.sha256 or self.fresh:
            return False
        parent, name = _split(entry.path)
        try:
            dir_fd = self._parent(parent, create=False)
        except FileNotFoundError:
            return False
        st = _lstat_at(dir_fd, name)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            digest = hashlib.sha256()
            while block := os.read(fd, 1 << 20):
                digest.update(block)
        finally:
            os.close(fd)
        return digest.hexdigest() == entry.sha256.lower()

    # --- shared steps ---------------------------------------------------------------

    def _replace(self, dir_fd: int, tmp: bytes, name: bytes, path: bytes) -> None:
        """Rename ``tmp`` to ``name``; an empty directory there is removed, a full one refused."""
        try:  # the usual case: nothing there, or a non-directory that rename replaces
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        except IsADirectoryError:
            pass
        st = _lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._forget(path)  # the cache holds a parent, but never keep a removed dir's fd
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise UnsafePath(
                        f"{_show(path)}: a non-empty directory is in the way of a "
                        "non-directory; remove it or restore into an empty target"
                    ) from exc
                raise
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _set_meta(self, entry: Entry, fd: int) -> None:
        """Owner, xattrs, mode (after chown, which clears setuid), then times, on an fd."""
        if self.restore_owner:
            os.fchown(fd, *owner_of(entry))
        if entry.xattrs:
            self._set_xattrs(entry, fd)
        os.fchmod(fd, entry.mode & 0o7777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _set_meta_at(self, entry: Entry, dir_fd: int, name: bytes, *, symlink: bool) -> None:
        """The same for a symlink or special file, by name, never following a link."""
        if self.restore_owner:
            os.chown(name, *owner_of(entry), dir_fd=dir_fd, follow_symlinks=False)
        if not symlink:  # Linux has no mode or user xattrs on symlinks
            if entry.xattrs:
                with _proc_path(dir_fd, name) as proc:
                    self._set_xattrs(entry, proc)
            try:
                os.chmod(name, entry.mode & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
            except (NotImplementedError, ValueError):  # glibc < 2.32 lacks this fchmodat
                with _proc_path(dir_fd, name) as proc:
                    os.chmod(proc, entry.mode & 0o7777)
        ns = (entry.mtime_ns, entry.mtime_ns)
        os.utime(name, ns=ns, dir_fd=dir_fd, follow_symlinks=False)

    def _set_xattrs(self, entry: Entry, where: int | str) -> None:
        """Set the entry's xattrs on an fd or /proc path; refusals become warnings."""
        for key, value in entry.xattrs:
            try:
                os.setxattr(where, key, value)
            except OSError as exc:
                if exc.errno not in _XATTR_SKIPPABLE:
                    raise
                self.warnings.append(
                    f"{_show(entry.path)}: extended attribute {_show(key)} not restored: {exc}"
                )


def _new_temp_run() -> None:
    """A forked process (restore.workers) draws its own temporary names."""
    global _TEMP_RUN
    _TEMP_RUN = secrets.token_hex(6).encode()


os.register_at_fork(after_in_child=_new_temp_run)
