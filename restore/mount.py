"""``blanket mount``: a read-only FUSE view of every point in time (over libfuse 3,
through ``mfusepy``).

The mount's top folder holds ``latest/`` (the latest committed state, a partial layer
included), ``layers/N/`` (the end of layer N: what ``restore --at N`` gives) and
``at/TIME/`` (one per commit time: what ``restore --at TIME`` gives). A point's tree is
replayed from the cached indexes when it is first looked into (``restore.mounttree``);
file content is read frame by frame on demand (``restore.mountread``). Nothing here
writes to a store or to the backed-up source.

libfuse runs the loop on its own threads and stops it on SIGINT, SIGTERM, SIGHUP or an
unmount (``fusermount3 -u``), unmounting first; :func:`serve` then returns.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from blanket import model
from blanket.errors import BlanketError
from blanket.model import Entry
from blanket.repo import Repository
from blanket.restore.fuselib import use_libfuse3
from blanket.restore.mountread import FrameCache, Segment, Unreadable, segments_of
from blanket.restore.mounttree import Node, Point, Trees, points_of
from blanket.restore.writer import owner_of

use_libfuse3()  # before mfusepy picks its library, as it does when imported
import mfusepy  # noqa: E402

__all__ = ["MountStats", "serve"]

ROOT_INO, LAYERS_INO, AT_INO = 1, 2, 3
POINT_INO = 16  # + the point's number: the inode of a point's top folder
FOLDERS_KEPT = 4096  # folder paths whose inodes are remembered
_KIND_BITS = {
    model.FILE: stat.S_IFREG,
    model.DIR: stat.S_IFDIR,
    model.SYMLINK: stat.S_IFLNK,
    model.FIFO: stat.S_IFIFO,
    model.CHARDEV: stat.S_IFCHR,
    model.BLOCKDEV: stat.S_IFBLK,
}


@dataclass
class MountStats:
    """What a mount did, for its summary."""

    bytes_fetched: int = 0
    frames_fetched: int = 0
    files_opened: int = 0
    points_built: int = 0


def _eio() -> mfusepy.FuseOSError:
    """What a read of content that cannot be had intact gets (the cause is reported
    once by the frame cache)."""
    return mfusepy.FuseOSError(errno.EIO)


def _enoent() -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(errno.ENOENT)


class _Where:
    """What a mount path names: a folder of the mount itself (``ino`` below POINT_INO),
    a point's top folder (``point``, no ``ino``) or a node of a point's tree."""

    __slots__ = ("ino", "point")

    def __init__(self, ino: int, point: Point | None = None) -> None:
        self.ino, self.point = ino, point


class BlanketFS(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations; every one is safe to call from several threads."""

    use_ns = True

    def __init__(
        self,
        repos: list[Repository],
        trees: Trees,
        cache: FrameCache,
        on_mounted: Callable[[], None],
    ) -> None:
        self.repos, self.trees, self.cache = repos, trees, cache
        self.points = points_of(repos)
        self.by_folder = {p.folder: p for p in self.points}
        self._listings: dict[int, list[tuple[str, int]]] = {
            ROOT_INO: [("latest", POINT_INO), ("layers", LAYERS_INO), ("at", AT_INO)],
            LAYERS_INO: _children(self.points, "layers/"),
            AT_INO: _children(self.points, "at/"),
        }
        self.on_mounted = on_mounted
        self.started = time.time_ns()
        self._heads: dict[int, Entry] = {}  # point -> its top folder's entry
        self._broken: set[int] = set()  # points whose tree could not be replayed
        self._folders: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._handles: dict[int, list[Segment]] = {}
        self._next_fh = 1
        self._lock = threading.Lock()
        self.opened = 0

    # --- paths ------------------------------------------------------------------------

    def _where(self, path: str) -> _Where:
        parts = [p for p in os.fsencode(path).split(b"/") if p]
        if not parts:
            return _Where(ROOT_INO)
        head = parts[0]
        if head == b"latest":
            point, rest = self.points[0], parts[1:]
        elif head in (b"layers", b"at") and len(parts) == 1:
            return _Where(LAYERS_INO if head == b"layers" else AT_INO)
        elif head in (b"layers", b"at"):
            folder = os.fsdecode(head + b"/" + parts[1])
            found = self.by_folder.get(folder)
            if found is None:
                raise _enoent()
            point, rest = found, parts[2:]
        else:
            raise _enoent()
        if not rest:
            return _Where(0, point)
        ino = self._folder(point, rest[:-1])
        child = self.trees.lookup(ino, rest[-1])
        if child is None:
            raise _enoent()
        return _Where(child)

    def _folder(self, point: Point, names: list[bytes]) -> int:
        """The inode of folder ``names`` of a point's tree (the last few remembered:
        the kernel asks about every entry of a folder by its full path)."""
        key = (point.id, b"/".join(names))
        with self._lock:
            ino = self._folders.get(key)
            if ino is not None:
                self._folders.move_to_end(key)
                return ino
        ino = self._root(point)
        for name in names:
            child = self.trees.lookup(ino, name)
            if child is None:
                raise _enoent()
            ino = child
        with self._lock:
            self._folders[key] = ino
            if len(self._folders) > FOLDERS_KEPT:
                self._folders.popitem(last=False)
        return ino

    def _root(self, point: Point) -> int:
        try:
            ino = self.trees.root(point)
        except (BlanketError, ValueError, OSError) as exc:
            with self._lock:
                first = point.id not in self._broken
                self._broken.add(point.id)
            if first:
                self.cache.report(point.folder, f"cannot show it: {exc}")
            raise _eio() from exc
        with self._lock:
            lost = self.trees.lost.pop(point.id, 0)
        if lost:
            self.cache.report(
                point.folder,
                f"{lost} version(s) of this point were removed by gc with an expired "
                "layer: absent, not wrong",
            )
        return ino

    def _head(self, point: Point) -> Entry:
        """The entry of a point's top folder, without replaying the whole tree."""
        with self._lock:
            head = self._heads.get(point.id)
        if head is None:
            found = self.trees.head(point.when)
            head = found or Entry(model.DIR, model.ROOT, mode=0o755, mtime_ns=self.started)
            with self._lock:
                self._heads[point.id] = head
        return head

    # --- attributes -------------------------------------------------------------------

    def _folder_attrs(self, ino: int, mode: int = 0o555) -> dict[str, Any]:
        t = self.started
        return {
            "st_ino": ino,
            "st_mode": stat.S_IFDIR | mode,
            "st_nlink": 2,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_mtime": t,
            "st_atime": t,
            "st_ctime": t,
        }

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        w = self._where(path)
        if w.point is not None:
            return _attrs(self._head(w.point), POINT_INO + w.point.id, 1)
        if w.ino < POINT_INO:
            return self._folder_attrs(w.ino)
        node = self.trees.node(w.ino)
        if node is None:
            raise _enoent()
        return _attrs(node.entry, node.ino, node.nlink)

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.entry.kind != model.SYMLINK:
            raise mfusepy.FuseOSError(errno.EINVAL)
        return os.fsdecode(node.entry.target)

    def _node(self, path: str) -> Node:
        """The node of a path of a point's tree (EINVAL for the mount's own folders)."""
        w = self._where(path)
        node = self.trees.node(w.ino) if w.point is None and w.ino >= POINT_INO else None
        if node is None:
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node

    def _xattrs(self, path: str) -> tuple[tuple[bytes, bytes], ...]:
        """The extended attributes of a path (a point's own folder: from the head of its
        replay, without building its tree; Linux has none on symlinks)."""
        w = self._where(path)
        if w.point is not None:
            return self._head(w.point).xattrs
        node = self.trees.node(w.ino) if w.ino >= POINT_INO else None
        if node is None or node.entry.kind == model.SYMLINK:
            return ()
        return node.entry.xattrs

    def listxattr(self, path: str) -> list[str]:
        return [os.fsdecode(k) for k, _ in self._xattrs(path)]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        key = os.fsencode(name)
        for k, v in self._xattrs(path):
            if k == key:
                return v
        raise mfusepy.FuseOSError(errno.ENODATA)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # --- folders ----------------------------------------------------------------------

    def readdir_with_offset(self, path: str, offset: int, fh: int) -> Iterator[Any]:
        # every entry names its inode: readdir(3) skips entries whose inode is 0
        w = self._where(path)
        own = POINT_INO + w.point.id if w.point is not None else w.ino
        if offset < 1:
            yield ".", {"st_ino": own, "st_mode": stat.S_IFDIR}, 1
        if offset < 2:
            yield "..", {"st_ino": ROOT_INO, "st_mode": stat.S_IFDIR}, 2
        if w.point is None and w.ino < POINT_INO:
            yield from self._virtual(w.ino, offset)
            return
        ino = self._root(w.point) if w.point is not None else w.ino
        after = offset if offset > 2 else 0
        while True:
            rows = self.trees.children(ino, after)
            if not rows:
                return
            for name, row, shown in rows:
                yield os.fsdecode(name), {"st_ino": shown}, row
            after = rows[-1][1]

    def _virtual(self, ino: int, offset: int) -> Iterator[Any]:
        named = self._listings[ino]
        for i in range(max(offset - 2, 0), len(named)):  # entry i has offset i + 3
            name, child = named[i]
            yield name, {"st_ino": child, "st_mode": stat.S_IFDIR}, i + 3

    # --- files ------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        node = self._node(path)
        if node.entry.kind != model.FILE:
            raise mfusepy.FuseOSError(errno.EINVAL)
        try:
            segments = segments_of(self.repos, node.entry, node.origin, node.seq)
        except (Unreadable, BlanketError, ValueError, OSError) as exc:
            raise _eio() from exc
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = segments
            self.opened += 1
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            segments = self._handles.get(fh)
        if segments is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        try:
            return self.cache.read(segments, offset, size)
        except (Unreadable, BlanketError, ValueError, OSError) as exc:
            raise _eio() from exc

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def init(self, path: str) -> None:
        self.on_mounted()


