"""Read a few byte ranges of a pack without downloading and decrypting all of it.

A pack is one OpenPGP message as GnuPG 2.2 writes it: key packets (PKESK, or SKESK in
symmetric mode), then one SEIPD packet: a version byte, then AES in OpenPGP's CFB mode (zero
IV, no resync) over 16 random bytes, 2 repeated ones (the quick check), a one-pass signature
packet (public-key mode), the literal data packet holding the pack's zstd stream, the
signature and the MDC packet. The SEIPD and literal bodies are written in partial chunks:
8192 bytes each, then the rest as descending powers of two (each >= 512) and a final chunk
of under 512 bytes with a normal length.

So once gpg has given the session key (from the first ~8.5 KiB alone: :func:`session_key`),
where literal data byte ``i`` lies in the object is arithmetic, and CFB decrypts from any
16-byte block given the 16 ciphertext bytes before it. :func:`ranges` says which bytes to
fetch for some spans of literal data, :func:`extract` decrypts them. The outer chunk headers
are cleartext: the last chunks' are walked (the object's size alone does not fix them), the
others checked where fetched; the inner ones are checked wherever a span crosses them, and a
span near the end decodes the whole tail and checks the packet after it. Anything else
raises :class:`LayoutError`, and the caller reads the whole pack instead.

Safe only with what the caller does next: these bytes are *not* authenticated (neither MDC
nor signature can be checked on a part), so the caller checks each span's SHA-256 against
the signed index before using it. A damaged or forged byte in a span gives wrong plaintext,
which that check rejects.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import NamedTuple

from blanket.crypto import Gpg
from blanket.errors import CryptoError, WrongKey

HEAD_BYTES = 16 << 10  # key packets + the first full 8 KiB SEIPD chunk, with a margin
GAP = 16 << 10  # fetch ranges closer than this as one
_GPG_CHUNK = 8192  # gpg's chunk size, assumed where a body is too short to show it
_KEY_BYTES = {7: 16, 8: 24, 9: 32}  # AES128, AES192, AES256
_MDC = 22  # the MDC packet: 2 header bytes and a SHA-1
_MAX_SIGNATURE = 8 << 10  # a generous bound on the signature packet's length
_UNSUPPORTED = {8: "compressed data", 9: "encrypted data without MDC", 20: "AEAD (GnuPG 2.4)"}


class LayoutError(ValueError):
    """The message is not laid out as this module understands: read the whole pack."""


@dataclass(frozen=True)
class SessionKey:
    algo: int  # OpenPGP symmetric algorithm id
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if _KEY_BYTES.get(self.algo) != len(self.key):
            raise LayoutError(f"unsupported cipher algorithm {self.algo} (AES only)")


@dataclass(frozen=True)
class Chunked:
    """A packet body of ``total`` bytes as gpg chunks it: ``chunk``-byte partial chunks,
    then the rest as descending powers of two >= 512, then a final chunk under 512 bytes.
    ``start`` is where the first chunk header lies in the enclosing stream."""

    start: int
    total: int
    chunk: int

    def walk(self, x: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
        """(body position, size, header position, header) of the chunks from the one
        holding body byte ``x`` (or shortly before it) to the final one."""
        full, rest = divmod(self.total, self.chunk)
        k = min(x // self.chunk, full)
        tail = [1 << b for b in range(rest.bit_length() - 1, 8, -1) if rest >> b & 1]
        body, at = k * self.chunk, self.start + k * (self.chunk + 1)
        for size in chain(repeat(self.chunk, full - k), tail):
            yield body, size, at, _encode(size, final=False)
            body, at = body + size, at + 1 + size
        yield body, rest & 511, at, _encode(rest & 511, final=True)

    def pos(self, x: int) -> int:
        """Stream position of body byte ``x``."""
        for body, size, at, hdr in self.walk(x):
            if x < body + size:
                return at + len(hdr) + x - body
        raise ValueError(f"byte {x} is past the body's end")

    @property
    def end(self) -> int:
        """Stream position just past the body."""
        *_, (_, size, at, hdr) = self.walk(self.total)
        return at + len(hdr) + size


@dataclass(frozen=True)
class Layout:
    object_size: int
    data_size: int
    outer_start: int  # object offset of the SEIPD packet's first chunk header
    outer_chunk: int
    uniform: int  # SEIPD body bytes before this lie in outer_chunk-sized chunks
    inner: Chunked  # the literal packet's body within the plaintext
    literal_header: int  # literal data byte i is literal body byte literal_header + i
    next_tag: int  # the packet after the literal one: 2 (signature) or 19 (MDC)

    def outer_pos(self, x: int) -> int:
        """Object offset of SEIPD body byte ``x`` (below ``uniform``), or of the chunk
        header at body position ``x`` (at ``uniform``)."""
        k, off = divmod(x, self.outer_chunk)
        return self.outer_start + k * (self.outer_chunk + 1) + (off + 1 if x < self.uniform else 0)


def session_key(gpg: Gpg, head: bytes) -> SessionKey:
    """The session key of the pack whose first bytes are ``head`` (HEAD_BYTES of them,
    or the whole object if shorter), by ``gpg --show-session-key`` on just those."""
    _, body, chunks, _ = _head(head)
    if len(body) < chunks[0][1]:
        raise LayoutError("the head does not hold the first chunk of encrypted data")
    passphrase = gpg.key.passphrase
    cmd = gpg.raw.make_args(["--show-session-key", "--decrypt"], passphrase is not None)
    data = head if passphrase is None else passphrase.encode("utf-8") + b"\n" + head
    try:  # gpg fails on the truncated message once it has shown the key
        proc = subprocess.run(
            cmd, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CryptoError(f"cannot run gpg ({exc}); install GnuPG 2") from exc
    text = proc.stderr.decode("utf-8", "replace")
    status = [ln[9:] for ln in text.splitlines() if ln.startswith("[GNUPG:] ")]
    found = [m for s in status if (m := re.fullmatch(r"SESSION_KEY (\d+):([0-9A-Fa-f]+)", s))]
    if any("BAD_PASSPHRASE" in s for s in status) or "Bad session key" in text:
        raise WrongKey("cannot decrypt the pack: wrong passphrase")
    if not found:
        if any(s.startswith("NO_SECKEY") for s in status):
            raise WrongKey("cannot decrypt the pack: no secret key for it in the keyring")
        messages = [ln[5:] for ln in text.splitlines() if ln.startswith("gpg: ")]
        raise CryptoError(f"gpg gave no session key: {(messages or ['no reason'])[-1]}")
    return SessionKey(int(found[0][1]), bytes.fromhex(found[0][2]))


def layout(head: bytes, key: SessionKey, object_size: int, data_size: int) -> Layout:
    """Where the literal data lies in a pack of ``object_size`` bytes whose literal data
    is ``data_size`` bytes, from its first bytes ``head``."""
    if not 0 < len(head) <= object_size or data_size < 0:
        raise LayoutError("the head is empty or longer than the object, or a bad data size")
    start, body, chunks, total = _head(head)
    if total is None and len(chunks) < 2:
        raise LayoutError("the head does not reach past the first chunk of encrypted data")
    chunk = chunks[0][1] if not chunks[0][2] else _GPG_CHUNK
    rest = object_size - start  # the SEIPD body and its chunk headers
    lo, hi = max(0, (rest - 40) * chunk // (chunk + 1)), rest * chunk // (chunk + 1) + 1
    totals = [b for b in range(lo, hi) if Chunked(start, b, chunk).end == object_size]
    if total is not None:
        totals = [total] if total in totals else []
    if not totals:
        raise LayoutError("the object's size does not fit gpg's chunking")
    uniform = max(0, (min(totals) // chunk - 1) * chunk)  # a chunk's margin before the tail
    if any(at < uniform and (final or size != chunk) for at, size, final in chunks):
        raise LayoutError("the encrypted data's chunks are not uniform")
    if body[:1] != b"\x01":
        raise LayoutError("unknown version of the encrypted data packet")
    pt = _decrypt(key, bytes(16), body[1:])
    if len(pt) < 20 or pt[14:16] != pt[16:18]:
        raise LayoutError("quick check failed: wrong session key or a damaged pack")
    pos = 18
    tag, at, n, final = _header(pt, pos)
    signed = tag == 4  # a one-pass signature packet first
    if signed:
        if not final:
            raise LayoutError("a chunked one-pass signature packet")
        pos = at + n
        tag, at, n, final = _header(pt, pos)
    if tag != 11 or not pt[pos] & 0x40:
        raise LayoutError(f"{_what(tag)} where literal data was expected")
    if len(pt) < at + 2 or pt[at] not in b"bmtu":
        raise LayoutError("not a literal data header")
    header = 6 + pt[at + 1]  # format, name length, name, date
    inner = Chunked(pos + 1, header + data_size, _GPG_CHUNK if final else n)
    for _, _, hat, hdr in inner.walk():
        if hat >= len(pt):
            break
        if pt[hat : hat + len(hdr)] != hdr:
            raise LayoutError("the literal data is not chunked as expected (wrong data size?)")
    after = [b - 1 - inner.end for b in totals]  # plaintext after the literal packet
    if not any(k == _MDC or (signed and _MDC < k <= _MDC + _MAX_SIGNATURE) for k in after):
        raise LayoutError("the literal data's size does not fit the object's")
    return Layout(object_size, data_size, start, chunk, uniform, inner, header, 2 if signed else 19)


class _Plan(NamedTuple):
    q0: int  # literal body range [q0, q1) to decode: the span, or from the tail to the end
    q1: int
    a: int  # plaintext range [a, p1) to decrypt; a is a block boundary
    p1: int
    o0: int  # object range [o0, o1) to fetch
    o1: int


def _plan(lay: Layout, start: int, end: int) -> _Plan:
    if not 0 <= start < end <= lay.data_size:
        raise ValueError(f"bad span {start}..{end} of {lay.data_size} bytes")
    inner = lay.inner
    q0, q1 = lay.literal_header + start, lay.literal_header + end
    tail = (inner.total - 1) // inner.chunk * inner.chunk  # the last full chunk, or after it
    if q1 > tail:  # decode the whole tail and the tag after it: that checks it
        q0, q1, p1 = min(q0, tail), inner.total, inner.end + 1
    else:
        p1 = inner.pos(q1 - 1) + 1
    a = inner.pos(q0) // 16 * 16
    b0, b1 = max(0, a - 16) + 1, p1 + 1  # SEIPD body: the version byte, then ciphertext
    if b1 <= lay.uniform:
        return _Plan(q0, q1, a, p1, lay.outer_pos(b0), lay.outer_pos(b1 - 1) + 1)
    return _Plan(q0, q1, a, p1, lay.outer_pos(min(b0, lay.uniform)), lay.object_size)


def ranges(lay: Layout, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The object ranges ``(offset, length)`` to fetch for the literal data ``spans``
    (``(start, end)`` byte offsets, end exclusive)."""
    merged: list[list[int]] = []
    plans = [_plan(lay, s, e) for s, e in spans if s != e]
    for o0, o1 in sorted((p.o0, p.o1) for p in plans):
        if merged and o0 - merged[-1][1] < GAP:
            merged[-1][1] = max(merged[-1][1], o1)
        else:
            merged.append([o0, o1])
    return [(o0, o1 - o0) for o0, o1 in merged]


