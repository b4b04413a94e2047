"""The content of a split file, streamed from its parts across consecutive packs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

from blanket.errors import IntegrityError
from blanket.members import part_member_name
from blanket.model import Entry
from blanket.packread import members
from blanket.pgpstream import Readable, remove
from blanket.repo import Repository

__all__ = ["SplitContent"]


class SplitContent:
    """The content of a split file, streamed from its parts across consecutive packs."""

    def __init__(
        self, repo: Repository, parts: list[tuple[int, Entry]], take: Callable[[int], Readable]
    ) -> None:
        self.repo, self.parts, self.take = repo, parts, take
        self.packs_read = 0

    def chunks(self) -> Iterator[bytes]:
        for seq, group in itertools.groupby(self.parts, key=lambda sp: sp[0]):
            wanted = {_part_name(p): p for _, p in group}
            header = self.repo.by_seq[seq]
            zst = self.take(seq)
            self.packs_read += 1
            try:
                for m in members(zst):
                    if wanted.pop(m.name, None) is not None:
                        yield from m.chunks()
            finally:
                remove(zst)
            if wanted:
                raise IntegrityError(f"{header.data_key} lacks a part it lists")


def _part_name(p: Entry) -> bytes:
    return os.fsencode(part_member_name(p.path, p.offset))
