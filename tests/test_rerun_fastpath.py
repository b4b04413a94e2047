"""The no-change rerun's shortcuts: the stat-only comparison of an unchanged path, the
compact companion of cached indexes, the rendered-once index, cheap start-up."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blanket import indexfmt, model, scan, state
from blanket.changes import Delete, Emit, Keep, Seen, diff
from blanket.commands import COMMANDS, HELPS
from blanket.indexfmt import IndexHeader
from blanket.merge import Located
from blanket.model import Entry
from blanket.walker import WalkItem

SINCE = 1_700_000_000_000_000_000


def item(root: Path, rel: str) -> WalkItem:
    return WalkItem(rel.encode(), os.lstat(root / rel))


def full_entry(root: Path, rel: str) -> Entry:
    e = scan.entry_for(os.fsencode(root), item(root, rel), since=SINCE)
    assert e is not None
    return e


def test_an_unchanged_file_is_its_prior_entry(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    prior = dataclasses.replace(full_entry(tmp_path, "f"), sha256="ab" * 32, since=5)
    root = os.fsencode(tmp_path)
    assert scan.entry_for(root, item(tmp_path, "f"), since=SINCE, prior=prior) is prior
    fresh = scan.entry_for(os.fsencode(tmp_path), item(tmp_path, "f"), since=SINCE)
    assert fresh is not None and fresh.since == SINCE and fresh.sha256 == ""


def test_an_xattr_change_moves_ctime_so_the_hint_is_not_taken(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    prior = full_entry(tmp_path, "f")
    try:
        os.setxattr(f, b"user.k", b"v")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    now = scan.entry_for(os.fsencode(tmp_path), item(tmp_path, "f"), since=SINCE, prior=prior)
    assert now is not prior and now is not None
    assert now.xattrs == ((b"user.k", b"v"),)
    assert now.ctime_ns != prior.ctime_ns or now.xattrs != prior.xattrs


@pytest.mark.parametrize("what", ["other path", "size", "hard link", "symlink"])
def test_the_prior_is_ignored_unless_it_is_the_same_single_version(
    tmp_path: Path, what: str
) -> None:
    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "g").write_bytes(b"data")
    os.symlink("f", tmp_path / "l")
    rel = "l" if what == "symlink" else "f"
    prior = full_entry(tmp_path, rel)
    if what == "other path":
        prior = dataclasses.replace(prior, path=b"g")
    elif what == "size":
        prior = dataclasses.replace(prior, size=99)
    elif what == "hard link":
        os.link(tmp_path / "f", tmp_path / "f2")
        prior = dataclasses.replace(prior, ctime_ns=os.lstat(tmp_path / "f").st_ctime_ns)
    now = scan.entry_for(os.fsencode(tmp_path), item(tmp_path, rel), since=SINCE, prior=prior)
    assert now is not prior and now is not None and now.since == SINCE


def test_the_join_hands_each_path_its_prior_entry(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode())
    root = os.fsencode(tmp_path)
    prior = [Located(full_entry(tmp_path, n), seq=0, layer=1) for n in ("a", "b")]
    walked = [item(tmp_path, n) for n in ("a", "b", "c")]
    given: list[Entry | None] = []
    taken: list[bool] = []

    def describe(w: WalkItem, before: Entry | None) -> Seen:
        given.append(before)
        e = scan.entry_for(root, w, since=SINCE, prior=before)
        taken.append(before is not None and e is before)
        return Seen(w.path, e)

    changes = list(diff(walked, prior, full=False, describe=describe))
    assert [type(c) for c in changes] == [Keep, Keep, Emit]  # c is new
    assert given == [prior[0].entry, prior[1].entry, None] and taken == [True, True, False]
    # a full layer records everything afresh, and an expiring layer's versions are read
    given.clear()
    list(diff(walked, prior, full=True, describe=describe))
    assert given == [None, None, None]
    given.clear()
    emitted = list(diff(walked[:2], prior, full=False, expire_below=2, describe=describe))
    assert given == [None, None]
    assert all(c.entry.since == prior[0].entry.since for c in emitted)  # type: ignore[union-attr]


def test_a_path_that_is_no_longer_backed_up_is_deleted(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    prior = [Located(full_entry(tmp_path, "a"), seq=0, layer=1)]
    changes = list(diff([item(tmp_path, "a")], prior, full=False, describe=lambda w, p: None))
    assert changes == [Delete(b"a")]  # e.g. a file replaced by a socket


def header(n: int) -> IndexHeader:
    return IndexHeader(
        repository="r",
        seq=0,
        layer=0,
        layer_pack=0,
        full=True,
        clock_from=None,
        clock_to=b"z",
        complete=True,
        created=1,
        source_host="h",
        source_path=b"/s",
        entries=n,
        prev_index_sha256="",
    )


def sample() -> list[Entry]:
    return [
        Entry(model.DIR, b".", mode=0o755, since=1),
        Entry(model.FILE, b"a b/\xff\n", size=3, sha256="cd" * 32, user=b"u", since=2),
        Entry(model.SYMLINK, b"l", target=b"../x", xattrs=((b"user.k", b"\x00"),), since=3),
        Entry(model.HARDLINK, b"z", target=b"a b/\xff\n", since=4),
        Entry(model.FILE, b"s", size=10, sparse=((0, 1), (9, 1)), since=5),
    ]


def test_the_compact_companion_gives_the_same_entries(tmp_path: Path) -> None:
    local = state.LocalState("repo", tmp_path)
    entries = sample()
    text = indexfmt.render_index(header(len(entries)), entries)
    local.store_index(0, text)  # the rendered index: its companion comes from the entries
    companion = Path(str(local.index_path(0)) + state.COMPACT_SUFFIX)
    assert companion.exists()
    assert list(local.entries(0)) == entries
    with open(local.index_path(0), "rb") as f:  # the text itself
        assert list(indexfmt.read_entries(f)) == entries
    local.drop_index(0)
    assert not companion.exists()


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other text"])
def test_a_missing_damaged_or_stale_companion_falls_back_to_the_text(
    tmp_path: Path, damage: str
) -> None:
    local = state.LocalState("repo", tmp_path)
    entries = sample()
    text = indexfmt.render_index(header(len(entries)), entries)
    local.store_index(0, text)
    companion = Path(str(local.index_path(0)) + state.COMPACT_SUFFIX)
    if damage == "missing":
        companion.unlink()
    elif damage == "corrupt":
        raw = bytearray(companion.read_bytes())
        raw[-3] ^= 0xFF
        companion.write_bytes(bytes(raw))
    else:  # the text was replaced (e.g. fetched again): the companion no longer matches
        entries = entries[:2]
        state.atomic_write(
            local.index_path(0), indexfmt.render_index(header(len(entries)), entries)
        )
    assert list(local.entries(0)) == entries
    assert list(local.entries(0)) == entries  # from the companion written meanwhile
    assert companion.exists()


def test_a_companion_in_an_older_format_is_rebuilt_never_misread(tmp_path: Path) -> None:
    """A companion written by an earlier blanket (``marshal``, whose format changes
    between Python versions) is not read: the text is parsed and a msgpack one made."""
    import hashlib
    import marshal

    local = state.LocalState("repo", tmp_path)
    entries = sample()
    text = indexfmt.render_index(header(len(entries)), entries)
    local.store_index(0, text)
    companion = Path(str(local.index_path(0)) + state.COMPACT_SUFFIX)
    wrong = [dataclasses.replace(e, size=e.size + 1) for e in entries]  # would be misread
    body = marshal.dumps([indexfmt.entry_fields(e) for e in wrong])
    chunk = state._LEN.pack(len(body)) + body
    old = b"blanket-entries 1\n" + (
        f"{hashlib.sha256(text).hexdigest()}\n{hashlib.sha256(chunk).hexdigest()}\n".encode()
    )
    companion.write_bytes(old + chunk)
    assert list(local.entries(0)) == entries
    assert companion.read_bytes().startswith(b"blanket-entries 2 msgpack\n")
    assert list(local.entries(0)) == entries  # now from the rebuilt companion


def test_the_companion_round_trips_every_field(tmp_path: Path) -> None:
    local = state.LocalState("repo", tmp_path)
    entries = [
        Entry(
            model.FILE,
            b"\xff\xfe name",
            mode=0o4755,
            uid=2**32 - 2,
            mtime_ns=-(10**18),
            ctime_ns=2**62,
            ino=2**64 - 1,
            size=2**40,
            sha256="ab" * 32,
            user=b"\xe9",
            xattrs=((b"user.a", b"\x00\x01"), (b"user.b", b"")),
            sparse=((0, 4096), (2**30, 1)),
            since=1,
        )
    ]
    text = indexfmt.render_index(header(len(entries)), entries)
    local.store_index(0, text)
    (back,) = list(local.entries(0))
    assert back == entries[0]
    assert isinstance(back.xattrs, tuple) and isinstance(back.sparse[0], tuple)


def test_a_forged_companion_cannot_smuggle_an_unsafe_path(tmp_path: Path) -> None:
    local = state.LocalState("repo", tmp_path)
    entries = sample()
    text = indexfmt.render_index(header(len(entries)), entries)
    local.store_index(0, text)
    import hashlib

    bad = [dataclasses.replace(entries[1], path=b"../escape")]
    state._write_compact(str(local.index_path(0)), hashlib.sha256(text).hexdigest(), bad)
    with pytest.raises(ValueError):
        list(local.entries(0))


def test_an_index_rendered_twice_is_rendered_once() -> None:
    entries = sample()
    first = indexfmt.render_index(header(len(entries)), entries, with_data=False)
    second = indexfmt.render_index(header(len(entries)), entries)
    assert first.partition(b"\n\n")[2] == second.partition(b"\n\n")[2]
    assert indexfmt.rendered_entries(second) == entries
    assert indexfmt.rendered_entries(second) is None  # released once used
    changed = [*entries[:-1], dataclasses.replace(entries[-1], size=11)]
    third = indexfmt.render_index(header(len(changed)), changed)
    assert b"size=11" in third and indexfmt.split_index(third)[1][-1].startswith(b"f s ")


def test_entry_keeps_its_dataclass_behaviour() -> None:
    e = Entry("f", b"a", size=3)
    assert e == Entry(kind="f", path=b"a", size=3) and hash(e) == hash(Entry("f", b"a", size=3))
    assert dataclasses.replace(e, size=4).size == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Entry("f")  # type: ignore[call-arg]
    assert Entry(*indexfmt.entry_fields(e)) == e


def test_command_help_texts_match_their_modules() -> None:
    assert list(HELPS) == list(COMMANDS)
    for name, text in HELPS.items():
        assert text == COMMANDS[name].HELP


def test_start_up_imports_only_the_command_it_runs() -> None:
    code = (
        "import sys; from blanket import cli; cli.build_parser('ls'); "
        "print(sorted(m for m in sys.modules if m.startswith(('blanket.commands.', 'rich'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "blanket.commands.ls" in out
    assert "blanket.commands.backup" not in out and "'rich" not in out