def extract(
    lay: Layout,
    key: SessionKey,
    fetched: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
    spans: Iterable[tuple[int, int]],
) -> list[bytes]:
    """The literal data of each span, from the fetched object ranges (offset -> bytes)."""
    reader = _Fetched(fetched.items() if isinstance(fetched, Mapping) else fetched)
    out = []
    for s, e in spans:
        if s == e:
            out.append(b"")
            continue
        plan = _plan(lay, s, e)
        c0 = max(0, plan.a - 16)
        ct = _ciphertext(lay, reader, c0 + 1, plan.p1 + 1)
        iv = ct[:16] if plan.a else bytes(16)
        pt = _decrypt(key, iv, ct[plan.a - c0 :])
        data = _unchunk(lay.inner, pt, plan.a, plan.q0, plan.q1)
        if plan.q1 == lay.inner.total and _tag(pt[-1]) != lay.next_tag:
            raise LayoutError("the literal data does not end where expected")
        out.append(data[lay.literal_header + s - plan.q0 : lay.literal_header + e - plan.q0])
    return out


class _Fetched:
    def __init__(self, pieces: Iterable[tuple[int, bytes]]) -> None:
        self._pieces = [(off, bytes(data)) for off, data in pieces]

    def get(self, offset: int, n: int) -> bytes:
        for start, data in self._pieces:
            if start <= offset and offset + n <= start + len(data):
                return data[offset - start : offset - start + n]
        raise LayoutError(f"object bytes {offset}..{offset + n} were not fetched")


