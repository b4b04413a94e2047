"""Decide what a restore writes (pure): which replayed entries, from which packs, in
which order.

``select`` narrows the replayed tree to the requested subtrees plus their ancestors;
``Plan`` sorts the chosen entries by what must happen to them: directories first (so
content has somewhere to go), file content grouped by the pack that holds it (each pack
is read once, front to back), then links and special files, then directory metadata,
deepest first. The plan spills to files in a work directory, so its memory does not grow
with the number of files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from blanket import model
from blanket.merge import Located
from blanket.model import Entry
from blanket.restore import spill


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
    """The restore plan, written to ``workdir`` in ``spill`` form."""

    def __init__(self, workdir: str) -> None:
        self.dir = Path(workdir)
        self._files: dict[str, IO[bytes]] = {}
        self.packs: dict[tuple[int, int], int] = {}  # (origin, seq) -> files needed from it
        self.split: set[tuple[int, int]] = set()  # (origin, seq) holding split files' entries
        self.found: set[bytes] = set()
        self.entries = 0
        self.bytes = 0

    def _out(self, name: str) -> IO[bytes]:
        f = self._files.get(name)
        if f is None:
            f = open(self.dir / name, "ab")  # noqa: SIM115 - closed in close()
            self._files[name] = f
        return f

    def _write(self, name: str, e: Entry) -> None:
        self._out(name).write(spill.dump(e))

    def add(self, item: Located, tops: list[bytes]) -> None:
        e = item.entry
        self.entries += 1
        for top in tops:
            if e.path == top:
                self.found.add(top)
        if e.kind == model.DIR:
            self._write("dirs", e)
        elif e.kind == model.FILE and e.parts:
            self._write(f"split-{item.origin}-{item.seq:012d}", e)
            self.split.add((item.origin, item.seq))
            self.bytes += e.size
        elif e.kind == model.FILE:
            self._write(f"pack-{item.origin}-{item.seq:012d}", e)
            where = (item.origin, item.seq)
            self.packs[where] = self.packs.get(where, 0) + 1
            self.bytes += e.size
        else:
            self._write("links", e)

    def rewrite(self, name: str, entries: list[Entry]) -> None:
        """Replace one of the plan's files with ``entries``."""
        f = self._files.pop(name, None)
        if f is not None:
            f.close()
        (self.dir / name).unlink(missing_ok=True)
        for e in entries:
            self._write(name, e)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def read(self, name: str) -> Iterator[Entry]:
        if name in self._files:
            self._files[name].flush()
        path = self.dir / name
        if not path.exists():
            return
        with open(path, "rb") as f:
            yield from spill.load_all(f)

    def pack_entries(self, origin: int, seq: int) -> Iterator[Entry]:
        return self.read(f"pack-{origin}-{seq:012d}")

    def split_entries(self, origin: int, seq: int) -> Iterator[Entry]:
        return self.read(f"split-{origin}-{seq:012d}")

    def dirs_deepest_first(self) -> list[Entry]:
        """Directory entries in reverse clock order, for applying their metadata last."""
        return list(reversed(list(self.read("dirs"))))


def missing_tops(plan: Plan, tops: list[bytes]) -> list[bytes]:
    return [t for t in tops if t != model.ROOT and t not in plan.found]


def show(path: bytes) -> str:
    return os.fsdecode(path)
