"""The trees a mount shows, as inodes in a local SQLite file (no FUSE here).

A mount shows several points in time: ``latest/``, ``layers/N/`` (the end of layer N,
what ``restore --at N`` gives) and ``at/TIME/`` (one per commit). Each point's tree is
the replay restore makes (``restore.run``), written once, when the point is first
looked at, into a table of nodes: one row per path with its parent's inode, its name
(bytes), its entry and the commit holding its content. Listing a folder or looking up a
name is then an indexed query, so memory does not grow with the number of files and no
pack is read.

Hard links share the inode of the file they link to (``link``) and raise its link
count; a link whose file is not in the tree is left out, as restore leaves it out. A
path whose parent folder has no entry of its own gets a plain folder, as restore's
``makedirs`` gives it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from blanket import model
from blanket.merge import Located, replay
from blanket.model import Entry
from blanket.repo import Repository
from blanket.restore import spill
from blanket.restore.mesh import mesh_streams

__all__ = ["INO_BASE", "Node", "Point", "Trees", "at_name", "points_of"]

INO_BASE = 1 << 32  # tree inodes are rowids above this; the folders around them below
_BATCH = 5000
_NOT_VERSIONS = (model.PART, model.LOST)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node (
    ino INTEGER PRIMARY KEY,
    point INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    kind TEXT NOT NULL,
    path BLOB NOT NULL,
    entry BLOB NOT NULL,
    origin INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    link INTEGER,
    nlink INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS node_name ON node (parent, name);
CREATE INDEX IF NOT EXISTS node_path ON node (point, path);
"""


@dataclass(frozen=True)
class Point:
    """One point in time a mount shows: its folder (``latest``, ``layers/3``,
    ``at/2026-12-03T17:48:43.123456Z``) and the time it replays as of (None: latest)."""

    id: int
    folder: str
    when: int | None


@dataclass(frozen=True)
class Node:
    """One path of a point's tree: ``ino`` is what ``stat`` shows (a hard link's is its
    file's), ``entry`` its metadata (a hard link's is its file's entry), ``origin`` and
    ``seq`` the commit holding its content."""

    ino: int
    entry: Entry
    origin: int
    seq: int
    nlink: int


def at_name(ns: int) -> str:
    """A commit time as an ``at/`` folder name, in UTC to the microsecond, which
    ``--at`` reads back as a time that includes that commit."""
    stamp = datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def points_of(repos: list[Repository]) -> list[Point]:
    """The points of a (refreshed) mesh: latest, each layer's end, each commit time
    (``restore --at`` of the folder's name gives the same tree)."""
    from blanket.units import parse_at

    ends: dict[int, int] = {}  # layer -> when it was last written (Repository.layer_end)
    for h in repos[0].packs:
        ends[h.layer] = max(ends.get(h.layer, h.created), h.created)
    found = [Point(0, "latest", None)]
    for layer in sorted(ends):
        found.append(Point(len(found), f"layers/{layer}", ends[layer]))
    names = sorted({at_name(h.created) for r in repos for h in r.packs})
    for name in names:
        found.append(Point(len(found), f"at/{name}", parse_at(name)[1]))
    return found


def _dump(e: Entry) -> bytes:
    return spill.dump(e)


def _load(blob: bytes) -> Entry:
    return spill.load_all(blob)[0]


