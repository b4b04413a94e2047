"""Decide what a restore writes (pure): which replayed entries, from which packs, in
which order.

``select`` narrows the replayed tree to the requested subtrees plus their ancestors;
``Plan`` sorts the chosen entries by what must happen to them: directories first (so
content has somewhere to go), file content grouped by the pack that holds it (each pack
is read once, front to back), then links and special files, then directory metadata,
deepest first.

The plan lives in one SQLite file in a work directory (``restore.spill`` form for each
entry), so neither its memory nor its open files grow with the number of files or packs:
a restore of 100,000 packs holds one database open, not one file per pack. Entries keep
the order they were added in (the clock order) within each group. A worker process
forked from the planning one opens its own connection (SQLite connections must not
cross a fork).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from blanket import model
from blanket.merge import Located
from blanket.model import Entry
from blanket.restore import spill

# The plan's groups of entries, in the ``grp`` column.
DIRS, CONTENT, SPLIT, LINKS, _OLD_LINKS = 0, 1, 2, 3, 4
_NAMES = {"dirs": DIRS, "links": LINKS}
_BATCH = 2048  # entries planned between two writes to the database
_ROWS = 64  # rows (chunks of entries) read back at a time
_SCHEMA = "CREATE TABLE plan (grp INTEGER, origin INTEGER, seq INTEGER, entry BLOB)"
_INDEX = "CREATE INDEX plan_where ON plan (grp, origin, seq)"


def select(tree: Iterable[Located], tops: list[bytes]) -> Iterator[Located]:
    """Entries of ``tree`` that lie within one of ``tops`` or are an ancestor of one."""
    if not tops or model.ROOT in tops:
        yield from tree
        return
    ancestors = set()
    for top in tops:
        p = top
        while p != model.ROOT:
            p = model.parent_of(p)
            ancestors.add(p)
    for item in tree:
        path = item.entry.path
        if path in ancestors or any(model.is_within(path, t) for t in tops):
            yield item


class Plan:
    """The restore plan, kept in ``workdir/plan.db``."""

    def __init__(self, workdir: str) -> None:
        self.dir = Path(workdir)
        self.path = self.dir / "plan.db"
        self.packs: dict[tuple[int, int], int] = {}  # (origin, seq) -> files needed from it
        self.split: set[tuple[int, int]] = set()  # (origin, seq) holding split files' entries
        self.found: set[bytes] = set()
        self.entries = 0
        self.bytes = 0
        self._pending: dict[tuple[int, int, int], list[bytes]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inherited: sqlite3.Connection | None = None
        self._conn = self._connect()
        self._conn.execute(_SCHEMA)
        self._indexed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # a work file, rebuilt by running the restore again: no journal, no fsync
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-8192")  # at most 8 MiB of pages in memory
        conn.execute("PRAGMA temp_store=FILE")
        return conn

    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # a forked worker: a connection of its own; the
            self._inherited = self._conn  # parent's is kept (never used, never closed)
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._conn = self._connect()
        return self._conn

    def _flush(self) -> None:
        """Write what was planned since the last flush: one row per group and pack,
        holding its entries in order (a chunk)."""
        if self._pending:
            rows = [(*where, b"".join(chunk)) for where, chunk in self._pending.items()]
            with self._lock:
                db = self._db()
                db.execute("BEGIN")
                db.executemany("INSERT INTO plan VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            self._pending.clear()
            self._count = 0

    def _write(self, grp: int, e: Entry, origin: int = 0, seq: int = 0) -> None:
        where = (grp, origin, seq)
        chunk = self._pending.get(where)
        if chunk is None:
            chunk = self._pending[where] = []
        chunk.append(spill.dump(e))
        self._count += 1
        if self._count >= _BATCH:
            self._flush()

    def add(self, item: Located, tops: list[bytes]) -> None:
        e = item.entry
        self.entries += 1
        for top in tops:
            if e.path == top:
                self.found.add(top)
        where = (item.origin, item.seq)
        if e.kind == model.DIR:
            self._write(DIRS, e)
        elif e.kind == model.FILE and e.parts:
            self._write(SPLIT, e, *where)
            self.split.add(where)
            self.bytes += e.size
        elif e.kind == model.FILE:
            self._write(CONTENT, e, *where)
            self.packs[where] = self.packs.get(where, 0) + 1
            self.bytes += e.size
        else:
            self._write(LINKS, e)

    def rewrite_links(
        self, rewrite: Callable[[Iterator[Entry]], Iterable[Located]], tops: list[bytes]
    ) -> None:
        """Plan what ``rewrite`` makes of the links and special files planned so far
        (given to it in order, read from disk as it goes) instead of them."""
        self._flush()
        with self._lock:
            self._db().execute("UPDATE plan SET grp = ? WHERE grp = ?", (_OLD_LINKS, LINKS))
        for item in rewrite(self._group(_OLD_LINKS)):
            self.add(item, tops)
        self._flush()
        with self._lock:
            self._db().execute("DELETE FROM plan WHERE grp = ?", (_OLD_LINKS,))

    def close(self) -> None:
        """Finish planning: everything written, the lookup index made."""
        self._flush()
        if not self._indexed:
            with self._lock:
                self._db().execute(_INDEX)
            self._indexed = True

    def _select(self, sql: str, args: tuple[int, ...], reverse: bool = False) -> Iterator[Entry]:
        """The entries of a query's chunks, ``_ROWS`` chunks at a time (no cursor is held
        open between reads, so the plan may change while a caller iterates)."""
        self._flush()
        last, op = (1 << 62, "<") if reverse else (-1, ">")
        while True:
            with self._lock:
                rows = self._db().execute(sql.format(op=op), (*args, last, _ROWS)).fetchall()
            for _, blob in rows:
                entries = spill.load_all(blob)
                yield from reversed(entries) if reverse else entries
            if len(rows) < _ROWS:
                return
            last = rows[-1][0]

    def _group(self, grp: int, *, reverse: bool = False) -> Iterator[Entry]:
        order = "DESC" if reverse else "ASC"
        sql = (
            "SELECT rowid, entry FROM plan WHERE grp = ? AND rowid {op} ? "
            f"ORDER BY rowid {order} LIMIT ?"
        )
        return self._select(sql, (grp,), reverse)

    def _at(self, grp: int, origin: int, seq: int) -> Iterator[Entry]:
        sql = (
            "SELECT rowid, entry FROM plan WHERE grp = ? AND origin = ? AND seq = ? "
            "AND rowid {op} ? ORDER BY rowid LIMIT ?"
        )
        return self._select(sql, (grp, origin, seq))

    def read(self, name: str) -> Iterator[Entry]:
        """The planned ``"dirs"`` or ``"links"`` (links and special files), in order."""
        return self._group(_NAMES[name])

    def pack_entries(self, origin: int, seq: int) -> Iterator[Entry]:
        return self._at(CONTENT, origin, seq)

    def split_entries(self, origin: int, seq: int) -> Iterator[Entry]:
        return self._at(SPLIT, origin, seq)

    def content(self) -> Iterator[Entry]:
        """Every file whose content the plan restores (whole or split)."""
        yield from self._group(CONTENT)
        yield from self._group(SPLIT)

    def dirs_deepest_first(self) -> Iterator[Entry]:
        """Directory entries in reverse clock order, for applying their metadata last."""
        return self._group(DIRS, reverse=True)

    def dispose(self) -> None:
        """Close the database (the work directory removes the file)."""
        with self._lock:
            self._conn.close()


def missing_tops(plan: Plan, tops: list[bytes]) -> list[bytes]:
    return [t for t in tops if t != model.ROOT and t not in plan.found]


def show(path: bytes) -> str:
    return os.fsdecode(path)
