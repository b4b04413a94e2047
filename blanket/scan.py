"""Metadata of walked paths: a ``WalkItem`` becomes an ``Entry`` (no content hashing).

Everything here addresses a path as the source root plus the item's relative path and
never follows a symlink at the last component. A path too long for one system call
(beyond ``PATH_MAX``) is reached through its parent directory, opened component by
component without following symlinks, and ``/proc/self/fd`` (Linux).
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from blanket.model import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    ROOT,
    SYMLINK,
    Entry,
)
from blanket.walker import WalkItem

_PATH_MAX = 4096
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)

_KINDS = {
    stat.S_IFREG: FILE,
    stat.S_IFDIR: DIR,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFIFO: FIFO,
    stat.S_IFCHR: CHARDEV,
    stat.S_IFBLK: BLOCKDEV,
}


def kind_of(mode: int) -> str | None:
    """The entry kind for an ``st_mode``; None for what is not backed up (sockets)."""
    return _KINDS.get(stat.S_IFMT(mode))


def _as_prior(item: WalkItem, kind: str, prior: Entry) -> Entry | None:
    """``prior`` when ``item`` is that version unchanged, else None."""
    if prior.path != item.path or prior.kind != kind:
        return None
    st = item.st
    if kind == FILE:
        if st.st_nlink != 1 or prior.size != st.st_size:
            return None
    elif kind != DIR:
        return None
    if (
        prior.mtime_ns == st.st_mtime_ns
        and prior.ctime_ns == st.st_ctime_ns
        and prior.ino == st.st_ino
        and prior.mode == stat.S_IMODE(st.st_mode)
        and prior.uid == st.st_uid
        and prior.gid == st.st_gid
        and not prior.target
        and not prior.rdev_major
        and not prior.rdev_minor
    ):
        return prior
    return None


def entry_for(
    root: str | bytes, item: WalkItem, *, since: int, prior: Entry | None = None
) -> Entry | None:
    """The entry describing ``item``, found under the source directory ``root``.

    Metadata comes from ``item.st``; the symlink target, the extended attributes and,
    for a file that looks sparse (``st_blocks * 512 < st_size``), its data segments are
    read now. ``sha256`` stays empty and hard links are not detected here. Returns None
    for a socket. Raises ``OSError`` when the path vanished or cannot be read; the caller
    reports it as a per-file problem.

    ``sparse`` is empty for a dense file; a sparse file holding no data at all gets the
    sentinel ``((size, 0),)``, a zero-length segment at its end, so that it differs from
    a dense one.

    ``prior`` is the version the prior state holds for this path, as the merge-join of
    ``blanket.changes.diff`` finds it. When its ``lstat`` data (kind, permission bits,
    owner ids, mtime, ctime, inode, size) equal the item's, ``prior`` itself is returned
    (its ``since`` is the prior one's) without reading anything more: no extended
    attributes, no sparse map, no user or group names, no new ``Entry``. That is sound
    because every change to what it skips moves ``ctime`` (``setxattr``/``removexattr``,
    writes that punch or fill holes, ``chown``), and a version with the same stat data
    is one that ``blanket.changes.unchanged`` keeps. Only regular files with a single
    link and directories take this path; symlinks, devices, FIFOs and hard-linked files
    are always read in full (their target or their link group is part of the version).
    """
    st = item.st
    kind = kind_of(st.st_mode)
    if kind is None:
        return None
    if prior is not None:
        same = _as_prior(item, kind, prior)
        if same is not None:
            return same
    root = os.fsencode(root)
    full = _direct(root, item.path)
    if full is not None:  # the usual case, without a context manager per path
        target, sparse, xattrs = _extras(full, kind, st)
    else:
        with _reachable(root, item.path) as path:
            target, sparse, xattrs = _extras(path, kind, st)
    is_dev = kind in (CHARDEV, BLOCKDEV)
    return Entry(
        kind=kind,
        path=item.path,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        size=st.st_size if kind == FILE else 0,
        target=target,
        rdev_major=os.major(st.st_rdev) if is_dev else 0,
        rdev_minor=os.minor(st.st_rdev) if is_dev else 0,
        xattrs=xattrs,
        sparse=sparse,
        since=since,
    )


def _extras(
    path: bytes, kind: str, st: os.stat_result
) -> tuple[bytes, tuple[tuple[int, int], ...], tuple[tuple[bytes, bytes], ...]]:
    """What ``lstat`` does not say: a symlink's target, a sparse file's data segments
    and the extended attributes."""
    target = b""
    sparse: tuple[tuple[int, int], ...] = ()
    if kind == SYMLINK:
        target = os.readlink(path)
    elif kind == FILE and st.st_blocks * 512 < st.st_size:
        sparse = _sparse(path, st.st_size)
    return target, sparse, _xattrs(path, is_link=kind == SYMLINK)


def open_for_read(root: str | bytes, path: bytes) -> int:
    """Open the regular file ``path`` under ``root`` for reading; return the descriptor.

    Never follows a symlink at ``path`` itself, does not update the access time where
    permitted (``O_NOATIME``) and never blocks on a FIFO or opens a terminal; raises
    ``OSError`` (``EINVAL``) if ``path`` is no longer a regular file.
    """
    root = os.fsencode(root)
    full = _direct(root, path)
    if full is not None:
        return _open_regular(full)
    with _reachable(root, path) as reachable:
        return _open_regular(reachable)


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """The data segments ``(offset, length)`` of the first ``size`` bytes of open file ``fd``.

    Uses ``SEEK_DATA``/``SEEK_HOLE``. A file that is all hole has no segments; where the
    filesystem cannot tell, the whole file is one segment.
    """
    segments: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after offset
                break
            if exc.errno == errno.EINVAL and offset == 0:  # SEEK_DATA unsupported
                return [(0, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        segments.append((start, end - start))
        offset = end
    return segments


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> bytes:
    """The name of user ``uid`` as bytes, b"" when the system does not know it."""
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return b""


@functools.lru_cache(maxsize=256)
def group_name(gid: int) -> bytes:
    """The name of group ``gid`` as bytes, b"" when the system does not know it."""
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except KeyError:
        return b""


def _sparse(path: bytes, size: int) -> tuple[tuple[int, int], ...]:
    """The ``Entry.sparse`` value of a file that looks sparse (see ``entry_for``)."""
    fd = _open_regular(path)
    try:
        segments = data_segments(fd, size)
    finally:
        os.close(fd)
    if not segments:
        return ((size, 0),)
    if segments == [(0, size)]:
        return ()
    return tuple(segments)


def _xattrs(path: bytes, *, is_link: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The sorted extended attributes of ``path`` (not following a symlink)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTRS or (is_link and exc.errno in (errno.EPERM, errno.EACCES)):
            return ()
        raise
    pairs = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA or exc.errno in _NO_XATTRS:
                continue  # removed since the listing, or not readable this way
            raise
        pairs.append((os.fsencode(name), value))
    return tuple(sorted(pairs))


def _open_regular(path: bytes) -> int:
    try:
        fd = os.open(path, _READ_FLAGS | os.O_NOATIME)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:  # O_NOATIME refused: we do not own the file
            raise
        fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file", os.fsdecode(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _direct(root: bytes, path: bytes) -> bytes | None:
    """``root/path`` when a system call accepts it as it is (shorter than PATH_MAX)."""
    full = root if path == ROOT else root + b"/" + path
    return full if len(full) < _PATH_MAX else None


@contextmanager
def _reachable(root: bytes, path: bytes) -> Iterator[bytes]:
    """A path naming ``root/path`` that a single system call accepts."""
    full = _direct(root, path)
    if full is not None:
        yield full
        return
    parent, _, name = path.rpartition(b"/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parent.split(b"/") if parent else ():
            next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        yield b"/proc/self/fd/%d/%s" % (fd, name)
    finally:
        os.close(fd)
