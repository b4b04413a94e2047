"""A compact on-disk form of entries for the restore plan's spill files.

The plan is written and read back by the same process, so it needs no index text (whose
parsing cost a restore of 30k files nearly 4 s): each entry is its fields as a tuple in
``marshal`` form, after a 4-byte length. Entries read back are the entries written (their
paths were checked when the index was parsed, and the writer checks them again).
"""

from __future__ import annotations

import dataclasses
import marshal
import operator
from collections.abc import Iterator
from typing import IO

from blanket.model import Entry

_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Entry)))
_READ = 1 << 20


def dump(e: Entry) -> bytes:
    record = marshal.dumps(_FIELDS(e))
    return len(record).to_bytes(4, "little") + record


def load_all(f: IO[bytes]) -> Iterator[Entry]:
    """The entries of a spill file, in the order they were written."""
    rest = b""
    while block := f.read(_READ):
        data = rest + block if rest else block
        pos, end = 0, len(data)
        while pos + 4 <= end:
            size = int.from_bytes(data[pos : pos + 4], "little")
            if pos + 4 + size > end:
                break
            yield Entry(*marshal.loads(data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        rest = data[pos:]
    if rest:
        raise ValueError("a restore plan file ends in the middle of an entry")
