"""Read only the frames of a pack that a restore needs, not the whole pack.

A pack's index lists the zstd frames of its tar stream (blanket.frames). When the files a
restore wants from a pack sit in a small part of it, this module downloads the pack's head
and the byte ranges that hold those frames, has gpg give the pack's session key, decrypts
just those ranges (blanket.pgprange) and checks each frame's SHA-256 against the signed
index before any byte is used. The pack's own signature covers the whole message and
cannot be checked on a part; the index that pins every frame's hash is signed, and is
checked before this runs. Anything unexpected makes the caller read the whole pack the
usual way, which checks and reports everything.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import tempfile
from collections.abc import Iterable

from blanket import pgprange
from blanket.backends.base import Backend
from blanket.crypto import Gpg
from blanket.errors import IntegrityError
from blanket.indexfmt import IndexHeader
from blanket.model import Entry
from blanket.packread import Meter

__all__ = ["PARTIAL_PREFIX", "PARTIAL_UP_TO", "fetch_frames", "frames_for"]

PARTIAL_PREFIX = "zst-part-"  # the name of a file holding only some frames of a pack
PARTIAL_UP_TO = 0.5  # read frames only while they are at most this share of the pack


def frames_for(
    header: IndexHeader, listed: Iterable[Entry], members: Iterable[bytes]
) -> list[int] | None:
    """The numbers of the frames that hold the members of the paths ``members`` (the
    entries' own paths, or a hard link's target) in the pack of ``header``, whose index
    lists ``listed``; ``None`` when reading them would not save enough to bother."""
    frames = header.frames
    if len(frames) < 2:
        return None
    wanted = set(members)
    firsts = [f.first for f in frames]
    chosen = sorted(
        {bisect.bisect_right(firsts, i) - 1 for i, e in enumerate(listed) if e.path in wanted}
    )
    if not chosen or chosen[0] < 0:
        return None
    if sum(frames[k].size for k in chosen) > PARTIAL_UP_TO * sum(f.size for f in frames):
        return None
    return chosen


def fetch_frames(
    backend: Backend,
    gpg: Gpg,
    header: IndexHeader,
    chosen: list[int],
    workdir: str,
    meter: Meter | None = None,
) -> str:
    """Download and decrypt the frames ``chosen`` of the pack of ``header``; return the
    path of a file holding them back to back (a zstd stream of whole tar members).

    Raises ``pgprange.LayoutError`` when the pack is not laid out as expected,
    ``IntegrityError`` when a frame does not match its hash, or what the store or gpg
    raise; the caller then reads the whole pack.
    """
    key, size = header.data_key, header.data_size
    starts = [0]
    for f in header.frames:
        starts.append(starts[-1] + f.size)
    count = meter or (lambda n: None)
    head = backend.get_range(key, 0, min(size, pgprange.HEAD_BYTES))
    count(len(head))
    session = pgprange.session_key(gpg, head)
    layout = pgprange.layout(head, session, size, starts[-1])
    spans = [(starts[k], starts[k + 1]) for k in chosen]
    fetched = {}
    for offset, length in pgprange.ranges(layout, spans):
        data = backend.get_range(key, offset, length)
        count(len(data))
        if len(data) != length:
            raise IntegrityError(f"{key}: the store gave {len(data)} of {length} bytes")
        fetched[offset] = data
    pieces = pgprange.extract(layout, session, fetched, spans)
    fd, path = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=workdir)
    try:
        with os.fdopen(fd, "wb") as out:
            for k, piece in zip(chosen, pieces, strict=True):
                if hashlib.sha256(piece).hexdigest() != header.frames[k].sha256:
                    raise IntegrityError(f"frame {k} of {key} does not match its index")
                out.write(piece)
    except BaseException:
        os.unlink(path)
        raise
    return path
