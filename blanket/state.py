"""The client's local state for one repository: a cache, never the only copy of anything.

Kept under ``$BLANKET_STATE_DIR`` (default ``$XDG_STATE_HOME/blanket``, i.e.
``~/.local/state/blanket``), one folder per repository id:

* ``state.json``: the newest commit this machine saw (``last_seq``, ``last_index_sha256``,
  to refuse a store that rolled back) and the scan position of the current pass;
* ``index/NNNNNNNNNNNN``: verified plaintext indexes, so replay never downloads them twice;
* ``index/NNNNNNNNNNNN.entries``: the same entries in a compact binary form (chunks of
  msgpack-ed field tuples, a format that no Python version changes) that replay reads
  instead of parsing the text; it starts with a format line, names the SHA-256 of the
  text it was made from and of its own body, and is used only when all three match
  (else it is made again from the text: a companion in another format, such as the
  ``marshal`` of earlier versions, is rebuilt, never misread);
* ``spool/``: packs being built.

Every file is replaced atomically (temp file, fsync, rename). If the folder is lost it is
rebuilt from the store's indexes alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack

from blanket import indexfmt
from blanket.model import HARDLINK, Entry, check_relpath

COMPACT_SUFFIX = ".entries"
_COMPACT_MAGIC = b"blanket-entries 2 msgpack\n"  # 1 was marshal: rebuilt when met
_CHUNK = 1024  # entries per record: the memory a reader holds decoded
_LEN = struct.Struct("<I")


def state_root() -> Path:
    explicit = os.environ.get("BLANKET_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(xdg) / "blanket"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class Progress:
    """What ``state.json`` records."""

    last_seq: int = -1
    last_index_sha256: str = ""
    scan_layer: int = -1  # the layer whose pass ``scan_pointer`` belongs to
    scan_pointer: str = ""  # escaped path the pass has scanned up to ("" = none)
    verify_cursor: int = 0  # where the next sampled deep verify starts (commit number)


class LocalState:
    """The state folder of one repository."""

    def __init__(self, repository_id: str, root: Path | None = None) -> None:
        self.dir = (root or state_root()) / repository_id
        self.index_dir = self.dir / "index"
        self.spool_dir = self.dir / "spool"
        for d in (self.index_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)

    def load(self) -> Progress:
        try:
            raw = json.loads((self.dir / "state.json").read_text())
            return Progress(**{k: raw[k] for k in asdict(Progress()) if k in raw})
        except (FileNotFoundError, ValueError, TypeError):
            return Progress()

    def save(self, progress: Progress) -> None:
        atomic_write(self.dir / "state.json", json.dumps(asdict(progress)).encode())

    def save_links(self, layer: int, links: dict[tuple[int, int], str]) -> None:
        """The hard-link groups met so far in this layer's pass ((dev, ino) -> escaped
        first path), so a run that resumes the pass links later names to them."""
        rows = [[dev, ino, path] for (dev, ino), path in links.items()]
        atomic_write(self.dir / "links.json", json.dumps({"layer": layer, "links": rows}).encode())

    def load_links(self, layer: int) -> dict[tuple[int, int], str]:
        try:
            raw = json.loads((self.dir / "links.json").read_text())
            if raw["layer"] != layer:
                return {}
            return {(int(d), int(i)): str(p) for d, i, p in raw["links"]}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {}

    def index_path(self, seq: int) -> Path:
        return self.index_dir / f"{seq:012d}"

    def cached_seqs(self) -> list[int]:
        return sorted(int(p.name) for p in self.index_dir.iterdir() if p.name.isdigit())

    def store_index(self, seq: int, plaintext: bytes, cipher_sha256: str = "") -> None:
        """Cache a verified index; ``cipher_sha256`` is the hash of the object on the
        store, so a later check can tell an unchanged object without decrypting it.
        When the index is the one just rendered for a commit, its compact form is
        written too (from the entries in hand, no parsing)."""
        path = self.index_path(seq)
        atomic_write(path, plaintext)
        entries = indexfmt.rendered_entries(plaintext)
        if entries is not None:
            _write_compact(str(path), hashlib.sha256(plaintext).hexdigest(), entries)
        else:
            _compact_path(str(path)).unlink(missing_ok=True)
        sidecar = self.index_dir / f"{seq:012d}.cipher"
        if cipher_sha256:
            atomic_write(sidecar, cipher_sha256.encode())
        else:
            sidecar.unlink(missing_ok=True)

    def cipher_sha(self, seq: int) -> str:
        try:
            return (self.index_dir / f"{seq:012d}.cipher").read_text().strip()
        except FileNotFoundError:
            return ""

    def drop_index(self, seq: int) -> None:
        try:
            self.index_path(seq).unlink()
        except FileNotFoundError:
            pass
        _compact_path(str(self.index_path(seq))).unlink(missing_ok=True)

    def entries(self, seq: int) -> Iterator[Entry]:
        """The entries of cached index ``seq`` (through its compact form when valid);
        ``ValueError`` if the cached text is malformed."""
        with open(self.index_path(seq), "rb") as f:
            data = f.read()
        return cached_entries(str(self.index_path(seq)), data)

    def clean_spool(self) -> None:
        for p in self.spool_dir.iterdir():
            p.unlink(missing_ok=True)


# --- the compact form of cached indexes ----------------------------------------------


def _compact_path(index_path: str) -> Path:
    return Path(index_path + COMPACT_SUFFIX)


def cached_entries(index_path: str, text: bytes) -> Iterator[Entry]:
    """The entries of the cached index whose file ``index_path`` holds ``text``.

    They come from the compact companion file when it was made from exactly this text
    and is intact; otherwise ``text`` is parsed (``ValueError`` if malformed) and, once
    it has been read to its end, a new companion is written (best effort: the local
    state is a cache)."""
    digest = hashlib.sha256(text).hexdigest()
    body = _read_compact(index_path, digest)
    if body is not None:
        return _decode_compact(body)
    return _parse_and_keep(index_path, digest, text)


def _read_compact(index_path: str, text_sha: str) -> memoryview | None:
    """The body of a companion made from text ``text_sha``, if present and intact."""
    try:
        with open(_compact_path(index_path), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head = len(_COMPACT_MAGIC)
    if not raw.startswith(_COMPACT_MAGIC) or raw[head : head + 64] != text_sha.encode():
        return None
    body = memoryview(raw)[head + 130 :]  # no copy
    if raw[head + 64 : head + 130] != b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n":
        return None
    return body


def _decode_compact(body: bytes | memoryview) -> Iterator[Entry]:
    view = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        (size,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        rows = msgpack.unpackb(view[pos : pos + size], use_list=False, raw=False)
        pos += size
        entries = [Entry(*row) for row in rows]
        _check_paths(entries)
        yield from entries


_UNCLEAN: tuple[bytes, ...] = (b"\n/", b"/\n", b"//", b"/./", b"/../", b"\n./", b"\n../")
_UNCLEAN += (b"/.\n", b"/..\n", b"\n..\n", b"\n\n", b"\0")


def _check_paths(entries: list[Entry]) -> None:
    """``check_relpath`` of every path (and hard-link target), as ``parse_entry`` does,
    whatever the companion file says: one scan of them all, path by path only if that
    finds something (a newline in a name looks like a boundary)."""
    framed = b"\n" + b"\n".join([e.path for e in entries]) + b"\n"
    if any(bad in framed for bad in _UNCLEAN):
        for e in entries:
            check_relpath(e.path)
    for e in entries:
        if e.kind == HARDLINK:
            check_relpath(e.target)


def _encode_compact(entries: Iterable[Entry]) -> Iterator[bytes]:
    fields = indexfmt.entry_fields
    rows: list[tuple[object, ...]] = []
    for e in entries:
        rows.append(fields(e))
        if len(rows) == _CHUNK:
            yield _record(rows)
            rows = []
    if rows:
        yield _record(rows)


def _record(rows: list[tuple[object, ...]]) -> bytes:
    chunk: bytes = msgpack.packb(rows, use_bin_type=True)
    return _LEN.pack(len(chunk)) + chunk


def _write_compact(index_path: str, text_sha: str, entries: Iterable[Entry]) -> None:
    """Write the companion of an index file (no fsync: it is checked when read)."""
    _write_body(index_path, text_sha, list(_encode_compact(entries)))


def _write_body(index_path: str, text_sha: str, chunks: list[bytes]) -> None:
    path = _compact_path(index_path)
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    head = _COMPACT_MAGIC + f"{text_sha}\n{digest.hexdigest()}\n".encode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full state folder: the text serves


def _parse_and_keep(index_path: str, text_sha: str, text: bytes) -> Iterator[Entry]:
    _, sep, body = text.partition(b"\n\n")
    if not sep:
        return
    fields = indexfmt.entry_fields
    chunks: list[bytes] = []
    rows: list[tuple[object, ...]] = []
    for line in body.splitlines(keepends=True):
        e = indexfmt.parse_entry(line)
        rows.append(fields(e))
        if len(rows) == _CHUNK:
            chunks.append(_record(rows))
            rows = []
        yield e
    if rows:
        chunks.append(_record(rows))
    _write_body(index_path, text_sha, chunks)
