"""Decrypt a whole pack in this process with its session key: no gpg run per pack.

A restore trusts a pack once its SHA-256 matches the ``data-sha256`` of its signed index
(docs/DESIGN invariant 6, docs/decisions.md "Restore decrypts packs itself"). So
:func:`fetch_sealed` copies the data object into a private file of the restore's work
folder (a download, or a copy of a local store's file: never read in place, where it could
change after it was hashed), hashing every byte in the same pass, and compares size and
hash with the index *before anything else*. Only then does it ask gpg for the session key
(``gpg --show-session-key`` on the first 16 KiB of that same private copy, as
``blanket.pgprange`` does) and check the message's first packets: the key packets, the
encrypted data packet, the quick check, a one-pass signature, the literal data packet. The
result, a :class:`Sealed`, names the private copy and its key; whoever reads it (a restore
worker process) decrypts it with OpenSSL's AES-CFB as it goes (:func:`open_source`), and
never sees a byte the hash did not cover.

gpg's own checks of the pack (its MDC and the inner signature) are not run again: the
hash against the signed index is stronger than either and was checked first. They stay in
the pack for recovery by hand and for ``verify --deep``. Anything this module does not
expect (compressed or AEAD packets, another cipher, no session key from gpg) makes
:func:`fetch_sealed` decrypt that private copy with gpg instead, with every check gpg
makes, and return the plaintext's path (as ``blanket.packread.fetch_plaintext`` does).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from blanket.backends.base import Backend, download_to
from blanket.crypto import Gpg
from blanket.errors import (
    BlanketError,
    CryptoError,
    IntegrityError,
    NotFound,
    StoreError,
    WrongKey,
)
from blanket.indexfmt import IndexHeader
from blanket.pgprange import HEAD_BYTES, LayoutError, SessionKey, _header, _length, _what
from blanket.pgprange import session_key as _session_key

__all__ = [
    "InStore",
    "Readable",
    "Sealed",
    "Source",
    "fetch_sealed",
    "fetch_sealed_from_any",
    "load",
    "open_source",
    "remove",
]

BLOCK = 1 << 20  # bytes read, hashed, decrypted at a time
IN_MEMORY = 64 << 20  # a local store's packs up to this size are read whole by the reader
_GPG_HEADER, _GPG_STEP = 0xED, 1 + 8192  # the header of gpg's 8 KiB partial chunk, and its step
_MDC_PACKET = b"\xd3\x14"  # new-format tag 19, 20 bytes: the SHA-1 of the modification check


@dataclass(frozen=True)
class Sealed:
    """A pack's data object whose size and SHA-256 matched its signed index, in a private
    file (``path``) or in memory (``data``), with the session key that decrypts it."""

    path: str
    key: SessionKey
    what: str  # the object's name, for messages
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class InStore:
    """A pack on a local store (the ``store``-th of the repository's), not read yet: the
    process that decrypts it reads it whole into memory, hashing it (:func:`load`), and
    checks it there, so what it decrypts is what was hashed. ``head`` is the SHA-256 of
    the first bytes that gave the session key ``key``."""

    store: int
    what: str
    size: int
    sha256: str
    key: SessionKey
    head: str


Readable = str | Sealed  # the path of a pack's verified zstd stream, or a sealed pack
Source = Readable | InStore  # or one still to be read
Meter = Callable[[int], None]  # told how many bytes were read from a store


def fetch_sealed_from_any(
    backends: list[Backend],
    gpg: Gpg,
    header: IndexHeader,
    workdir: str,
    meter: Meter | None = None,
    *,
    in_place: bool = False,
) -> Source:
    """The pack of ``header`` from the first store whose copy matches its index (a mesh
    of mirrors); raises ``IntegrityError`` naming each store's trouble if none does.
    ``in_place``: a local store's pack of the right size is left where it is, for the
    reader to :func:`load` (which checks its hash)."""
    reasons = []
    for i, backend in enumerate(backends):
        try:
            if in_place and header.data_size <= IN_MEMORY:
                found = _in_store(backend, i, gpg, header, meter)
                if found is not None:
                    return found
            return fetch_sealed(backend, gpg, header, workdir, meter)
        except (NotFound, IntegrityError, StoreError) as exc:
            reasons.append(f"{backend.describe()}: {exc}")
    raise IntegrityError(f"no intact copy of {header.data_key} ({'; '.join(reasons)})")


def _in_store(
    backend: Backend, i: int, gpg: Gpg, header: IndexHeader, meter: Meter | None
) -> InStore | None:
    """The pack of ``header`` on a local store, its session key had from its head; None
    where the store is not local or the pack is not laid out as this module reads."""
    local = backend.open_local(header.data_key)
    if local is None:
        return None
    with local:
        size = os.fstat(local.fileno()).st_size
        head = local.read(HEAD_BYTES)
    if size != header.data_size:
        raise IntegrityError(
            f"{header.data_key} does not match its index (size {size}, expected "
            f"{header.data_size}; damaged, truncated or swapped)"
        )
    try:
        key = _session_key(gpg, head)
        with _Reader(io.BytesIO(head), key, header.data_key) as reader:
            reader.start()
    except (LayoutError, CryptoError, WrongKey):
        return None  # copied and read the long way, which says more
    if meter is not None:
        meter(size)  # read by the reader, in one go
    digest = hashlib.sha256(head).hexdigest()
    return InStore(i, header.data_key, size, header.data_sha256, key, digest)


def load(backend: Backend, pack: InStore) -> Sealed:
    """Read the pack ``pack`` names from ``backend`` into memory, hashing it, and check it
    against its index (and its head against the one that gave its key). Raises
    ``IntegrityError`` when it does not match (the caller reads it the long way)."""
    local = backend.open_local(pack.what)
    if local is None:
        raise IntegrityError(f"{pack.what} is no longer on a local store")
    with local:
        data = local.read(pack.size + 1)
    if (
        len(data) != pack.size
        or hashlib.sha256(data).hexdigest() != pack.sha256
        or hashlib.sha256(data[:HEAD_BYTES]).hexdigest() != pack.head
    ):
        raise IntegrityError(
            f"{pack.what} does not match its index (size {len(data)}, expected "
            f"{pack.size}; damaged, truncated or swapped)"
        )
    return Sealed("", pack.key, pack.what, data)


def fetch_sealed(
    backend: Backend, gpg: Gpg, header: IndexHeader, workdir: str, meter: Meter | None = None
) -> Source:
    """Copy the pack of ``header`` into ``workdir``, hashing it; check it against the index;
    return it sealed with its session key, or (where this module cannot read it) the path
    of its plaintext as gpg decrypted and checked it.

    Raises ``IntegrityError`` when size or hash are wrong, ``NotFound`` when it is missing,
    ``WrongKey`` when the keyring cannot open it; nothing is left in ``workdir`` then.
    """
    key = header.data_key
    fd, path = tempfile.mkstemp(prefix="enc-", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as out:
            size, digest = _copy(backend, key, out, meter)
        if size != header.data_size or digest != header.data_sha256:
            raise IntegrityError(
                f"{key} does not match its index (size {size}, expected "
                f"{header.data_size}; damaged, truncated or swapped)"
            )
        try:
            return Sealed(path, _seal(gpg, path), key)
        except (LayoutError, CryptoError, WrongKey):  # gpg reads it, and says what is wrong
            plain = path.replace("enc-", "zst-", 1)
            gpg.decrypt_to_file(path, plain, key)
            os.unlink(path)
            return plain
    except BaseException:
        remove(path)
        raise


def _copy(backend: Backend, key: str, out: BinaryIO, meter: Meter | None) -> tuple[int, str]:
    """Copy the object ``key`` into ``out``; return its size and SHA-256 (hex)."""
    sink = _Hashing(out)
    try:
        local = backend.open_local(key)
        if local is None:
            download_to(backend, key, sink)  # type: ignore[arg-type]
        else:
            with local:
                while block := local.read(BLOCK):
                    sink.write(block)
    finally:
        if meter is not None:
            meter(sink.size)
    return sink.size, sink.digest.hexdigest()


class _Hashing:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)


def _seal(gpg: Gpg, path: str) -> SessionKey:
    """The session key of the checked pack at ``path``, once its first packets are found
    to be what this module reads (else ``LayoutError``)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    key = _session_key(gpg, head)
    with _Reader(open(path, "rb", buffering=0), key, path) as reader:  # noqa: SIM115
        reader.start()
    return key


def open_source(source: Readable) -> BinaryIO:
    """A pack's zstd stream, to read from its start: a plaintext file, or a sealed pack
    decrypted as it is read (trouble there raises ``IntegrityError``)."""
    if isinstance(source, Sealed):
        if source.data is not None:
            return _Reader(io.BytesIO(source.data), source.key, source.what)  # type: ignore[return-value]
        raw = open(source.path, "rb", buffering=0)  # noqa: SIM115
        return _Reader(raw, source.key, source.what)  # type: ignore[return-value]
    return open(source, "rb", buffering=0)


def remove(source: Source) -> None:
    """Remove what a pack's source left in the work folder (if anything)."""
    if isinstance(source, InStore) or (isinstance(source, Sealed) and not source.path):
        return
    try:
        os.unlink(source.path if isinstance(source, Sealed) else source)
    except FileNotFoundError:
        pass


class _Reader:
    """The literal data of a sealed pack, decrypted as it is read (``read(n)``)."""

    def __init__(self, raw: BinaryIO, key: SessionKey, what: str) -> None:
        self.what = what
        self._file = raw
        self._data = self._literal(key)
        self._buf, self._pos = b"", 0

    def read(self, n: int = -1) -> bytes:
        try:
            while self._pos == len(self._buf):
                nxt = next(self._data, None)
                if nxt is None:
                    return b""
                self._buf, self._pos = nxt, 0
        except LayoutError as exc:
            raise IntegrityError(f"{self.what} is not laid out as expected: {exc}") from None
        end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
        piece = self._buf[self._pos : end]
        self._pos = end
        return piece

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._data.close()
        self._file.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Parse the packets up to the literal data (``LayoutError`` if unexpected)."""
        self._buf, self._pos = next(self._data, b""), 0

    def _blocks(self) -> Iterator[bytes]:
        while block := self._file.read(BLOCK):
            yield block

    def _literal(self, key: SessionKey) -> Generator[bytes, None, None]:
        """Walk the message: key packets, the encrypted data packet, and in its plaintext
        the packets around the literal data; yield the literal data in blocks."""
        outer = self._blocks()
        buf = b""
        while True:  # the key packets (PKESK, SKESK), then the SEIPD packet
            buf = _fill(buf, outer, 6)
            tag, at, n, final = _header(buf, 0)
            if tag == 18:
                break
            if tag not in (1, 3) or not final:
                raise LayoutError(f"{_what(tag)} where encrypted data was expected")
            buf = _skip(buf[at:], outer, n)
        if not buf[0] & 0x40:
            raise LayoutError("an old-format encrypted data packet")
        plain = _decrypting(_body(outer, buf[1:]), key)
        buf = _fill(b"", plain, 20)
        if len(buf) < 20 or buf[14:16] != buf[16:18]:
            raise LayoutError("quick check failed: wrong session key or a damaged pack")
        buf = _fill(buf[18:], plain, 6)
        tag, at, n, final = _header(buf, 0)
        if tag == 4:  # the one-pass signature
            if not final:
                raise LayoutError("a chunked one-pass signature packet")
            buf = _fill(_skip(buf[at:], plain, n), plain, 6)
            tag, at, n, final = _header(buf, 0)
        if tag != 11 or not buf[0] & 0x40:
            raise LayoutError(f"{_what(tag)} where literal data was expected")
        literal = _body(plain, buf[1:])
        head, rest = b"", None
        while len(head) < 2 or len(head) < 6 + head[1]:  # format, name length, name, date
            try:
                head += next(literal)
            except StopIteration as stop:
                rest = stop.value
                break
        if len(head) < 2 or head[0] not in b"bmtu" or len(head) < 6 + head[1]:
            raise LayoutError("not a literal data header")
        if len(head) > 6 + head[1]:
            yield head[6 + head[1] :]
        if rest is None:
            rest = yield from literal
        _check_tail(rest, plain)
        if next(outer, None) is not None:
            raise LayoutError("bytes after the encrypted data")


def _fill(buf: bytes, blocks: Iterator[bytes], n: int) -> bytes:
    """``buf`` with blocks appended until it holds at least ``n`` bytes (or the end)."""
    while len(buf) < n:
        nxt = next(blocks, None)
        if nxt is None:
            break
        buf += nxt
    return buf


def _skip(buf: bytes, blocks: Iterator[bytes], n: int) -> bytes:
    """What follows the first ``n`` bytes of ``buf`` and then ``blocks``."""
    buf = _fill(buf, blocks, n)
    if len(buf) < n:
        raise LayoutError("a truncated packet")
    return buf[n:]


def _drain(blocks: Generator[bytes, None, bytes]) -> tuple[bytes, bytes]:
    """Everything left in ``blocks``, and what the generator returned."""
    parts = []
    while True:
        try:
            parts.append(next(blocks))
        except StopIteration as stop:
            after: bytes = stop.value
            return b"".join(parts), after


def _body(blocks: Iterator[bytes], buf: bytes) -> Generator[bytes, None, bytes]:
    """The body of a packet whose length header starts ``buf``, the stream going on in
    ``blocks``: yielded in pieces (a block's worth at a time), partial-length chunk
    headers removed; returns what follows the body in the last block read."""
    pos, parts, view = 0, list[memoryview](), memoryview(buf)
    while True:
        end = len(buf)
        while pos + _GPG_STEP <= end and buf[pos] == _GPG_HEADER:  # gpg's usual chunks
            parts.append(view[pos + 1 : pos + _GPG_STEP])
            pos += _GPG_STEP
        if end - pos < 5:  # a length header is at most 5 bytes
            buf, pos = _fill(buf[pos:], blocks, 5), 0
            view = memoryview(buf)
        n, hlen, final = _length(buf, pos)
        pos += hlen
        while n:
            if pos == len(buf):
                if parts:
                    yield b"".join(parts)
                    parts = []
                nxt = next(blocks, None)
                if nxt is None:
                    raise LayoutError("the packet ends early (truncated)")
                buf, pos, view = nxt, 0, memoryview(nxt)
            k = min(n, len(buf) - pos)
            parts.append(view[pos : pos + k])
            pos, n = pos + k, n - k
        if final:
            if parts:
                yield b"".join(parts)
            return buf[pos:]


def _decrypting(
    ciphertext: Generator[bytes, None, bytes], key: SessionKey
) -> Generator[bytes, None, bytes]:
    """The plaintext of an SEIPD body: its version byte, then OpenPGP's CFB (zero IV, no
    resync) over the rest. Returns what followed the body."""
    decryptor = _cfb(key)
    first = True
    while True:
        try:
            block = next(ciphertext)
        except StopIteration as stop:
            after: bytes = stop.value
            return after
        if first:
            if block[:1] != b"\x01":
                raise LayoutError("unknown version of the encrypted data packet")
            block, first = block[1:], False
        if block:
            yield decryptor.update(block)


def _check_tail(buf: bytes, plain: Generator[bytes, None, bytes]) -> None:
    """What follows the literal data: the signature (public-key mode) and the MDC packet,
    ending the plaintext, which ends the encrypted data packet."""
    more, after = _drain(plain)
    buf += more
    if after:
        raise LayoutError("bytes after the encrypted data")
    tag, at, n, final = _header(buf, 0)
    if tag == 2:
        if not final:
            raise LayoutError("a chunked signature packet")
        buf = buf[at + n :]
    if buf[:2] != _MDC_PACKET or len(buf) != 22:
        raise LayoutError("the literal data is not followed by a signature and the MDC")


def _cfb(key: SessionKey) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    except ImportError as exc:
        raise LayoutError("the cryptography package is not installed") from exc
    try:
        from cryptography.hazmat.decrepit.ciphers.modes import CFB
    except ImportError:  # cryptography < 43, where CFB is not deprecated yet
        from cryptography.hazmat.primitives.ciphers.modes import CFB
    return Cipher(algorithms.AES(key.key), CFB(bytes(16))).decryptor()


def preload() -> None:
    """Import the cipher now (before worker processes are forked, so each need not)."""
    try:
        _cfb(SessionKey(9, bytes(32)))
    except (LayoutError, BlanketError):
        pass
