"""POSIX (PAX) tar headers built straight from bytes, for the pack writer's hot path.

The output is byte for byte what Python's ``tarfile`` writes in ``PAX_FORMAT`` with
``encoding="utf-8", errors="surrogateescape"`` for the same member (the tests compare
the two on random members), at a fraction of the cost: no ``TarInfo`` object, no
round trip of names through ``str``. A member gets an extended (``x``) header before
its ustar header when it needs one: a nanosecond mtime, a name or link over 100 bytes
or not ASCII, an owner name over 32 bytes or not ASCII, a number too large for its
field, or extra records (GNU sparse).
"""

from __future__ import annotations

import functools
import struct

BLOCK = 512
_MAGIC = b"ustar\x0000"
_CHK_SPACES = b"        "
_PAX_NAME = b"././@PaxHeader"
_PAD = bytes(BLOCK)  # _PAD[n:] pads n < BLOCK bytes to a block
_MAX8, _MAX12 = 8**7, 8**11  # the numbers an 8- and a 12-byte octal field can hold
_MAX12_NS = _MAX12 * 1_000_000_000
DEVICE_TYPES = (b"3", b"4")


def pax_mtime(mtime_ns: int) -> bytes | None:
    """The PAX ``mtime`` value of a time with a fraction of a second (``None`` if whole):
    seconds, a dot and nine digits, with the sign in front for times before 1970."""
    secs, ns = divmod(abs(mtime_ns), 1_000_000_000)
    if not ns:
        return None
    return b"%s%d.%09d" % (b"-" if mtime_ns < 0 else b"", secs, ns)


def _ascii(value: bytes) -> bytes:
    """A name as ustar's field shows it when it is not ASCII (PAX holds the real one)."""
    return value.decode("utf-8", "surrogateescape").encode("ascii", "replace")


def _record(keyword: bytes, value: bytes) -> bytes:
    body = len(keyword) + len(value) + 3
    n = p = 0
    while True:
        n = body + len(str(p))
        if n == p:
            break
        p = n
    return b"%d %s=%s\n" % (p, keyword, value)


# name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix, then padding to the block; "s" fields are cut or NUL-filled
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


def _ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    if typeflag in DEVICE_TYPES:
        major, minor = b"%07o\x00" % devmajor, b"%07o\x00" % devminor
    else:
        major = minor = b""
    buf = _USTAR.pack(
        name,
        b"%07o\x00" % (mode & 0o7777),
        b"%07o\x00" % uid,
        b"%07o\x00" % gid,
        b"%011o\x00" % size,
        b"%011o\x00" % mtime,
        _CHK_SPACES,
        typeflag,
        linkname,
        _MAGIC,
        uname,
        gname,
        major,
        minor,
        b"",
    )
    return b"%s%06o\x00%s" % (buf[:148], sum(buf), buf[155:])


@functools.lru_cache(maxsize=256)
def _extended(length: int) -> bytes:
    """The ustar block that announces an extended header of ``length`` bytes."""
    return _ustar(_PAX_NAME, b"x", 0, 0, 0, length, 0, b"", b"", b"", 0, 0)


def header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime_ns: int = 0,
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """The header blocks of one member: an extended header if needed, then ustar.
    ``extra`` records come right after the ``mtime`` record, in order."""
    if typeflag == b"5" and not name.endswith(b"/"):
        name += b"/"
    if (
        not extra
        and len(name) <= 100
        and len(linkname) <= 100
        and len(uname) <= 32
        and len(gname) <= 32
        and 0 <= uid < _MAX8
        and 0 <= gid < _MAX8
        and 0 <= size < _MAX12
        and 0 <= mtime_ns < _MAX12_NS
        and (name + linkname + uname + gname).isascii()
    ):  # the usual member: at most an mtime record (what the general path gives)
        secs, ns = divmod(mtime_ns, 1_000_000_000)
        ustar = _ustar(
            name, typeflag, mode, uid, gid, size, secs, linkname, uname, gname, devmajor, devminor
        )
        if not ns:
            return ustar
        payload = _record(b"mtime", b"%d.%09d" % (secs, ns))
        return b"".join((_extended(len(payload)), payload, _PAD[len(payload) :], ustar))
    records: dict[bytes, bytes] = {}
    fraction = pax_mtime(mtime_ns)
    if fraction is not None:
        records[b"mtime"] = fraction
    records.update(extra)
    texts = []
    for key, value, limit in (
        (b"path", name, 100),
        (b"linkpath", linkname, 100),
        (b"uname", uname, 32),
        (b"gname", gname, 32),
    ):
        if key not in records and (not value.isascii() or len(value) > limit):
            records[key] = value
            value = _ascii(value)
        texts.append(value)
    numbers = []
    mtime = mtime_ns // 1_000_000_000
    for key, n, digits in (
        (b"uid", uid, 8),
        (b"gid", gid, 8),
        (b"size", size, 12),
        (b"mtime", mtime, 12),
    ):
        if not 0 <= n < 8 ** (digits - 1):
            records.setdefault(key, b"%d" % n)
            n = 0
        numbers.append(n)
    ustar = _ustar(
        texts[0], typeflag, mode, numbers[0], numbers[1], numbers[2], numbers[3],
        texts[1], texts[2], texts[3], devmajor, devminor,
    )  # fmt: skip
    if not records:
        return ustar
    payload = b"".join(_record(k, v) for k, v in records.items())
    if not all(_utf8(v) for v in records.values()):
        payload = b"21 hdrcharset=BINARY\n" + payload
    pad = bytes(-len(payload) % BLOCK)
    return b"".join((_extended(len(payload)), payload, pad, ustar))


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