class Trees:
    """The nodes of every point built so far, in SQLite file ``path``; safe to use from
    several threads (one connection, one lock)."""

    def __init__(self, path: str, repos: list[Repository]) -> None:
        self.repos = repos
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self._db.execute(  # a row at INO_BASE: every tree inode (a rowid) lies above it
            "INSERT OR IGNORE INTO node (ino, point, parent, name, kind, path, entry, origin, seq)"
            " VALUES (?, -1, -1, x'', '', x'', x'', 0, 0)",
            (INO_BASE,),
        )
        self._lock = threading.RLock()
        self._roots: dict[int, int] = {}
        self._tops: list[tuple[Located, int | None]] | None = None
        self.lost: dict[int, int] = {}  # point -> versions gc removed that it would show

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- building -------------------------------------------------------------------

    def root(self, point: Point) -> int:
        """The inode of the point's top folder, building its tree first if needed."""
        with self._lock:
            ino = self._roots.get(point.id)
            if ino is None:
                ino = self._build(point, self.replayed(point.when))
                self._roots[point.id] = ino
            return ino

    @property
    def built(self) -> list[int]:
        """The points whose trees are built."""
        with self._lock:
            return list(self._roots)

    def head(self, when: int | None) -> Entry | None:
        """The entry of the source's top folder as of ``when`` (None: latest), as the
        replay gives it, without replaying the tree: the top folder's versions are the
        first entries of the layers and of gc's records, collected once."""
        with self._lock:
            if self._tops is None:
                self._tops = list(self._top_versions())
            tops = self._tops
        streams = [
            [item]
            for item, until in tops
            if until is None or (when is not None and item.entry.since <= when < until)
        ]
        first = next(replay(streams, at=when), None)
        return first.entry if first is not None else None

    def _top_versions(self) -> Iterator[tuple[Located, int | None]]:
        """Every recorded version of the top folder: ``(version, None)`` from a layer,
        ``(version, until)`` kept by a gc record (current from ``since`` to ``until``)."""
        for origin, repo in enumerate(self.repos):
            for stream in repo.layer_streams():
                first = next(iter(stream), None)
                if first is not None and first.entry.path == model.ROOT:
                    yield replace(first, origin=origin), None
            for h in repo.headers:
                if not h.gc_record:
                    continue
                e = next(iter(repo.entries(h.seq)), None)
                if e is not None and e.path == model.ROOT and e.kind not in _NOT_VERSIONS:
                    yield Located(e, h.seq, h.layer, origin), e.until or 1 << 63

    def replayed(self, when: int | None) -> Iterator[Located]:
        """The tree as of ``when`` (None: latest), as restore replays it."""
        return replay(mesh_streams(self.repos, None, set(), when), at=when)

    def _build(self, point: Point, items: Iterable[Located]) -> int:
        db = self._db
        db.execute("BEGIN")
        try:
            root = self._insert_all(point, items)
            self._link(point)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.lost[point.id] = self._count_lost(point)
        return root

    def _insert_all(self, point: Point, items: Iterable[Located]) -> int:
        stack: list[tuple[bytes, int]] = []  # (path + b"/", ino) of the folders around
        rows: list[tuple[object, ...]] = []
        root = self._add(point, 0, Entry(model.DIR, model.ROOT, mode=0o755), 0, 0)
        now = time.time_ns()
        for item in items:
            e = item.entry
            if e.path == model.ROOT:
                self._db.execute(
                    "UPDATE node SET entry = ?, origin = ?, seq = ? WHERE ino = ?",
                    (_dump(e), item.origin, item.seq, root),
                )
                continue
            while stack and not e.path.startswith(stack[-1][0]):
                stack.pop()
            parent = model.parent_of(e.path)
            top = stack[-1][0][:-1] if stack else model.ROOT
            if parent != top:  # no entry for a folder on the way: a plain one
                self._flush(rows)
                for p in _between(top, parent):
                    made = Entry(model.DIR, p, mode=0o755, mtime_ns=now)
                    ino = self._add(point, stack[-1][1] if stack else root, made, 0, 0)
                    stack.append((p + b"/", ino))
            parent_ino = stack[-1][1] if stack else root
            name = e.path.rpartition(b"/")[2]
            if e.kind == model.DIR:
                self._flush(rows)
                ino = self._add(point, parent_ino, e, item.origin, item.seq)
                stack.append((e.path + b"/", ino))
                continue
            rows.append(
                (point.id, parent_ino, name, e.kind, e.path, _dump(e), item.origin, item.seq)
            )
            if len(rows) >= _BATCH:
                self._flush(rows)
        self._flush(rows)
        return root

    def _add(self, point: Point, parent: int, e: Entry, origin: int, seq: int) -> int:
        name = e.path.rpartition(b"/")[2]
        cur = self._db.execute(
            "INSERT INTO node (point, parent, name, kind, path, entry, origin, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (point.id, parent, name, e.kind, e.path, _dump(e), origin, seq),
        )
        return int(cur.lastrowid or 0)

    def _flush(self, rows: list[tuple[object, ...]]) -> None:
        if rows:
            self._db.executemany(
                "INSERT INTO node (point, parent, name, kind, path, entry, origin, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            rows.clear()

    def _link(self, point: Point) -> None:
        """Hard links take their file's inode; link counts; dangling links go."""
        db = self._db
        links = db.execute(
            "SELECT ino, entry FROM node WHERE point = ? AND kind = ?", (point.id, model.HARDLINK)
        ).fetchall()
        for ino, blob in links:
            target = _load(blob).target
            row = db.execute(
                "SELECT ino FROM node WHERE point = ? AND path = ? AND kind = ?",
                (point.id, target, model.FILE),
            ).fetchone()
            if row is None:
                db.execute("DELETE FROM node WHERE ino = ?", (ino,))
            else:
                db.execute("UPDATE node SET link = ? WHERE ino = ?", (row[0], ino))
        db.execute(
            "UPDATE node SET nlink = 1 + (SELECT count(*) FROM node l WHERE l.link = node.ino) "
            "WHERE point = ? AND kind = ? AND ino IN (SELECT link FROM node WHERE point = ?)",
            (point.id, model.FILE, point.id),
        )
        db.execute(
            "UPDATE node SET nlink = 2 + (SELECT count(*) FROM node c "
            "WHERE c.parent = node.ino AND c.kind = ?) WHERE point = ? AND kind = ?",
            (model.DIR, point.id, model.DIR),
        )

    def _count_lost(self, point: Point) -> int:
        if point.when is None:
            return 0
        when = point.when
        return sum(
            1
            for r in self.repos
            for lost in r.lost_versions()
            if lost.since <= when < (lost.until or 1 << 63)
        )

    # --- looking up -----------------------------------------------------------------

    def node(self, ino: int) -> Node | None:
        with self._lock:
            row = self._db.execute(
                "SELECT ino, entry, origin, seq, nlink, link FROM node WHERE ino = ?", (ino,)
            ).fetchone()
        if row is None:
            return None
        if row[5] is not None:  # a hard link: its file, seen through another name
            return self.node(int(row[5]))
        return Node(int(row[0]), _load(row[1]), int(row[2]), int(row[3]), int(row[4]))

    def lookup(self, parent: int, name: bytes) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT ino FROM node WHERE parent = ? AND name = ?", (parent, name)
            ).fetchone()
        return None if row is None else int(row[0])

    def children(
        self, parent: int, after: int = 0, limit: int = 1000
    ) -> list[tuple[bytes, int, int]]:
        """``(name, row, ino)`` of up to ``limit`` entries of a folder whose row comes
        after ``after``, in row order (which is name order: rows are made in clock
        order). A hard link shows its file's inode."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, ino, coalesce(link, ino) FROM node WHERE parent = ? AND ino > ? "
                "ORDER BY ino LIMIT ?",
                (parent, after, limit),
            ).fetchall()
        return [(bytes(n), int(r), int(i)) for n, r, i in rows]


def _between(top: bytes, parent: bytes) -> list[bytes]:
    """The folders from below ``top`` down to ``parent`` (which lies within ``top``)."""
    rel = parent if top == model.ROOT else parent[len(top) + 1 :]
    out, base = [], top
    for part in rel.split(b"/"):
        base = model.join(base, part)
        out.append(base)
    return out
