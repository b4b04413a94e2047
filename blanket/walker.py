"""The file clock walk: every path of the source tree, in clock order, from any point.

``walk`` yields the tree depth-first, a directory before its children and the children of
a directory sorted by name as raw bytes, which is the order of ``model.clock_key``. It
works relative to open directory descriptors (``openat``/``fstatat``), so trees deeper
than ``PATH_MAX`` walk like any other, and it never follows a symlink below the root.

Memory is the current chain of directory listings (depth x directory size). Each open
directory costs a descriptor; at most ``MAX_OPEN_DIRS`` are held, and a directory whose
descriptor was dropped is reopened through its child's ``..`` (checked by device and
inode) when the walk comes back to it.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from blanket.exclude import Excluder
from blanket.model import ROOT, check_relpath, fast_init, join

MAX_OPEN_DIRS = 64

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW

OnError = Callable[[bytes, OSError], None]


@dataclass(frozen=True, slots=True)
class WalkItem:
    """One path met by the walk.

    ``st`` comes from ``lstat`` (the root's from ``fstat`` of the opened root).
    ``listing_failed`` marks a directory whose contents could not be listed: what lies
    below it is unknown, not deleted.
    """

    path: bytes
    st: os.stat_result
    listing_failed: bool = False


fast_init(WalkItem)


@dataclass(slots=True)
class _Frame:
    """A directory being walked: its open descriptor (-1 when dropped) and sorted names."""

    path: bytes
    fd: int
    st: os.stat_result
    names: list[bytes]
    pos: int = 0
    pointer: bytes | None = None  # name on the way to `after` (not yielded again)
    rest: tuple[bytes, ...] = ()  # components of `after` below `pointer`


def walk(
    root: str | bytes,
    *,
    after: bytes | None = None,
    excluder: Excluder | None = None,
    on_error: OnError,
) -> Iterator[WalkItem]:
    """Yield the tree under ``root`` in clock order.

    ``root`` must name a directory (it may be a symlink to one: the root alone is
    resolved, like ``cd``); failing to open it raises ``OSError`` on the first ``next``.
    The root comes first, as ``b"."``. With ``after`` (a clean relative path, typically
    the clock pointer) only the paths whose clock key is strictly greater come out, and
    nothing before it is listed or stat-ed except the directories leading to it; if
    ``after`` no longer exists the walk resumes at the path that would follow it.

    Sockets are skipped; excluded paths are skipped and excluded directories not entered.
    A name that vanishes before it is stat-ed is skipped silently. Any other failure is
    passed to ``on_error(path, exc)`` and the walk goes on: a path reported there is
    unknown, with everything below it (a directory that could not be listed is also
    yielded, with ``listing_failed``, unless it lies at or before ``after``).
    """
    resume = () if after is None or after == ROOT else tuple(check_relpath(after).split(b"/"))
    root_fd = os.open(os.fsencode(root), _ROOT_FLAGS)
    try:
        root_st = os.fstat(root_fd)
    except OSError:
        os.close(root_fd)
        raise
    yield from _walk(root_fd, root_st, after is None, resume, excluder, on_error)


def _walk(
    root_fd: int,
    root_st: os.stat_result,
    yield_root: bool,
    resume: tuple[bytes, ...],
    excluder: Excluder | None,
    on_error: OnError,
) -> Iterator[WalkItem]:
    stack: list[_Frame] = []
    try:
        try:
            names = _list(root_fd)
        except OSError as exc:
            on_error(ROOT, exc)
            if yield_root:
                yield WalkItem(ROOT, root_st, listing_failed=True)
            return
        if yield_root:
            yield WalkItem(ROOT, root_st)
        stack.append(_frame(ROOT, root_fd, root_st, names, resume))
        while stack:
            top = stack[-1]
            if top.pos == len(top.names):
                _leave(stack, on_error)
                continue
            name = top.names[top.pos]
            top.pos += 1
            on_pointer = name == top.pointer
            top.pointer = None
            path = join(top.path, name)
            try:
                st = os.lstat(name, dir_fd=top.fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                on_error(path, exc)
                continue
            mode = st.st_mode
            if stat.S_ISSOCK(mode):
                continue
            is_dir = stat.S_ISDIR(mode)
            if excluder is not None and excluder.excluded(path, is_dir):
                continue
            if not is_dir:
                if not on_pointer:
                    yield WalkItem(path, st)
                continue
            child = _enter(top, name, path, st, top.rest if on_pointer else (), on_error)
            if child is None:
                continue
            if child.fd >= 0:
                stack.append(child)  # before the yield, so that close() releases its fd
                _limit_open(stack)
            if not on_pointer:
                yield WalkItem(path, child.st, listing_failed=child.fd < 0)
    finally:
        for frame in stack:
            if frame.fd >= 0 and frame.fd != root_fd:
                os.close(frame.fd)
        os.close(root_fd)


def _list(fd: int) -> list[bytes]:
    """The sorted names in the directory open as ``fd``."""
    with os.scandir(fd) as entries:
        return sorted(os.fsencode(entry.name) for entry in entries)


def _frame(
    path: bytes, fd: int, st: os.stat_result, names: list[bytes], resume: tuple[bytes, ...]
) -> _Frame:
    """A frame for a listed directory, cut to the names at or after ``resume`` if given."""
    if not resume:
        return _Frame(path, fd, st, names)
    start = bisect.bisect_left(names, resume[0])
    return _Frame(path, fd, st, names, start, pointer=resume[0], rest=resume[1:])


def _enter(
    parent: _Frame,
    name: bytes,
    path: bytes,
    st: os.stat_result,
    resume: tuple[bytes, ...],
    on_error: OnError,
) -> _Frame | None:
    """Open and list a child directory.

    Returns None when it vanished, a frame with ``fd == -1`` when it cannot be listed
    (reported), else a frame holding its descriptor.
    """
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        on_error(path, exc)
        return _Frame(path, -1, st, [])
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            st = fst  # replaced by another directory since the lstat: describe what we list
        names = _list(fd)
    except OSError as exc:
        os.close(fd)
        on_error(path, exc)
        return _Frame(path, -1, st, [])
    return _frame(path, fd, st, names, resume)


def _limit_open(stack: list[_Frame]) -> None:
    """Drop the descriptor of the shallowest frame beyond the budget (never the root's)."""
    index = len(stack) - MAX_OPEN_DIRS - 1
    if index > 0 and stack[index].fd >= 0:
        os.close(stack[index].fd)
        stack[index].fd = -1


def _leave(stack: list[_Frame], on_error: OnError) -> None:
    """Pop the finished top frame, reopening its parent if its descriptor was dropped."""
    done = stack.pop()
    try:
        if stack and stack[-1].fd < 0:
            parent = stack[-1]
            try:
                parent.fd = _reopen(stack, done.fd)
            except OSError as exc:
                on_error(parent.path, exc)
                parent.pos = len(parent.names)  # the rest of it is unknown
    finally:
        if done.fd >= 0 and stack:
            os.close(done.fd)


def _reopen(stack: list[_Frame], child_fd: int) -> int:
    """Reopen the top frame's directory: through its child's ``..``, else by name."""
    if child_fd >= 0:
        try:
            return _reopen_via(child_fd, b"..", stack[-1].st)
        except OSError:
            pass  # the child was moved away: go down from an open ancestor instead
    return _reopen_from_ancestor(stack)


def _reopen_via(dir_fd: int, name: bytes, expect: os.stat_result) -> int:
    """Open ``name`` relative to ``dir_fd``, insisting it is the directory ``expect``."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
        os.close(fd)
        raise OSError(errno.ESTALE, "directory moved during the walk")
    return fd


def _reopen_from_ancestor(stack: list[_Frame]) -> int:
    """Reopen the top frame's directory by name from its nearest open ancestor."""
    start = max(i for i, frame in enumerate(stack) if frame.fd >= 0)
    fd = stack[start].fd
    for frame in stack[start + 1 :]:
        name = frame.path.rpartition(b"/")[2]
        try:
            next_fd = _reopen_via(fd, name, frame.st)
        finally:
            if fd != stack[start].fd:
                os.close(fd)
        fd = next_fd
    return fd