def _ciphertext(lay: Layout, reader: _Fetched, b0: int, b1: int) -> bytes:
    """SEIPD body bytes [b0, b1) from the fetched object bytes."""
    parts, x, size = [], b0, lay.outer_chunk
    while x < min(b1, lay.uniform):  # uniform chunks: where each lies is arithmetic
        if x % size == 0 and x > b0 and reader.get(lay.outer_pos(x) - 1, 1) != _encode(size):
            raise LayoutError("an encrypted data chunk header is not where expected")
        n = min(size - x % size, b1 - x)
        parts.append(reader.get(lay.outer_pos(x), n))
        x += n
    if x < b1:  # the tail: walk its cleartext chunk headers to the object's end
        body, at, final = lay.uniform, lay.outer_pos(lay.uniform), False
        while not final:
            n, hlen, final = _length(reader.get(at, min(5, lay.object_size - at)), 0)
            if not final and not 512 <= n <= size:
                raise LayoutError("an unexpected encrypted data chunk size")
            lo, hi = max(x, body), min(b1, body + n)
            if lo < hi:
                parts.append(reader.get(at + hlen + lo - body, hi - lo))
            body, at = body + n, at + hlen + n
        if body < b1 or at != lay.object_size:
            raise LayoutError("the encrypted data does not end at the object's end")
    return b"".join(parts)


