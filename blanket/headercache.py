"""The parsed headers of the locally cached indexes, so that checking the chain does not
read and hash every index again in every command.

Without it, every command of a repository of 10,000 commits read and hashed all of their
cached plaintexts (hundreds of MB for millions of entries) just to learn each header and
the hash the next index chains to. This file keeps, per commit, the header and the
SHA-256 of the plaintext, with the size, mtime and inode of the cached file it was read
from: an entry counts only while the file is unchanged; anything else is read again.
Like the rest of the local state it is a cache of what was verified when it came from
the store: losing or damaging it costs time, never correctness.

Format: msgpack (stable across Python versions), a map ``{"version": 1, "fields":
[IndexHeader's field names], "rows": {seq: [size, mtime_ns, ino, sha256, [header
fields]]}}``; a file of another version or with other fields is ignored and rewritten.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import msgpack

from blanket.indexfmt import Frame, IndexHeader

VERSION = 1
_FIELDS = [f.name for f in dataclasses.fields(IndexHeader)]


def _encode(h: IndexHeader) -> list[Any]:
    row = [getattr(h, name) for name in _FIELDS]
    row[_FIELDS.index("frames")] = [[f.first, f.size, f.sha256] for f in h.frames]
    row[_FIELDS.index("removed")] = [list(r) for r in h.removed]
    return row


def _decode(row: list[Any]) -> IndexHeader:
    values = dict(zip(_FIELDS, row, strict=True))
    values["frames"] = tuple(Frame(*f) for f in values["frames"])
    values["removed"] = tuple((int(a), int(b)) for a, b in values["removed"])
    return IndexHeader(**values)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class HeaderCache:
    """Headers and plaintext hashes of cached index files, valid while each file is
    unchanged (size, mtime, inode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[int, list[Any]] = {}
        self._changed = False
        try:
            raw = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            if raw.get("version") == VERSION and raw.get("fields") == _FIELDS:
                self._rows = {int(k): v for k, v in raw["rows"].items()}
        except (OSError, ValueError, TypeError, AttributeError, msgpack.UnpackException):
            self._rows = {}

    def get(self, seq: int, st: os.stat_result) -> tuple[IndexHeader, str] | None:
        """The header and plaintext SHA-256 of commit ``seq``'s cached file, if it is
        unchanged since they were recorded."""
        row = self._rows.get(seq)
        if row is None or tuple(row[:3]) != _stamp(st):
            return None
        try:
            return _decode(row[4]), str(row[3])
        except (TypeError, ValueError):
            return None

    def put(self, seq: int, st: os.stat_result, header: IndexHeader, sha256: str) -> None:
        self._rows[seq] = [*_stamp(st), sha256, _encode(header)]
        self._changed = True

    def keep_only(self, seqs: set[int]) -> None:
        """Forget commits no longer cached."""
        gone = [s for s in self._rows if s not in seqs]
        for s in gone:
            del self._rows[s]
        self._changed = self._changed or bool(gone)

    def save(self) -> None:
        """Write the cache if it changed (best effort: a read-only or full state folder
        only costs the next command time)."""
        if not self._changed:
            return
        data = msgpack.packb(
            {"version": VERSION, "fields": _FIELDS, "rows": self._rows}, use_bin_type=True
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
        self._changed = False