def _children(points: list[Point], prefix: str) -> list[tuple[str, int]]:
    """The names and inodes of the points in folder ``prefix`` of the mount."""
    n = len(prefix)
    return [(p.folder[n:], POINT_INO + p.id) for p in points if p.folder.startswith(prefix)]


def _attrs(e: Entry, ino: int, nlink: int) -> dict[str, Any]:
    uid, gid = owner_of(e)
    size = e.size if e.kind == model.FILE else len(e.target) if e.kind == model.SYMLINK else 0
    stored = sum(n for _, n in e.sparse) if e.sparse else size
    attrs: dict[str, Any] = {
        "st_ino": ino,
        "st_mode": _KIND_BITS.get(e.kind, stat.S_IFREG) | e.mode,
        "st_nlink": nlink,
        "st_uid": uid,
        "st_gid": gid,
        "st_size": size,
        "st_blocks": -(-stored // 512),
        "st_blksize": 4096,
        "st_mtime": e.mtime_ns,
        "st_atime": e.mtime_ns,
        "st_ctime": e.ctime_ns or e.mtime_ns,
    }
    if e.kind in (model.CHARDEV, model.BLOCKDEV):
        attrs["st_rdev"] = os.makedev(e.rdev_major, e.rdev_minor)
    return attrs


def serve(
    repos: list[Repository],
    mountpoint: str,
    workdir: str,
    cache_size: int,
    *,
    report: Callable[[str, str], None],
    on_mounted: Callable[[list[Point]], None],
) -> MountStats:
    """Mount the view of ``repos`` (refreshed; mirrors grouped) at ``mountpoint`` and
    serve it until unmounted or signalled; ``workdir`` (removed afterwards) holds the
    trees and the frame cache."""
    os.makedirs(workdir, exist_ok=True)
    trees = Trees(os.path.join(workdir, "trees.sqlite"), repos)
    cache = FrameCache(repos, workdir, cache_size, report)
    stats = MountStats()
    fs: BlanketFS | None = None
    up: list[bool] = []

    def mounted() -> None:
        up.append(True)
        on_mounted(fs.points if fs is not None else [])

    try:
        fs = BlanketFS(repos, trees, cache, mounted)
        try:
            mfusepy.FUSE(
                fs,
                mountpoint,
                foreground=True,
                ro=True,
                use_ino=True,
                fsname="blanket",
                subtype="blanket",
                kernel_cache=True,
                attr_timeout=60,
                entry_timeout=60,
            )
        except RuntimeError:  # libfuse's loop ends with 8 when a signal stopped it
            if not up:
                raise
    finally:
        stats.bytes_fetched, stats.frames_fetched = cache.fetched, cache.frames_fetched
        stats.files_opened = fs.opened if fs is not None else 0
        stats.points_built = len(trees.built)
        cache.close()
        trees.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return stats
