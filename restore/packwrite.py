"""Write the files of one pack from its verified plaintext: the work a restore worker
process does (restore.workers), and the record of how it went that the restore judges.

Nothing here judges, counts or reports to the user: each file's outcome (an error, the
writer's warnings) goes to a ``report`` callable, and an unreadable pack raises.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from blanket.errors import IntegrityError
from blanket.members import member_name
from blanket.model import Entry
from blanket.packread import members
from blanket.pgpstream import Readable, remove
from blanket.restore.writer import ContentMismatch, NotPermitted, SafeWriter, UnsafePath

__all__ = [
    "PER_FILE",
    "UNREADABLE",
    "PackKey",
    "PackOutcome",
    "by_member",
    "put_file",
    "write_members",
]

PER_FILE = (UnsafePath, ContentMismatch, NotPermitted)  # trouble with one file only
UNREADABLE = (IntegrityError, tarfile.TarError, zstandard.ZstdError, EOFError)  # a bad pack
SMALL = 1 << 20  # members up to this size are read whole
PackKey = tuple[int, int]  # (origin, seq)
# a file a worker wrote: (path, size, error, warnings); whole entries cost far more to pickle
Outcome = tuple[bytes, int, Exception | None, list[str]]
Report = Callable[[PackKey, Entry, Exception | None, list[str]], None]
Content = bytes | Iterator[bytes]


def write_members(
    zst: Readable,
    where: PackKey,
    pending: dict[bytes, list[Entry]],
    put: Callable[[PackKey, Entry, Content], None],
) -> None:
    """Write the files ``pending`` names (by member) from the plaintext ``zst``,
    then remove it; what it lacks stays in ``pending``. Raises what makes the pack
    unreadable."""
    try:
        for m in members(zst):
            if m.name not in pending:
                continue
            small = m.content(SMALL)
            for e in pending.pop(m.name):
                put(where, e, small if small is not None else m.chunks())
    finally:
        remove(zst)


def put_file(
    writer: SafeWriter, report: Report, where: PackKey, e: Entry, content: Content
) -> None:
    """Write one file here and now, and report how it went (the restore judges it in
    ``_Restore.file_done``)."""
    try:
        writer.write_file(e, (content,) if isinstance(content, bytes) else content)
        error: Exception | None = None
    except (*UNREADABLE, *PER_FILE, OSError) as exc:
        error = exc
    try:
        report(where, e, error, writer.warnings[:])
    finally:
        writer.warnings.clear()


def by_member(entries: Iterable[Entry]) -> dict[bytes, list[Entry]]:
    """Files by the pack member holding their content: matched by name, as a pack's
    members need not be in clock order (parts), and a file whose entry names another
    ``target`` borrows that member's content."""
    pending: dict[bytes, list[Entry]] = {}
    for e in entries:
        pending.setdefault(os.fsencode(member_name(e.target or e.path)), []).append(e)
    return pending


@dataclass
class PackOutcome:
    """What a worker did with one pack (``_Restore.write_pack``), for the restore to judge
    (``_Restore.pack_written``)."""

    where: PackKey
    unchanged: int  # files found in place already
    files: list[Outcome] = field(default_factory=list)
    left: list[Entry] = field(default_factory=list)  # not in the plaintext read
    partial: bool = False  # only some frames read, or decrypted without gpg: gpg reads the rest
    unreadable: str | None = None  # why the rest of the pack could not be read

    def report(
        self, where: PackKey, e: Entry, error: Exception | None, warnings: list[str]
    ) -> None:
        self.files.append((e.path, e.size, error, warnings))
