"""What a pass records: the pure comparison of the walk with the prior state."""

from __future__ import annotations

from blanket import model
from blanket.changes import Delete, Emit, Keep, Seen, diff
from blanket.merge import Located
from blanket.model import Entry


def f(path: str, mtime: int = 1) -> Entry:
    return Entry(model.FILE, path.encode(), size=1, mtime_ns=mtime)


def dr(path: str) -> Entry:
    return Entry(model.DIR, path.encode())


def run(
    current: list[Seen], prior: list[Entry], full: bool = False, expire_below: int = 0
) -> list[tuple[str, str]]:
    out = []
    located = [Located(e, seq=i, layer=int(e.path == b"old")) for i, e in enumerate(prior)]
    for c in diff(current, located, full=full, expire_below=expire_below):
        if isinstance(c, Emit):
            out.append(("emit", c.entry.path.decode()))
        elif isinstance(c, Delete):
            out.append(("delete", c.path.decode()))
        elif isinstance(c, Keep):
            out.append(("keep", c.path.decode()))
    return out


def seen(*entries: Entry) -> list[Seen]:
    return [Seen(e.path, e) for e in entries]


def test_unchanged_changed_new_and_deleted() -> None:
    prior = [dr("."), f("a"), f("b"), f("c")]
    current = seen(dr("."), f("a"), f("b", mtime=2), f("bb"))
    assert run(current, prior) == [
        ("keep", "."),
        ("keep", "a"),
        ("emit", "b"),
        ("emit", "bb"),
        ("delete", "c"),
    ]


def test_a_vanished_directory_gets_one_marker() -> None:
    prior = [dr("."), dr("d"), f("d/x"), dr("d/e"), f("d/e/y"), f("z")]
    assert run(seen(dr("."), f("z")), prior) == [("keep", "."), ("delete", "d"), ("keep", "z")]


def test_full_layers_emit_everything() -> None:
    prior = [dr("."), f("a")]
    assert run(seen(dr("."), f("a")), prior, full=True) == [("emit", "."), ("emit", "a")]


def test_below_an_unlistable_directory_nothing_is_deleted() -> None:
    prior = [dr("."), dr("d"), f("d/x"), f("z")]
    current = [Seen(b".", dr(".")), Seen(b"d", dr("d"), opaque=True), Seen(b"z", f("z"))]
    assert ("delete", "d/x") not in run(current, prior)


def test_an_unreadable_path_keeps_its_prior_version() -> None:
    prior = [dr("."), f("a")]
    current = [Seen(b".", dr(".")), Seen(b"a", None, opaque=True)]
    assert run(current, prior) == [("keep", "."), ("keep", "a")]


def test_type_change_is_a_change() -> None:
    prior = [dr("."), f("a")]
    assert run(seen(dr("."), dr("a")), prior) == [("keep", "."), ("emit", "a")]


def test_unchanged_paths_living_in_an_expiring_layer_are_emitted_again() -> None:
    prior = [dr("."), f("a"), f("old")]  # "old" lives in layer 1, the rest in layer 0
    current = seen(dr("."), f("a"), f("old"))
    assert run(current, prior, expire_below=1) == [
        ("emit", "."),
        ("emit", "a"),
        ("keep", "old"),
    ]
