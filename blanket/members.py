"""How a pack's members are named: the layout that the writer (``packer``) and every
reader of a pack (``packread``, verify, gc, restore, dump) share. See docs/format.md.

Member names are ``tree`` for the source root and ``tree/<path>`` for everything else;
the parts of a split file live under ``parts/``; the pack's own index is the last
member, ``index.txt``. A member's tar type follows its entry's kind (``TAR_TYPES``).
"""

from __future__ import annotations

import os
import tarfile

from blanket import model, tarheader
from blanket.model import Entry

TREE = "tree"
PARTS = "parts"
INDEX_MEMBER = "index.txt"


def member_name(path: bytes) -> str:
    """The tar member name of an entry path (surrogate-escaped str, as tarfile wants)."""
    return os.fsdecode(member_path(path))


def member_path(path: bytes) -> bytes:
    """The tar member name of an entry path, as bytes."""
    return b"tree" if path == model.ROOT else b"tree/" + path


def part_member_name(path: bytes, offset: int) -> str:
    """The member holding the part at ``offset`` of a split file. Parts live under
    ``parts/``, apart from ``tree/``, so no source file can share a part's name; a
    file's part members in name order concatenate to the file."""
    return os.fsdecode(part_member_path(path, offset))


def part_member_path(path: bytes, offset: int) -> bytes:
    return b"parts/%s/%016d" % (path, offset)


def content_member(e: Entry) -> bytes:
    """The member holding the content of the file or part ``e``: its own (``tree/PATH``,
    ``parts/PATH/OFFSET``) or, for a reference, the one it names in the pack of commit
    ``e.ref_seq`` (:func:`content_seq`)."""
    if e.ref_seq >= 0:
        if e.ref_at >= 0:
            return part_member_path(e.ref_path, e.ref_at)
        return member_path(e.ref_path)
    if e.kind == model.PART:
        return part_member_path(e.path, e.offset)
    return member_path(e.path)


def content_seq(e: Entry, seq: int) -> int:
    """The commit whose pack holds the content of ``e``, recorded by commit ``seq``."""
    return e.ref_seq if e.ref_seq >= 0 else seq


def inner_index(index_text: bytes) -> bytes:
    """The copy of an index that its pack holds: without the lines a pack cannot know
    when it is sealed (its own data object's key, size and hash, and the hash of the
    index before it, which may still be on its way to the store). Applied to a
    committed index, it gives what its pack's ``index.txt`` must equal."""
    head, _, body = index_text.partition(b"\n\n")
    kept = [x for x in head.split(b"\n") if not x.startswith(_NOT_INSIDE)]
    return b"\n".join(kept) + b"\n\n" + body


_NOT_INSIDE = (b"data-", b"prev-index-sha256:", b"frames:")


TAR_TYPES = {
    model.DIR: tarfile.DIRTYPE,
    model.SYMLINK: tarfile.SYMTYPE,
    model.HARDLINK: tarfile.LNKTYPE,
    model.FIFO: tarfile.FIFOTYPE,
    model.CHARDEV: tarfile.CHRTYPE,
    model.BLOCKDEV: tarfile.BLKTYPE,
}


def tar_info(e: Entry, name: str) -> tarfile.TarInfo:
    """A ``tarfile`` header for ``e`` named ``name``: type, mode, owner, mtime to the
    nanosecond (PAX), link target (a symlink's text; a hard link's path as is, to be
    renamed by the caller) and device numbers. (Packs are written with
    :func:`entry_header`, which gives the same bytes faster.)"""
    ti = tarfile.TarInfo(name)
    ti.type = TAR_TYPES.get(e.kind, tarfile.REGTYPE)
    ti.mode = e.mode
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = e.user.decode("utf-8", "surrogateescape")
    ti.gname = e.group.decode("utf-8", "surrogateescape")
    ti.mtime = e.mtime_ns // 1_000_000_000
    fraction = tarheader.pax_mtime(e.mtime_ns)
    if fraction is not None:
        ti.pax_headers = {"mtime": fraction.decode("ascii")}
    if e.kind in (model.SYMLINK, model.HARDLINK):
        ti.linkname = os.fsdecode(e.target)
    ti.devmajor, ti.devminor = e.rdev_major, e.rdev_minor
    return ti