def _unchunk(inner: Chunked, pt: bytes, a: int, q0: int, q1: int) -> bytes:
    """Literal body bytes [q0, q1) from the plaintext ``pt`` that starts at ``a``;
    every chunk header inside ``pt`` must be the one gpg writes there."""
    parts = []
    for body, size, at, hdr in inner.walk(q0):
        if at >= a + len(pt):
            break
        if at >= a and pt[at - a : at - a + len(hdr)] != hdr:
            raise LayoutError("a literal data chunk header is not where expected")
        lo, hi = max(q0, body), min(q1, body + size)
        if lo < hi:
            parts.append(pt[at + len(hdr) + lo - body - a : at + len(hdr) + hi - body - a])
    data = b"".join(parts)
    if len(data) != q1 - q0:
        raise LayoutError("the decrypted bytes do not hold the span")
    return data


def _decrypt(key: SessionKey, iv: bytes, data: bytes) -> bytes:
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    except ImportError as exc:
        raise LayoutError("the cryptography package is not installed") from exc
    try:
        from cryptography.hazmat.decrepit.ciphers.modes import CFB
    except ImportError:  # cryptography < 43, where CFB is not deprecated yet
        from cryptography.hazmat.primitives.ciphers.modes import CFB
    decryptor = Cipher(algorithms.AES(key.key), CFB(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _head(head: bytes) -> tuple[int, bytes, list[tuple[int, int, bool]], int | None]:
    """Where the SEIPD packet's first chunk header lies (after the key packets), its body
    bytes in the head, its chunks there (body position, size, final) and, if the head
    shows the final chunk, the body's length."""
    at = keys = 0
    while not (keys and at < len(head) and _tag(head[at]) == 18 and head[at] & 0x40):
        tag, body, n, final = _header(head, at)
        if tag not in (1, 3) or not final:
            raise LayoutError(f"{_what(tag)} where encrypted data was expected")
        at, keys = body + n, keys + 1
    start = at = at + 1
    parts, chunks, body = [], [], 0
    while at < len(head):
        try:
            n, hlen, final = _length(head, at)
        except LayoutError:  # the head ends inside a chunk header
            break
        if not final and n < 512:
            raise LayoutError("a partial chunk under 512 bytes")
        chunks.append((body, n, final))
        parts.append(head[at + hlen : at + hlen + n])
        body, at = body + n, at + hlen + n
        if final:
            return start, b"".join(parts), chunks, body
    if not chunks:
        raise LayoutError("the head ends before the encrypted data")
    return start, b"".join(parts), chunks, None


def _what(tag: int) -> str:
    return f"packet tag {tag} ({_UNSUPPORTED.get(tag, 'unexpected here')})"


def _tag(ctb: int) -> int:
    if not ctb & 0x80:
        return -1
    return ctb & 0x3F if ctb & 0x40 else (ctb >> 2) & 0xF


def _header(buf: bytes, pos: int) -> tuple[int, int, int, bool]:
    """(tag, body position, length of the first chunk, whether it is the only one)."""
    if pos >= len(buf) or _tag(buf[pos]) < 0:
        raise LayoutError("not an OpenPGP packet header (truncated or damaged)")
    if buf[pos] & 0x40:
        n, hlen, final = _length(buf, pos + 1)
        return buf[pos] & 0x3F, pos + 1 + hlen, n, final
    if buf[pos] & 3 == 3 or len(buf) < pos + 1 + (1 << (buf[pos] & 3)):
        raise LayoutError(f"{_what(_tag(buf[pos]))} of indeterminate length, or truncated")
    hlen = 1 << (buf[pos] & 3)
    return _tag(buf[pos]), pos + 1 + hlen, int.from_bytes(buf[pos + 1 : pos + 1 + hlen]), True


def _length(buf: bytes, pos: int) -> tuple[int, int, bool]:
    """A new-format length at ``pos``: (length, header size, final)."""
    c = buf[pos] if pos < len(buf) else -1
    if 0 <= c < 192:
        return c, 1, True
    if 224 <= c < 255:
        return 1 << (c & 0x1F), 1, False
    hlen = 2 if 192 <= c < 224 else 5
    if len(buf) < pos + hlen:
        raise LayoutError("a truncated length header")
    if hlen == 2:
        return ((c - 192) << 8) + buf[pos + 1] + 192, 2, True
    return int.from_bytes(buf[pos + 1 : pos + 5]), 5, True


def _encode(size: int, final: bool = False) -> bytes:
    """The chunk header gpg writes for a chunk of ``size`` bytes."""
    if not final:
        return bytes([0xE0 | (size.bit_length() - 1)])
    if size < 192:
        return bytes([size])
    return bytes([192 + ((size - 192) >> 8), (size - 192) & 0xFF])
