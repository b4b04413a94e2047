"""A compact on-disk form of entries for the restore plan (``restore.plan``).

The plan is written and read back by the same restore, so it needs no index text (whose
parsing cost a restore of 30k files nearly 4 s): each entry is its fields, in
``Entry``'s order, as one msgpack array (bytes stay bytes, tuples come back as tuples).
Entries read back are the entries written (their paths were checked when the index was
parsed, and the writer checks them again).
"""

from __future__ import annotations

import dataclasses
import operator

import msgpack

from blanket.model import Entry

_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Entry)))
_pack = msgpack.Packer(use_bin_type=True).pack


def dump(e: Entry) -> bytes:
    record: bytes = _pack(_FIELDS(e))
    return record


def load_all(records: bytes) -> list[Entry]:
    """The entries that ``dump`` wrote, one after the other, into ``records``."""
    unpacker = msgpack.Unpacker(raw=False, use_list=False, max_buffer_size=len(records) + 1)
    unpacker.feed(records)
    return [Entry(*fields) for fields in unpacker]
