"""The index text format: escaping and entry lines round-trip any bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blanket import indexfmt, model
from blanket.indexfmt import IndexHeader
from blanket.model import Entry

names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
paths = st.lists(names, min_size=1, max_size=4).map(b"/".join)


@given(st.binary(max_size=64))
def test_escape_round_trips_any_bytes(raw: bytes) -> None:
    text = indexfmt.escape(raw)
    assert all(0x21 <= ord(c) <= 0x7E for c in text)
    assert not set(text) & {" ", "=", ",", "\n"}
    assert indexfmt.unescape(text) == raw


@pytest.mark.parametrize("bad", ["a b", "a\\x4", "a\\xZZ", "a\\n", "é", "a=b"])
def test_unescape_refuses_what_escape_never_writes(bad: str) -> None:
    with pytest.raises(ValueError):
        indexfmt.unescape(bad)


@given(
    path=paths,
    kind=st.sampled_from([k for k in model.KINDS]),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 2**50),
    mtime=st.integers(0, 2**62),
    target=st.binary(max_size=20),
    xattrs=st.lists(
        st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=8)), max_size=3
    ),
    user=st.binary(max_size=8),
)
def test_entry_line_round_trips(
    path: bytes,
    kind: str,
    mode: int,
    size: int,
    mtime: int,
    target: bytes,
    xattrs: list[tuple[bytes, bytes]],
    user: bytes,
) -> None:
    if kind == model.DELETED:
        e = Entry(kind, path, since=mtime)
    elif kind == model.LOST:
        e = Entry(kind, path, since=mtime, until=mtime + 5)
    else:
        e = Entry(
            kind,
            path,
            mode=mode,
            uid=7,
            gid=8,
            user=user,
            group=b"g",
            mtime_ns=mtime,
            ctime_ns=mtime + 1,
            ino=99,
            size=size if kind in (model.FILE, model.HARDLINK) else 0,
            sha256="ab" * 32 if kind == model.FILE else "",
            # a symlink's target is any bytes; a hard link's is a path inside the tree
            target={model.SYMLINK: target, model.HARDLINK: path}.get(kind, b""),
            rdev_major=3 if kind in (model.CHARDEV, model.BLOCKDEV) else 0,
            rdev_minor=4 if kind in (model.CHARDEV, model.BLOCKDEV) else 0,
            xattrs=tuple(xattrs),
            sparse=((0, 5), (100, 0)) if kind == model.FILE else (),
            since=mtime + 2,
        )
    line = indexfmt.render_entry(e)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert indexfmt.parse_entry(line) == e


@pytest.mark.parametrize(
    "line",
    [
        b"f ../etc/passwd since=1\n",
        b"f /etc/passwd since=1\n",
        b"f a//b since=1\n",
        b"q a since=1\n",
        b"f a\n",  # no since
        b"f a size=1 size=2 since=1\n",
    ],
)
def test_parse_entry_refuses_unsafe_or_malformed_lines(line: bytes) -> None:
    with pytest.raises(ValueError):
        indexfmt.parse_entry(line)


def _header(**kw: object) -> IndexHeader:
    base = dict(
        repository="r" * 32,
        seq=3,
        layer=1,
        layer_pack=0,
        full=False,
        clock_from=b"a b/\xff",
        clock_to=b"z",
        complete=True,
        created=123,
        source_host="laptop",
        source_path=b"/home/j o",
        entries=1,
        prev_index_sha256="cd" * 32,
        data_key="data/000000000003-0123456789abcdef",
        data_size=42,
        data_sha256="ef" * 32,
    )
    base.update(kw)
    return IndexHeader(**base)  # type: ignore[arg-type]


def test_whole_index_round_trips_and_counts_entries() -> None:
    h = _header()
    e = Entry(model.DELETED, b"gone", since=5)
    data = indexfmt.render_index(h, [e])
    header, lines = indexfmt.split_index(data)
    assert header == h
    assert [indexfmt.parse_entry(x) for x in lines] == [e]
    with pytest.raises(ValueError, match="entries"):
        indexfmt.split_index(indexfmt.render_index(_header(entries=2), [e]))


def test_index_inside_a_pack_has_no_data_fields() -> None:
    data = indexfmt.render_index(_header(clock_from=None, entries=0), [], with_data=False)
    assert b"data-key" not in data
    header, _ = indexfmt.split_index(data)
    assert header.clock_from is None and header.data_key == ""
